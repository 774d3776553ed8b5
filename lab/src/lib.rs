//! The lab: boots real Linux under Subzero inside a nested-SVM QEMU VM.
//!
//! The host's /dev/kvm cannot boot Linux (see
//! `shared/notes/kvm-on-these-machines.md`), but QEMU's TCG emulates AMD SVM
//! with nested paging. So the lab boots an "L1" Linux VM under
//! `qemu-system-x86_64 -accel tcg -cpu EPYC`, loads `kvm_amd` there, and runs
//! a static `subzero` inside L1, which boots the same unmodified Debian
//! kernel as "L2" once per [`scripts::Scenario`]. Everything comes from
//! Debian packages; L1's console is read live and timestamped on the host.
//!
//! Scenarios (see [`scripts::SCENARIOS`]): `boot` (bzImage, `uname -r`),
//! `smp` (4 vCPUs), `memory` (512 MiB), `panic` (sysrq-c; subzero must fail
//! with a reason), `stdin` (a token fed through subzero's stdin is echoed
//! back), `vmlinux-pvh` and `vmlinux-64` (the ELF vmlinux extracted from the
//! bzImage with `lz4`, booted with its PVH note and with that note hidden),
//! `stats`, `live`, `hw-exits`, the virtio devices, and Firecracker's API
//! with a snapshot and restore:
//! - `hw-exits`: the `boot` guest under `perf kvm stat record` (Debian's
//!   perf, copied into L1 with its libraries) around `subzero run --stats
//!   --stats-format json`; perf's report and subzero's `hardware` exit
//!   reasons ([`perf`]) must agree within 2% for every reason with at least
//!   100 exits. Then the same guest three times with `--stats` and three times with
//!   `--stats --no-trace`, taking turns, and the time to the guest's init
//!   marker of each, printed, never asserted. See [`hw_scripts`].
//! - `block`: an ext4 `--disk` holding a known file; the guest prints its
//!   sha256 and writes another file, which L1 reads back from the image
//!   (loop mount) after subzero exits. Run with `--stats`: the virtio table
//!   must show ioeventfd kicks and no MMIO-exit kicks.
//! - `block-ro`: `readonly=on`; writes through the file system and to the
//!   raw device fail, and the image's sha256 in L1 does not change.
//! - `block-rate`: the same image read-only with `bw=4M`; the guest reads
//!   all 16 MiB of `/dev/vda` with `dd iflag=direct`, and the rate must be
//!   at most 4 MiB/s (+25%) after the bucket's first 4 MiB.
//! - `rootfs`: `root=/dev/vda`. virtio_blk is a module in the Debian kernel,
//!   so a small initramfs ([`scripts::rootfs_initrd_init`]) loads it, mounts
//!   `root=` and `switch_root`s to the disk's `/sbin/init`.
//! - `net`: a persistent TAP in L1 (busybox `tunctl`, 169.254.0.1/16; the
//!   guest is .2). The guest pings L1, downloads 16 MiB from it and sends
//!   them back; both ends print sha256s. L1 itself has `-nic none`.
//! - `vsock`: 1 MiB each way between L1 (through subzero's Unix socket and
//!   `CONNECT 5000`) and a guest listener, then from the guest to an L1
//!   listener on `<uds>_5001`.
//! - `rng`: `--rng`; `rng_current` is virtio_rng and 4 KiB of `/dev/hwrng`
//!   take (nearly) all 256 byte values.
//! - `api`: Firecracker's API, driven with the host's `curl
//!   --unix-socket` (copied into L1 with its libraries) by an L1 script
//!   ([`api_scripts`]). `subzero --api-sock /tmp/api.sock --id lab` runs in
//!   the background, its console going to a file; the guest is configured
//!   and booted entirely through the API (boot source, machine config, a
//!   drive with an ext4 image, a network interface on the TAP, vsock,
//!   InstanceStart). The guest writes a file to the disk and syncs, prints
//!   its boot_id, starts a vsock and a TCP listener and prints
//!   `@@L2 COUNT n boot_id=...` every 0.2 s. L1 then pauses the VM
//!   (`PATCH /vm`), snapshots it (`PUT /snapshot/create`), kills subzero
//!   with SIGKILL, and loads the snapshot into a new `subzero --api-sock`
//!   (`PUT /snapshot/load`, `resume_vm`). The restored guest must keep its
//!   boot_id and go on counting from where it stopped; L1 reaches it over a
//!   new vsock connection (`CONNECT 5000`) and over TCP on the TAP; the
//!   guest then re-reads its file from the disk, L1 checks the image once
//!   the guest has powered off. Each VMM's console is printed after it
//!   ends, between `@@L1 CONSOLE api <n>` markers ([`api_facts`]).
//!
//! - `jail`: `subzero jail --uid 1000 --gid 1000 --chroot-base /srv/jail
//!   -- run ... --disk ...`, chrooted into a tmpfs (L1's initramfs root
//!   refuses `pivot_root`); while the guest holds, L1 reads the jailed
//!   VMM's `/proc/PID` (ids, capabilities, NoNewPrivs, namespaces, mounts,
//!   cgroup, limits, root). See [`jail_scripts`].
//! - `soak` (opt-in): N VMs with every device back to back, then one VM
//!   driven hard while L1 samples its fds and RSS; e2fsck and sha256 check
//!   the image. See [`jail_scripts`].
//!
//! Payloads are generated, not shipped: `lab-peer gen SEED BYTES` in L1 and
//! L2, and [`payload`] on the host for the expected sha256 ([`scripts::BLOBS`]).
//!
//! Opt-in (only run when named in `SUBZERO_LAB_SCENARIOS`): `bench`
//! (`subzero bench exits`); `virtio-bench`, which boots the same guest (2
//! vCPUs, 256 MiB) with the same disk image, TAP and L1-side TCP peers
//! under subzero with `--disk ...,engine=sync`, subzero with `engine=uring`,
//! the peer Firecracker (when the host has it) and QEMU's microvm in one
//! L1: a warm-up boot of each, then 3 rounds in rotating order, each boot
//! running sequential 1 MiB reads and writes, random 4 KiB reads and
//! writes at queue depth 1 and 16, and TCP both ways; the test prints each
//! row's median per VMM, subzero's ratios to Firecracker and QEMU and the
//! median of those ratios, never asserted (see [`vbench_scripts`] and
//! [`vbench_facts`]); and `api-bench`, which prints (never
//! asserts) the time from a VMM's start to an API socket that answers
//! `GET /`, the snapshot create time and the two files' sizes, and the
//! restore latency (the `PUT /snapshot/load` request with `resume_vm`) and
//! the time to the guest's first console output after it, for 128 and
//! 512 MiB guests, timed in L1 by `lab-peer vmm` and `lab-peer http`. When
//! the host has the peer Firecracker (see `SUBZERO_LAB_FIRECRACKER`) it is
//! copied into L1 with its libraries and measured the same way in the same
//! run, the two VMMs taking turns; figures are medians of 3 to 5.
//!
//! `boot-bench` (opt-in) boots the same guest (the bzImage, the L2
//! initramfs, 3 vCPUs, 384 MiB, `console=ttyS0 quiet panic=-1 reboot=k`)
//! under subzero, subzero `--no-host-decompress`, the peer Firecracker
//! (`--no-api --config-file`, when the host has it) and QEMU's microvm (with
//! an i8042 for the guest's `reboot=k` reset) in one L1: a warm-up boot of
//! each, then 3 rounds in rotating order. For each
//! boot it prints the time from the VMM's start to the guest's init marker
//! (host clock), the guest's `/proc/uptime` at init and the difference
//! (before the kernel), and the VMM's Rss outside guest RAM (from
//! `/proc/<pid>/smaps` while the guest holds at init); then the medians and
//! each VMM's ratio to Firecracker and to QEMU. After the rounds, one boot
//! each of subzero and Firecracker with `initcall_debug printk.time=1`
//! (the 15 longest initcalls and the dmesg times of the early milestones,
//! side by side) and one each under `perf kvm stat record` (exits by
//! reason, side by side). Numbers only; the test asserts only that every
//! VMM booted at least once (a subzero that rejects `--no-host-decompress`
//! may fail that variant). See [`boot_scripts`] and [`boot_facts`].
//!
//! Host tools: `qemu-system-x86_64`, `/bin/busybox` (static), `gzip`,
//! `apt-get`/`apt-cache`/`dpkg-deb` (until the kernel is cached), `lz4` (for
//! the vmlinux scenarios), `mkfs.ext4` (e2fsprogs, for `block`, `block-ro`
//! and `rootfs`), cargo to build the static subzero and `lab-peer`, and for
//! `virtio-bench` and `boot-bench` also `ldd` and SeaBIOS's `bios-microvm.bin`; `curl` and
//! `ldd` for `api`; `e2fsck` and `ldd` for `soak`; `/usr/bin/perf`
//! (Debian's `linux-perf`) and `ldd` for `hw-exits` (without perf that
//! scenario's test skips, or fails under `CI=true`).
//!
//! Environment knobs:
//! - `SUBZERO_LAB_CACHE`: download/unpack cache (default `<workspace>/.lab-cache`).
//! - `SUBZERO_LAB_BIN`: use this static subzero instead of building one.
//! - `SUBZERO_LAB_SCENARIOS`: comma-separated scenarios to run (default:
//!   every scenario except the opt-in `bench`, `virtio-bench`,
//!   `api-bench`, `boot-bench` and `soak`: see [`scripts::SCENARIOS`]).
//! - `SUBZERO_LAB_FIRECRACKER`: the peer Firecracker binary for `api-bench`,
//!   `boot-bench` and `virtio-bench` (default `<workspace>/../shared/peers/firecracker` when it exists; it
//!   goes into L1's initramfs only, never into the repository).
//! - `SUBZERO_LAB_SCENARIO_TIMEOUT`: seconds per scenario inside L1 (default
//!   60; a scenario that needs more, such as `api`, has its own minimum).
//! - `SUBZERO_LAB_TIMEOUT`: overall seconds before QEMU is killed.
//! - `SUBZERO_LAB_ACCEL`: QEMU `-accel` value (default `tcg`).
//! - `SUBZERO_LAB_SMP`: L1 vCPUs (default 1). With 2 (and `tcg,thread=multi`)
//!   the whole L1 froze, its kernel silent, in about a third of full lab runs,
//!   at random points; with 1 it has not (several full runs, and 6 back-to-back
//!   benchmarks in one L1). The 4-vCPU L2 scenario runs fine on one L1 CPU.
//! - `SUBZERO_LAB_KERNEL_PKG`: kernel package (default `linux-image-cloud-amd64`,
//!   resolved to the versioned package it depends on).
//! - `SUBZERO_LAB_SOAK_VMS`, `SUBZERO_LAB_SOAK_SECS`, `SUBZERO_LAB_SOAK_SAMPLE`:
//!   the soak's back-to-back VMs (default 50), the driven VM's seconds (180;
//!   past about 20 minutes raise `SUBZERO_LAB_SCENARIO_TIMEOUT` too) and
//!   the seconds between fd/RSS samples (5).
//! - `SUBZERO_LAB_VBENCH_DISK`: extra `--disk` keys for `virtio-bench`'s
//!   subzero boots (e.g. `queues=1`).
//! - `SUBZERO_LAB_VBENCH_ROUNDS`: `virtio-bench`'s timed rounds (default 3;
//!   fewer for a quicker run while working on the lab).
//! - `SUBZERO_LAB_VERBOSE=1`: echo every L1 console line live.
//! - `CI=true`: missing prerequisites fail instead of skipping.

