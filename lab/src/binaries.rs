//! The binaries the lab puts into L1: static builds of subzero and
//! lab-peer, and host binaries with the libraries `ldd` lists: QEMU (for the
//! microvm benchmarks), curl (for the API scenario), perf (for the hardware
//! exit reasons scenario and the boot benchmark) and the peer Firecracker
//! (for the API and boot benchmarks).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{elf, failed, log, scripts, Config, LabError};

/// Builds the static subzero (or takes `SUBZERO_LAB_BIN`).
pub fn subzero_binary(cfg: &Config) -> Result<PathBuf, LabError> {
    if let Some(bin) = &cfg.subzero_bin {
        log(&format!("using SUBZERO_LAB_BIN={}", bin.display()));
        return Ok(bin.clone());
    }
    static_binary(cfg, "subzero", "subzero", &[])
}

/// Builds the static `lab-peer` helper (this crate's binary) for L1 and L2,
/// stripped: it is in every L2 initramfs, and 7 MiB of static glibc and
/// line tables shrink to about 1.4 MiB.
pub fn lab_peer_binary(cfg: &Config) -> Result<PathBuf, LabError> {
    let strip = [
        "--config",
        "profile.release.debug=false",
        "--config",
        "profile.release.strip=true",
    ];
    static_binary(cfg, "subzero-lab", "lab-peer", &strip)
}

/// Builds `bin` of `package` statically linked (glibc, `+crt-static`), so
/// it runs in L1 and L2 without libraries, in `<workspace>/target/lab`.
fn static_binary(
    cfg: &Config,
    package: &str,
    bin: &str,
    more: &[&str],
) -> Result<PathBuf, LabError> {
    let target_dir = cfg.workspace.join("target/lab");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut args = vec![
        "build",
        "--release",
        "-p",
        package,
        "--bin",
        bin,
        "--target",
        "x86_64-unknown-linux-gnu",
    ];
    args.extend_from_slice(more);
    log(&format!(
        "building static {bin}: RUSTFLAGS=\"-C target-feature=+crt-static\" CARGO_TARGET_DIR={} cargo {}",
        target_dir.display(),
        args.join(" ")
    ));
    let t = Instant::now();
    let out = Command::new(&cargo)
        .args(args)
        .current_dir(&cfg.workspace)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("CARGO_TARGET_DIR", &target_dir)
        .output()
        .map_err(|e| failed(format!("running {cargo:?}: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(failed(format!(
            "building the static {bin} failed ({}):\n{}",
            out.status,
            tail.join("\n")
        )));
    }
    log(&format!("built {bin} in {:.1}s", t.elapsed().as_secs_f64()));
    Ok(target_dir
        .join("x86_64-unknown-linux-gnu/release")
        .join(bin))
}

pub(crate) fn read_static(path: &Path) -> Result<Vec<u8>, LabError> {
    let bytes = fs::read(path).map_err(|e| failed(format!("reading {}: {e}", path.display())))?;
    match elf::is_static(&bytes) {
        Ok(true) => {}
        Ok(false) => log(&format!(
            "warning: {} is dynamically linked and will not run in L1",
            path.display()
        )),
        Err(e) => log(&format!("warning: {}: {e}", path.display())),
    }
    Ok(bytes)
}

/// A dynamically linked host binary for L1: the binary itself at
/// `l1_path` and every library `ldd` lists (the dynamic loader included),
/// stored as regular files at the same paths. `missing` makes the error
/// when `ldd` cannot run.
fn with_libraries(
    host_path: &Path,
    l1_path: &str,
    missing: &dyn Fn(&str) -> LabError,
) -> Result<Vec<(String, Vec<u8>, u32)>, LabError> {
    let out = Command::new("ldd")
        .arg(host_path)
        .output()
        .map_err(|e| missing(&format!("ldd ({e})")))?;
    if !out.status.success() {
        return Err(failed(format!(
            "ldd {}: {}",
            host_path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let libs = parse_ldd(&String::from_utf8_lossy(&out.stdout));
    let read = |p: &Path| fs::read(p).map_err(|e| failed(format!("{}: {e}", p.display())));
    let mut files = vec![(l1_path.to_string(), read(host_path)?, 0o755)];
    for lib in libs {
        let bytes = read(Path::new(&lib))?;
        files.push((lib, bytes, 0o755));
    }
    Ok(files)
}

fn log_size(what: &str, files: &[(String, Vec<u8>, u32)]) {
    let total: usize = files.iter().map(|f| f.1.len()).sum();
    log(&format!(
        "{what} for L1: {} files, {:.1} MiB",
        files.len(),
        total as f64 / (1 << 20) as f64
    ));
}

/// The host's QEMU for the virtio and boot benchmarks in L1: the binary and its
/// libraries ([`with_libraries`]), the microvm SeaBIOS and QEMU's
/// `linuxboot_dma.bin`.
pub(crate) fn qemu_files() -> Result<Vec<(String, Vec<u8>, u32)>, LabError> {
    let missing =
        |what: &str| LabError::Unavailable(format!("{what} for virtio-bench or boot-bench"));
    if !Path::new(scripts::L1_QEMU).is_file() {
        return Err(missing(
            "/usr/bin/qemu-system-x86_64 (apt-get install qemu-system-x86)",
        ));
    }
    if !Path::new(scripts::L1_MICROVM_BIOS).is_file() {
        return Err(missing(
            "/usr/share/seabios/bios-microvm.bin (apt-get install seabios)",
        ));
    }
    let mut files = with_libraries(Path::new(scripts::L1_QEMU), scripts::L1_QEMU, &missing)?;
    // SeaBIOS, and the option ROM QEMU loads for -kernel (from its data
    // directory, package qemu-system-data).
    for f in [
        scripts::L1_MICROVM_BIOS,
        "/usr/share/qemu/linuxboot_dma.bin",
    ] {
        let bytes = fs::read(f).map_err(|e| failed(format!("{f}: {e}")))?;
        files.push((f.to_string(), bytes, 0o644));
    }
    log_size("QEMU", &files);
    Ok(files)
}

/// The host's curl and its libraries, for the API scenario's requests.
pub(crate) fn curl_files() -> Result<Vec<(String, Vec<u8>, u32)>, LabError> {
    let missing = |what: &str| LabError::Unavailable(format!("{what} for the api scenario"));
    if !Path::new(scripts::L1_CURL).is_file() {
        return Err(missing("/usr/bin/curl (apt-get install curl)"));
    }
    let files = with_libraries(Path::new(scripts::L1_CURL), scripts::L1_CURL, &missing)?;
    log_size("curl", &files);
    Ok(files)
}

/// Debian's perf (package `linux-perf`) and its libraries, for the
/// `hw-exits` scenario's `perf kvm stat`. Nothing when the host has no
/// perf: the scenario's driver then finds no [`scripts::L1_PERF`] in L1 and
/// reports why, and its test skips (or fails under CI).
pub(crate) fn perf_files() -> Result<Vec<(String, Vec<u8>, u32)>, LabError> {
    if !Path::new(scripts::L1_PERF).is_file() {
        log(&format!(
            "no {} on the host (apt-get install linux-perf): the hw-exits scenario will report \
             perf as unavailable",
            scripts::L1_PERF
        ));
        return Ok(Vec::new());
    }
    let missing = |what: &str| LabError::Unavailable(format!("{what} for the hw-exits scenario"));
    let files = with_libraries(Path::new(scripts::L1_PERF), scripts::L1_PERF, &missing)?;
    log_size("perf", &files);
    Ok(files)
}

/// The host's e2fsck and its libraries, for the soak's image checks.
pub(crate) fn e2fsck_files() -> Result<Vec<(String, Vec<u8>, u32)>, LabError> {
    let missing = |what: &str| LabError::Unavailable(format!("{what} for the soak scenario"));
    let host = ["/usr/sbin/e2fsck", "/sbin/e2fsck"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .ok_or_else(|| missing("e2fsck (apt-get install e2fsprogs)"))?;
    let files = with_libraries(Path::new(host), "/sbin/e2fsck", &missing)?;
    log_size("e2fsck", &files);
    Ok(files)
}

/// The peer Firecracker (a dynamically linked binary, see
/// `shared/peers/README.md`) and its libraries, at [`scripts::L1_FIRECRACKER`];
/// nothing when `peer` is `None` (the benchmarks then leave it out).
pub(crate) fn firecracker_files(
    peer: Option<&Path>,
) -> Result<Vec<(String, Vec<u8>, u32)>, LabError> {
    let Some(path) = peer else {
        log("no peer Firecracker (SUBZERO_LAB_FIRECRACKER or ../shared/peers/firecracker): the benchmarks (api-bench, boot-bench) leave it out");
        return Ok(Vec::new());
    };
    let missing = |what: &str| LabError::Unavailable(format!("{what} for the peer Firecracker"));
    let files = with_libraries(path, scripts::L1_FIRECRACKER, &missing)?;
    log_size(&format!("Firecracker ({})", path.display()), &files);
    Ok(files)
}

/// The absolute library paths in `ldd` output: `libz.so.1 => /lib/.../libz.so.1 (0x...)`
/// and the loader's `/lib64/ld-linux-x86-64.so.2 (0x...)`.
pub fn parse_ldd(text: &str) -> Vec<String> {
    let mut v = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        let path = match l.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => l.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            if !v.iter().any(|x| x == p) {
                v.push(p.to_string());
            }
        }
    }
    v
}