pub mod api_facts;
pub mod api_scripts;
pub mod binaries;
pub mod boot_facts;
pub mod boot_scripts;
pub mod cpio;
pub mod elf;
pub mod hw_scripts;
pub mod images;
pub mod jail_scripts;
pub mod kernel;
pub mod l2_scripts;
pub mod parse;
pub mod payload;
pub mod perf;
pub mod pt_scripts;
pub mod qemu;
pub mod scripts;
pub mod vbench_facts;
pub mod vbench_scripts;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use binaries::{curl_files, firecracker_files, perf_files, qemu_files, read_static};
pub use binaries::{lab_peer_binary, parse_ldd, subzero_binary};

pub use parse::{Line, ScenarioRun};
pub use scripts::{Scenario, SCENARIOS};

/// Why the lab did not produce a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabError {
    /// A prerequisite (qemu, busybox, apt-get, network) is missing: skip, or
    /// fail under CI.
    Unavailable(String),
    /// Something that should work did not.
    Failed(String),
}

impl std::fmt::Display for LabError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LabError::Unavailable(s) => write!(f, "lab prerequisites unavailable: {s}"),
            LabError::Failed(s) => write!(f, "lab failed: {s}"),
        }
    }
}

/// The lab's settings, normally from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// The cargo workspace root.
    pub workspace: PathBuf,
    /// Download/unpack cache.
    pub cache: PathBuf,
    /// Where logs and initramfs images go (`<workspace>/target/lab/run`).
    pub out_dir: PathBuf,
    /// A prebuilt static subzero to use instead of building one.
    pub subzero_bin: Option<PathBuf>,
    /// The peer Firecracker binary for the API benchmark, if there is one.
    pub firecracker: Option<PathBuf>,
    /// Scenarios to run, in order.
    pub scenarios: Vec<Scenario>,
    /// Per-scenario timeout inside L1.
    pub scenario_timeout: Duration,
    /// Overall timeout for the L1 QEMU process.
    pub timeout: Duration,
    /// QEMU `-accel` argument.
    pub accel: String,
    /// L1 vCPUs.
    pub smp: u32,
    /// Kernel (meta) package.
    pub kernel_package: String,
    /// Echo every console line live.
    pub verbose: bool,
    /// Running under CI (missing prerequisites are failures).
    pub ci: bool,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// True when `CI` is set to something other than `false`/`0`.
pub fn is_ci() -> bool {
    env("CI").is_some_and(|v| v != "false" && v != "0")
}

impl Config {
    /// Reads the `SUBZERO_LAB_*` variables (see the crate docs).
    pub fn from_env() -> Result<Config, LabError> {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("lab/ has a parent")
            .to_path_buf();
        let scenarios = match env("SUBZERO_LAB_SCENARIOS") {
            None => SCENARIOS.iter().filter(|s| !s.opt_in).copied().collect(),
            Some(list) => {
                let mut v: Vec<Scenario> = Vec::new();
                for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let picked: Vec<&Scenario> =
                        SCENARIOS.iter().filter(|s| s.name == name).collect();
                    if picked.is_empty() {
                        return Err(LabError::Failed(format!(
                            "SUBZERO_LAB_SCENARIOS: unknown scenario {name:?}"
                        )));
                    }
                    for sc in picked {
                        if !v.contains(sc) {
                            v.push(*sc);
                        }
                    }
                }
                v
            }
        };
        let secs = |name: &str, default: u64| -> Result<Duration, LabError> {
            match env(name) {
                None => Ok(Duration::from_secs(default)),
                Some(v) => v.parse().map(Duration::from_secs).map_err(|_| {
                    LabError::Failed(format!("{name}={v:?} is not a number of seconds"))
                }),
            }
        };
        let scenario_timeout = secs("SUBZERO_LAB_SCENARIO_TIMEOUT", 60)?;
        let default_total = 180
            + scenarios
                .iter()
                .map(|s| s.min_timeout.max(scenario_timeout.as_secs()) + 30)
                .sum::<u64>();
        Ok(Config {
            cache: env("SUBZERO_LAB_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace.join(".lab-cache")),
            out_dir: workspace.join("target/lab/run"),
            subzero_bin: env("SUBZERO_LAB_BIN").map(PathBuf::from),
            firecracker: env("SUBZERO_LAB_FIRECRACKER")
                .map(PathBuf::from)
                .or_else(|| {
                    let peer = workspace.join("../shared/peers/firecracker");
                    peer.is_file().then_some(peer)
                }),
            scenarios,
            scenario_timeout,
            timeout: secs("SUBZERO_LAB_TIMEOUT", default_total)?,
            accel: env("SUBZERO_LAB_ACCEL").unwrap_or_else(|| "tcg".into()),
            smp: env("SUBZERO_LAB_SMP")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
            kernel_package: env("SUBZERO_LAB_KERNEL_PKG")
                .unwrap_or_else(|| "linux-image-cloud-amd64".into()),
            verbose: env("SUBZERO_LAB_VERBOSE").is_some_and(|v| v != "0"),
            ci: is_ci(),
            workspace,
        })
    }
}

/// Whether `tool` is an executable on `PATH` (or an existing path).
pub fn have_tool(tool: &str) -> bool {
    find_tool(tool).is_some()
}

/// The path of `tool` on `PATH`.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exe = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if tool.contains('/') {
        return is_exe(Path::new(tool)).then(|| PathBuf::from(tool));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| is_exe(p))
}

/// A finished lab run: one L1 boot with every scenario.
#[derive(Debug)]
pub struct LabRun {
    /// The kernel used for both L1 and L2.
    pub kernel: kernel::Kernel,
    /// `subzero --version` on the host build (first line), if it ran.
    pub subzero_bin: PathBuf,
    /// The token the stdin scenario sends.
    pub token: String,
    /// Full L1 console log.
    pub log_path: PathBuf,
    /// Console lines.
    pub lines: Vec<Line>,
    /// Parsed facts about L1.
    pub l1: parse::L1Facts,
    /// Parsed scenarios.
    pub scenarios: BTreeMap<String, ScenarioRun>,
    /// Scenarios that were requested.
    pub requested: Vec<Scenario>,
    /// Time spent before QEMU started (kernel fetch, subzero build, initramfs).
    pub prep: Duration,
    /// QEMU spawn to exit.
    pub qemu_wall: Duration,
    /// Whole lab wall time.
    pub total: Duration,
    /// QEMU's exit status, as text.
    pub qemu_status: String,
    /// Whether QEMU was killed at the overall timeout.
    pub timed_out: bool,
    /// L1 boots whose console fell silent and were replaced, described.
    pub stalls: Vec<String>,
    /// QEMU's stderr.
    pub qemu_stderr: String,
}

impl LabRun {
    /// The scenario's run, or a failure message if it was not requested
    /// (returns `None`: the caller should skip) or never started.
    pub fn scenario(&self, name: &str) -> Option<&ScenarioRun> {
        if !self.requested.iter().any(|s| s.name == name) {
            eprintln!("lab: scenario `{name}` not selected by SUBZERO_LAB_SCENARIOS; skipping");
            return None;
        }
        match self.scenarios.get(name) {
            Some(s) => Some(s),
            None => panic!(
                "scenario `{name}` never started in L1.\n{}\nfull L1 console log: {}",
                self.l1_summary(),
                self.log_path.display()
            ),
        }
    }

    /// Assertion context: the scenario's output and where the full log is.
    pub fn context(&self, sc: &ScenarioRun) -> String {
        format!(
            "{}\nfull L1 console log: {}",
            sc.describe(),
            self.log_path.display()
        )
    }

    /// A short description of L1's state, for failure messages.
    pub fn l1_summary(&self) -> String {
        let l1 = &self.l1;
        let mut s = String::new();
        let _ = write!(
            s,
            "L1: init {}, svm={:?} npt={:?}, insmod {:?}, /dev/kvm {:?}, `subzero --version` {:?}, all done: {}; \
             qemu {} after {:.1}s{}",
            match l1.init_at {
                Some(t) => format!("reached at {:.1}s", t.as_secs_f64()),
                None => "NOT reached".into(),
            },
            l1.svm,
            l1.npt,
            l1.insmods,
            l1.kvm_present,
            l1.version,
            l1.all_done_at.is_some(),
            self.qemu_status,
            self.qemu_wall.as_secs_f64(),
            if self.timed_out { " (killed at the overall timeout)" } else { "" },
        );
        if !self.qemu_stderr.trim().is_empty() {
            let _ = write!(s, "\nqemu stderr: {}", self.qemu_stderr.trim());
        }
        s
    }

    /// Timing summary (printed once per run).
    pub fn timings(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "lab timings (host side):");
        for note in &self.stalls {
            let _ = writeln!(s, "  WARNING: {note}");
        }
        let _ = writeln!(
            s,
            "  preparation (kernel, subzero build, initramfs): {:.1}s",
            self.prep.as_secs_f64()
        );
        if let Some(t) = self.l1.init_at {
            let _ = writeln!(
                s,
                "  L1 boot (qemu spawn -> L1 /init): {:.2}s",
                t.as_secs_f64()
            );
        }
        for sc in &self.requested {
            if let Some(r) = self.scenarios.get(sc.name) {
                let wall = r.wall_time().map(|w| format!("{:.2}s", w.as_secs_f64()));
                // A driver prints its VMMs' consoles only after they end.
                let boot = if sc.driver.is_empty() {
                    r.boot_time().map(|w| format!("{:.2}s", w.as_secs_f64()))
                } else {
                    Some("- (a driver: see its STEP lines)".into())
                };
                let _ = writeln!(
                    s,
                    "  scenario {:<12} exit {:<5} wall {:<9} subzero start -> L2 init marker {}",
                    sc.name,
                    r.exit_code
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into()),
                    wall.unwrap_or_else(|| "-".into()),
                    boot.unwrap_or_else(|| "-".into()),
                );
            }
        }
        let _ = writeln!(
            s,
            "  L1 qemu wall time: {:.1}s",
            self.qemu_wall.as_secs_f64()
        );
        let _ = write!(s, "  whole lab wall time: {:.1}s", self.total.as_secs_f64());
        s
    }
}

pub(crate) fn log(msg: &str) {
    eprintln!("lab: {msg}");
}

pub(crate) fn failed(what: impl std::fmt::Display) -> LabError {
    LabError::Failed(what.to_string())
}

/// Checks that QEMU, a static busybox and gzip exist.
pub fn check_prerequisites() -> Result<(), LabError> {
    let mut missing = Vec::new();
    if !have_tool("qemu-system-x86_64") {
        missing.push("qemu-system-x86_64 (apt-get install qemu-system-x86)".to_string());
    }
    match fs::read("/bin/busybox") {
        Err(_) => missing.push("/bin/busybox (apt-get install busybox-static)".into()),
        Ok(b) => {
            if elf::is_static(&b) != Ok(true) {
                missing.push("a static /bin/busybox (apt-get install busybox-static)".into());
            }
        }
    }
    if !have_tool("gzip") {
        missing.push("gzip".into());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LabError::Unavailable(format!(
            "missing {}",
            missing.join(", ")
        )))
    }
}

/// `virtio_blk.ko` -> `virtio_blk`.
fn module_stem(file_name: &str) -> String {
    file_name.trim_end_matches(".ko").to_string()
}

fn gzip_to(data: &[u8], path: &Path) -> Result<(), LabError> {
    let raw = path.with_extension("");
    fs::write(&raw, data).map_err(|e| failed(format!("{}: {e}", raw.display())))?;
    let out = Command::new("gzip")
        .args(["-n", "-f", "-1"])
        .arg(&raw)
        .output()
        .map_err(|e| failed(format!("running gzip: {e}")))?;
    if !out.status.success() {
        return Err(failed(format!(
            "gzip {}: {}",
            raw.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

fn busybox_base(busybox: &[u8], init: &str) -> cpio::Cpio {
    let mut c = cpio::Cpio::new();
    for d in ["dev", "proc", "sys", "tmp", "sbin", "usr/bin", "usr/sbin"] {
        c.dir(d);
    }
    c.char_dev("dev/console", 0o600, 5, 1)
        .char_dev("dev/null", 0o666, 1, 3)
        .file("bin/busybox", 0o755, busybox)
        .symlink("bin/sh", "busybox")
        .file("init", 0o755, init.as_bytes());
    c
}

/// `l1-console-<unix time>.log` in `dir`; older logs beyond the newest ten
/// are removed.
fn new_log_path(dir: &Path) -> PathBuf {
    let mut old: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.file_name().unwrap_or_default().to_string_lossy();
                    n.starts_with("l1-console-") && n.ends_with(".log")
                })
                .collect()
        })
        .unwrap_or_default();
    old.sort();
    let keep = 9;
    if old.len() > keep {
        for p in &old[..old.len() - keep] {
            let _ = fs::remove_file(p);
        }
    }
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    dir.join(format!("l1-console-{secs}.log"))
}

/// A token for the stdin scenario, different on every run.
pub fn make_token() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut x = (nanos as u64) ^ ((std::process::id() as u64) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    // xorshift to spread the bits.
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    format!("sz-{x:016x}")
}

/// How long L1's console may stay silent before the lab treats L1 as frozen.
pub const STALL: Duration = Duration::from_secs(150);

/// What every L1 boot carries.
struct L1Parts<'a> {
    busybox: &'a [u8],
    modules: &'a [kernel::Module],
    names: &'a [String],
    token: &'a str,
    vmlinux: Option<&'a (Vec<u8>, usize)>,
    subzero: &'a [u8],
    lab_peer: &'a [u8],
    vmlinuz: &'a [u8],
    l2_initrd: &'a [u8],
    kernel_path: &'a Path,
    /// Scenario-specific files: (path in L1, bytes, mode).
    assets: &'a [(String, Vec<u8>, u32)],
}

/// Builds an L1 initramfs that runs `scenarios` and boots it: the plain L1,
/// or with `nvme` (an image path) the q35 L1 with an IOMMU and an NVMe
/// controller on that image ([`pt_scripts`]).
fn boot_l1(
    cfg: &Config,
    parts: &L1Parts,
    scenarios: &[Scenario],
    prep: Duration,
    nvme: Option<&Path>,
) -> Result<(qemu::QemuRun, PathBuf), LabError> {
    let init = scripts::l1_init(
        scenarios,
        parts.names,
        parts.token,
        cfg.scenario_timeout.as_secs(),
        parts.vmlinux.map(|v| v.1),
    );
    let mut c = busybox_base(parts.busybox, &init);
    if let Some((bytes, _)) = parts.vmlinux {
        c.file(scripts::L1_VMLINUX, 0o644, bytes);
    }
    for m in parts.modules {
        c.file(&format!("lib/modules/{}", m.file_name), 0o644, &m.data);
    }
    c.file(scripts::L1_SUBZERO, 0o755, parts.subzero)
        .file(scripts::LAB_PEER, 0o755, parts.lab_peer)
        .file(scripts::L1_L2_KERNEL, 0o644, parts.vmlinuz)
        .file(scripts::L1_L2_INITRD, 0o644, parts.l2_initrd);
    for (path, bytes, mode) in parts.assets {
        c.file(path, *mode, bytes);
    }
    let l1_path = cfg.out_dir.join(if nvme.is_some() {
        "l1-iommu-initrd.cpio.gz"
    } else {
        "l1-initrd.cpio.gz"
    });
    gzip_to(&c.finish(), &l1_path)?;

    let log_path = new_log_path(&cfg.out_dir);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", &cfg.accel, "-cpu", "EPYC", "-m", "4096"])
        .args(["-smp", &cfg.smp.to_string()])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(parts.kernel_path)
        .arg("-initrd")
        .arg(&l1_path);
    match nvme {
        Some(image) => {
            cmd.args(pt_scripts::qemu_args(image)).args([
                "-append",
                &format!(
                    "console=ttyS0 panic=-1 quiet {}",
                    pt_scripts::L1_CMDLINE_EXTRA
                ),
            ]);
        }
        None => {
            cmd.args(["-append", "console=ttyS0 panic=-1 quiet"]);
        }
    }
    log(&format!(
        "booting L1 (prep took {:.1}s; timeout {}s; console log {})",
        prep.as_secs_f64(),
        cfg.timeout.as_secs(),
        log_path.display()
    ));
    let verbose = cfg.verbose;
    let mut on_line = |l: &Line| {
        if verbose || l.text.contains("@@L1 ") {
            eprintln!("lab: [{:8.3}] {}", l.at.as_secs_f64(), l.text);
        }
    };
    let q = qemu::run(
        cmd,
        cfg.timeout,
        STALL,
        &log_path,
        "@@L1 ALL_DONE",
        Duration::from_secs(30),
        &mut on_line,
    )
    .map_err(|e| failed(format!("running qemu-system-x86_64: {e}")))?;
    Ok((q, log_path))
}

/// Boots an L1 for `set` and parses it. An L1 whose console falls silent
/// for [`STALL`] is frozen as a whole (its own per-scenario timeout and
/// watchdog print long before that): one fresh L1 then runs the scenarios
/// that did not finish, the stalled one included, so that a real subzero
/// hang hangs again and fails its test. Notes each stall in `stalls`.
fn boot_with_retry(
    cfg: &Config,
    parts: &L1Parts,
    set: &[Scenario],
    prep: Duration,
    nvme: Option<&Path>,
    stalls: &mut Vec<String>,
) -> Result<(qemu::QemuRun, PathBuf, parse::Parsed), LabError> {
    let (q, log_path) = boot_l1(cfg, parts, set, prep, nvme)?;
    let parsed = parse::parse(&q.lines);
    if !q.stalled || parsed.l1.all_done_at.is_some() {
        return Ok((q, log_path, parsed));
    }
    let remaining: Vec<Scenario> = set
        .iter()
        .filter(|s| {
            parsed
                .scenarios
                .get(s.name)
                .is_none_or(|r| r.end_at.is_none())
        })
        .copied()
        .collect();
    let names: Vec<&str> = remaining.iter().map(|s| s.name).collect();
    let note = format!(
        "L1 fell silent for {}s (console log {}); booted a new L1 for: {}",
        STALL.as_secs(),
        log_path.display(),
        names.join(", ")
    );
    log(&format!("WARNING: {note}"));
    stalls.push(note);
    let (q2, log2) = boot_l1(cfg, parts, &remaining, prep, nvme)?;
    let mut second = parse::parse(&q2.lines);
    for (name, sc) in parsed.scenarios {
        if sc.end_at.is_some() {
            second.scenarios.entry(name).or_insert(sc);
        }
    }
    Ok((q2, log2, second))
}

/// Runs the whole lab once: kernel, subzero, initramfs images, one L1 boot
/// (and one more for the unfinished scenarios if the first L1 froze).
pub fn run_lab(cfg: &Config) -> Result<LabRun, LabError> {
    let t0 = Instant::now();
    check_prerequisites()?;
    fs::create_dir_all(&cfg.out_dir)
        .map_err(|e| failed(format!("{}: {e}", cfg.out_dir.display())))?;

    let kernel = kernel::fetch(&cfg.cache, &cfg.kernel_package, &log)?;
    log(&format!(
        "kernel {} ({}; .deb {:.1} MiB, {})",
        kernel.version,
        kernel.package,
        kernel.deb_size as f64 / (1 << 20) as f64,
        if kernel.downloaded {
            "downloaded"
        } else {
            "cached"
        }
    ));
    let modules = kernel::modules(&kernel, kernel::L1_MODULES)?;

    let subzero = subzero_binary(cfg)?;
    let subzero_bytes = read_static(&subzero)?;
    let lab_peer = read_static(&lab_peer_binary(cfg)?)?;

    let busybox = fs::read("/bin/busybox").map_err(|e| failed(format!("/bin/busybox: {e}")))?;
    let vmlinuz = fs::read(&kernel.vmlinuz)
        .map_err(|e| failed(format!("{}: {e}", kernel.vmlinuz.display())))?;
    let token = make_token();

    // L2 initramfs: busybox, lab-peer, the virtio driver modules and the
    // scenario /init.
    let virtio = kernel::modules(&kernel, kernel::VIRTIO_MODULES)?;
    let mut closures = Vec::new();
    for top in kernel::VIRTIO_MODULES {
        let deps = kernel::modules(&kernel, &[top])?;
        let names = deps.iter().map(|m| module_stem(&m.file_name)).collect();
        closures.push((top.to_string(), names));
    }
    let mut l2 = busybox_base(&busybox, &scripts::l2_init(&closures));
    l2.file(scripts::LAB_PEER, 0o755, &lab_peer);
    for m in &virtio {
        l2.file(&format!("lib/modules/{}", m.file_name), 0o644, &m.data);
    }
    let l2_path = cfg.out_dir.join("l2-initrd.cpio.gz");
    gzip_to(&l2.finish(), &l2_path)?;
    let l2_initrd =
        fs::read(&l2_path).map_err(|e| failed(format!("{}: {e}", l2_path.display())))?;

    // Disk images and the rootfs scenario's initramfs, when selected.
    let needs = |a: scripts::Asset| cfg.scenarios.iter().any(|s| s.assets.contains(&a));
    let mut assets: Vec<(String, Vec<u8>, u32)> = Vec::new();
    if needs(scripts::Asset::BlockImage) {
        let image = images::block_image(&cfg.out_dir)?;
        assets.push((scripts::L1_BLOCK_IMAGE.into(), image, 0o644));
    }
    if needs(scripts::Asset::Rootfs) {
        let marker = format!("disk-{token}");
        let image = images::rootfs_image(&cfg.out_dir, &busybox, &marker)?;
        assets.push((scripts::L1_ROOTFS_IMAGE.into(), image, 0o644));
        let blk = kernel::modules(&kernel, &["virtio_mmio", "virtio_blk"])?;
        let names: Vec<String> = blk.iter().map(|m| module_stem(&m.file_name)).collect();
        let mut c = busybox_base(&busybox, &scripts::rootfs_initrd_init(&names));
        for m in &blk {
            c.file(&format!("lib/modules/{}", m.file_name), 0o644, &m.data);
        }
        let path = cfg.out_dir.join("rootfs-initrd.cpio.gz");
        gzip_to(&c.finish(), &path)?;
        let bytes = fs::read(&path).map_err(|e| failed(format!("{}: {e}", path.display())))?;
        assets.push((scripts::L1_ROOTFS_INITRD.into(), bytes, 0o644));
    }
    if needs(scripts::Asset::Qemu) {
        assets.extend(qemu_files()?);
    }
    if needs(scripts::Asset::Curl) {
        assets.extend(curl_files()?);
    }
    if needs(scripts::Asset::Perf) {
        assets.extend(perf_files()?);
    }
    if needs(scripts::Asset::Firecracker) {
        assets.extend(firecracker_files(cfg.firecracker.as_deref())?);
    }
    if needs(scripts::Asset::Soak) {
        assets.extend(jail_scripts::soak_assets()?);
    }
    if needs(scripts::Asset::VirtioBench) {
        assets.extend(vbench_scripts::vbench_assets()?);
    }
    // Binaries share libraries: one copy of each path.
    let mut seen = std::collections::BTreeSet::new();
    assets.retain(|(path, _, _)| seen.insert(path.clone()));

    // L1 initramfs: busybox, modules, subzero, lab-peer, the L2 kernel and
    // initramfs, the scenarios' assets.
    let names: Vec<String> = modules.iter().map(|m| m.file_name.clone()).collect();
    // The ELF vmlinux scenarios need the kernel extracted from the bzImage.
    let vmlinux = if cfg
        .scenarios
        .iter()
        .any(|s| s.kernel != scripts::L1_L2_KERNEL)
    {
        let path = kernel::vmlinux(&kernel)?;
        let bytes = fs::read(&path).map_err(|e| failed(format!("{}: {e}", path.display())))?;
        let off = elf::pvh_note_type_offset(&bytes).ok_or_else(|| {
            failed(format!(
                "{} has no PVH note (XEN_ELFNOTE_PHYS32_ENTRY)",
                path.display()
            ))
        })?;
        Some((bytes, off))
    } else {
        None
    };
    let parts = L1Parts {
        busybox: &busybox,
        modules: &modules,
        names: &names,
        token: &token,
        vmlinux: vmlinux.as_ref(),
        subzero: &subzero_bytes,
        lab_peer: &lab_peer,
        vmlinuz: &vmlinuz,
        l2_initrd: &l2_initrd,
        kernel_path: &kernel.vmlinuz,
        assets: &assets,
    };
    let prep = t0.elapsed();
    // The passthrough scenarios get an L1 of their own, after the others.
    let (iommu, plain): (Vec<Scenario>, Vec<Scenario>) =
        cfg.scenarios.iter().partition(|s| s.iommu);
    let image = if iommu.is_empty() {
        None
    } else {
        Some(pt_scripts::nvme_image(&cfg.out_dir)?)
    };
    let (first_set, first_nvme) = if plain.is_empty() {
        (&iommu, image.as_deref())
    } else {
        (&plain, None)
    };
    let mut stalls = Vec::new();
    let (mut q, log_path, mut parsed) =
        boot_with_retry(cfg, &parts, first_set, prep, first_nvme, &mut stalls)?;
    if let (false, Some(image)) = (plain.is_empty(), image.as_deref()) {
        let (q2, log2, second) =
            boot_with_retry(cfg, &parts, &iommu, prep, Some(image), &mut stalls)?;
        for (name, sc) in second.scenarios {
            parsed.scenarios.insert(name, sc);
        }
        q.lines.extend(q2.lines);
        q.wall += q2.wall;
        q.timed_out |= q2.timed_out;
        log(&format!("IOMMU L1 console log: {}", log2.display()));
    }
    let run = LabRun {
        kernel,
        subzero_bin: subzero,
        token,
        log_path,
        lines: q.lines,
        l1: parsed.l1,
        scenarios: parsed.scenarios,
        requested: cfg.scenarios.clone(),
        prep,
        qemu_wall: q.wall,
        total: t0.elapsed(),
        qemu_status: q
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "status unknown".into()),
        timed_out: q.timed_out,
        stalls,
        qemu_stderr: q.stderr,
    };
    eprintln!("{}", run.timings());
    if run.l1.init_at.is_none() {
        return Err(failed(format!(
            "L1 never reached its /init.\n{}\nfull L1 console log: {}",
            run.l1_summary(),
            run.log_path.display()
        )));
    }
    Ok(run)
}

/// Runs the lab and turns "unavailable" into a skip (`None`, with the reason
/// printed) or, under CI, into a failure. Meant to be called once, through a
/// `OnceLock`, and never panics; use [`outcome`] on the result in each test.
pub fn run_from_env() -> Result<LabRun, LabError> {
    let cfg = Config::from_env()?;
    run_lab(&cfg)
}

/// What each test does with the shared result: `Some(run)` to go on, `None`
/// to skip (prerequisites missing outside CI), or a panic with the reason.
pub fn outcome(result: &Result<LabRun, LabError>) -> Option<&LabRun> {
    match result {
        Ok(run) => Some(run),
        Err(LabError::Unavailable(why)) if !is_ci() => {
            eprintln!("lab: SKIPPING (set CI=true to make this a failure): {why}");
            None
        }
        Err(LabError::Unavailable(why)) => {
            panic!("lab prerequisites unavailable under CI=true: {why}")
        }
        Err(LabError::Failed(why)) => panic!("lab failed: {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_library_and_loader_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f1)\n\
                    \tlibfoo.so => not found\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f2)\n";
        assert_eq!(
            parse_ldd(text),
            [
                "/lib/x86_64-linux-gnu/libz.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }

    #[test]
    fn only_the_benchmarks_and_the_soak_are_opt_in() {
        let names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        assert_eq!(
            names
                .iter()
                .filter(|n| n.starts_with("virtio-bench"))
                .count(),
            1,
            "one virtio-bench scenario runs every VMM: {names:?}"
        );
        assert!(SCENARIOS
            .iter()
            .filter(|s| s.opt_in)
            .all(|s| s.name.contains("bench") || s.name == "soak"));
        for name in ["api", "hw-exits"] {
            let sc = SCENARIOS.iter().find(|s| s.name == name).unwrap();
            assert!(!sc.opt_in, "{name} runs by default");
        }
    }
}
