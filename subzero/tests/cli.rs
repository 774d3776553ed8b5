//! The `subzero` binary against bad input: every case gets a clear one-line
//! error naming the file or flag, a non-zero exit, and never a panic.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn subzero(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_subzero"))
        .args(args)
        .output()
        .expect("run subzero")
}

/// Asserts a clean failure whose stderr contains every one of `needles`.
fn fails_with(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit status; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}: {stderr}");
    }
}

/// A fake bzImage that passes header checks, in a scratch dir named `name`.
fn fake_kernel(name: &str) -> std::path::PathBuf {
    let kernel = common::scratch(name).join("bzImage");
    common::fake_bzimage(&kernel, &[0xf4; 64]);
    kernel
}

fn run_with(kernel: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["run", "--kernel", kernel.to_str().unwrap()];
    args.extend_from_slice(extra);
    subzero(&args)
}

#[test]
fn missing_kernel_is_named() {
    let out = run_with(Path::new("/nonexistent/vmlinuz"), &[]);
    fails_with(
        &out,
        &["cannot read kernel /nonexistent/vmlinuz", "No such file"],
    );
}

#[test]
fn directory_as_kernel_is_rejected() {
    let out = run_with(Path::new("/"), &[]);
    fails_with(&out, &["cannot read kernel /", "directory"]);
}

#[test]
fn a_file_that_is_not_a_kernel_is_rejected() {
    let dir = common::scratch("notakernel");
    for (name, bytes) in [
        ("text", b"just some text, not a kernel\n".to_vec()),
        ("empty", Vec::new()),
        ("gzip", vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = run_with(&path, &[]);
        fails_with(&out, &[path.to_str().unwrap(), "is not a Linux kernel"]);
    }
}

#[test]
fn missing_initrd_is_named() {
    let kernel = fake_kernel("noinitrd");
    let out = run_with(&kernel, &["--initrd", "/nonexistent/initrd.img"]);
    fails_with(&out, &["cannot read initrd /nonexistent/initrd.img"]);
}

#[test]
fn bad_memory_sizes_are_explained() {
    let k = Path::new("/nonexistent");
    fails_with(
        &run_with(k, &["--memory", "1M"]),
        &["--memory 1 MiB is too small"],
    );
    fails_with(
        &run_with(k, &["--memory", "1000T"]),
        &["more than this host's"],
    );
    let out = run_with(k, &["--memory", "lots"]);
    // clap reports value errors with status 2.
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a size"));
}

#[test]
fn zero_vcpus_is_rejected() {
    let kernel = fake_kernel("zerovcpu");
    fails_with(
        &run_with(&kernel, &["--vcpus", "0"]),
        &["--vcpus must be at least 1"],
    );
}

#[test]
fn too_many_vcpus_is_rejected() {
    if !common::kvm_available() {
        return;
    }
    let kernel = fake_kernel("manyvcpu");
    fails_with(
        &run_with(&kernel, &["--vcpus", "100000"]),
        &["--vcpus 100000", "at most"],
    );
}

#[test]
fn initrd_that_does_not_fit_is_explained() {
    if !common::kvm_available() {
        return;
    }
    let kernel = fake_kernel("biginitrd");
    let initrd = kernel.with_file_name("initrd.img");
    let f = std::fs::File::create(&initrd).unwrap();
    f.set_len(48 << 20).unwrap(); // sparse 48 MiB
    let out = run_with(
        &kernel,
        &["--memory", "32M", "--initrd", initrd.to_str().unwrap()],
    );
    fails_with(&out, &["initrd", "is 48 MiB but only", "raise --memory"]);
}

#[test]
fn command_line_longer_than_the_kernel_accepts_is_rejected() {
    if !common::kvm_available() {
        return;
    }
    let kernel = fake_kernel("longcmdline");
    let long = "x".repeat(300);
    let out = run_with(&kernel, &["--cmdline", &long]);
    fails_with(&out, &["command line is 300 bytes", "at most 255"]);
}

#[test]
fn truncated_bzimage_is_reported_as_corrupt() {
    if !common::kvm_available() {
        return;
    }
    let dir = common::scratch("truncated");
    let kernel = dir.join("bzImage");
    common::fake_bzimage(&kernel, &[]);
    // Claim 30 setup sectors: the protected-mode part is missing.
    let mut img = std::fs::read(&kernel).unwrap();
    img[0x1f1] = 30;
    std::fs::write(&kernel, img).unwrap();
    let out = run_with(&kernel, &[]);
    fails_with(&out, &["kernel", "corrupt or truncated"]);
}

#[test]
fn version_and_help_work() {
    let out = subzero(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("subzero "));
    let out = subzero(&["run", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--kernel", "--initrd", "--cmdline", "--memory", "--vcpus"] {
        assert!(help.contains(flag), "{help}");
    }
}

#[test]
fn device_options_are_checked_with_an_example() {
    let kernel = fake_kernel("devopts");
    // clap reports malformed values with exit status 2.
    for (args, needle) in [
        (&["--disk", "rootfs.ext4"][..], "--disk path=rootfs.ext4"),
        (&["--disk", "path=a,ro=1"][..], "unknown key \"ro\""),
        (&["--vsock", "cid=2,uds=/tmp/x"][..], "0-2 are reserved"),
        (&["--vsock", "cid=3"][..], "missing uds="),
        (&["--net", "mac=52:54:00:00:00:01"][..], "missing tap="),
    ] {
        let out = run_with(&kernel, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn device_backends_are_opened_before_the_vm_and_named_in_errors() {
    let dir = common::scratch("devbackends");
    let kernel = fake_kernel("devbackends-k");
    let missing = dir.join("missing.img");
    let out = run_with(&kernel, &["--disk", &format!("path={}", missing.display())]);
    fails_with(&out, &["disk image", "missing.img", "no such file"]);
    let out = run_with(&kernel, &["--disk", &format!("path={}", dir.display())]);
    fails_with(&out, &["is a directory"]);
    let file = dir.join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let out = run_with(
        &kernel,
        &["--vsock", &format!("cid=3,uds={}", file.display())],
    );
    fails_with(&out, &["plain-file", "not a socket"]);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"x",
        "the file is left alone"
    );
}

/// Makes a FIFO at `path`.
fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path only.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn a_fifo_or_device_given_as_an_input_file_is_refused_at_once() {
    let dir = common::scratch("fifos");
    let fifo = dir.join("pipe");
    mkfifo(&fifo);
    let kernel = fake_kernel("fifo-kernel");
    let fifo_s = fifo.to_str().unwrap();
    let started = std::time::Instant::now();
    for (args, needle) in [
        (vec!["run", "--kernel", fifo_s], "cannot read kernel"),
        (
            vec!["run", "--kernel", "/dev/zero"],
            "cannot read kernel /dev/zero: it is a character device",
        ),
        (
            vec![
                "run",
                "--kernel",
                kernel.to_str().unwrap(),
                "--initrd",
                fifo_s,
            ],
            "cannot read initrd",
        ),
        (
            vec![
                "run",
                "--kernel",
                kernel.to_str().unwrap(),
                "--symbols",
                fifo_s,
            ],
            fifo_s,
        ),
        (vec!["--no-api", "--config-file", fifo_s], fifo_s),
    ] {
        let out = subzero(&args);
        fails_with(&out, &[needle]);
        if needle != "cannot read kernel /dev/zero: it is a character device" {
            fails_with(&out, &["named pipe (FIFO)"]);
        }
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "something waited on the FIFO"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stats_out_never_overwrites_a_file_the_vm_reads() {
    let kernel = fake_kernel("statsout");
    let dir = kernel.parent().unwrap().to_path_buf();
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![7u8; 4096]).unwrap();
    let link = dir.join("innocent-name.json");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&disk, &link).unwrap();
    let before = (
        std::fs::read(&kernel).unwrap(),
        std::fs::read(&disk).unwrap(),
    );
    for target in [&kernel, &disk, &link] {
        let out = run_with(
            &kernel,
            &[
                "--disk",
                &format!("path={}", disk.display()),
                "--stats",
                "--stats-out",
                target.to_str().unwrap(),
            ],
        );
        fails_with(
            &out,
            &[
                "--stats-out",
                "which the VM reads: refusing to overwrite it",
            ],
        );
    }
    assert_eq!(
        (
            std::fs::read(&kernel).unwrap(),
            std::fs::read(&disk).unwrap()
        ),
        before,
        "an input changed"
    );
    let out = run_with(&kernel, &["--stats", "--stats-out", dir.to_str().unwrap()]);
    fails_with(&out, &["is a directory"]);
}

#[test]
fn a_guest_that_resets_before_printing_anything_is_not_a_success() {
    if !common::kvm_available() {
        return;
    }
    let kernel = common::scratch("triplefault").join("bzImage");
    // At the 64-bit entry (0x200 into the image), ud2 with no IDT: #UD,
    // then #DF, then a triple fault (KVM_EXIT_SHUTDOWN).
    let mut payload = vec![0u8; 0x200];
    payload.extend_from_slice(&[0x0f, 0x0b]);
    common::fake_bzimage(&kernel, &payload);
    let out = run_with(&kernel, &["--memory", "64M"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("before it printed anything: it never started"),
        "{stderr}"
    );
    assert!(stderr.contains("triple fault"), "{stderr}");
}

#[test]
fn a_live_stats_socket_or_another_file_is_never_taken() {
    if !common::kvm_available() {
        return;
    }
    let kernel = fake_kernel("statsock");
    let dir = kernel.parent().unwrap().to_path_buf();
    let sock = dir.join("live.sock");
    let _ = std::fs::remove_file(&sock);
    let owner = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let out = run_with(&kernel, &["--stats-socket", sock.to_str().unwrap()]);
    fails_with(&out, &["live.sock is in use by a running process"]);
    assert!(
        std::os::unix::net::UnixStream::connect(&sock).is_ok(),
        "the owner lost its socket"
    );
    drop(owner);
    let notes = dir.join("notes.txt");
    std::fs::write(&notes, "mine").unwrap();
    let out = run_with(&kernel, &["--stats-socket", notes.to_str().unwrap()]);
    fails_with(
        &out,
        &["notes.txt exists and is a regular file, not a socket"],
    );
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "mine");
}

/// A bzImage whose 64-bit entry prints "ok\n", makes five CPUID exits and
/// powers off.
fn cpuid_kernel(name: &str) -> std::path::PathBuf {
    use subzero::arch::x86_64::layout::ports;
    let kernel = common::scratch(name).join("bzImage");
    let mut code = vec![0u8; 0x200];
    code.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03]); // mov dx, 0x3f8
    for c in b"ok\n" {
        code.extend_from_slice(&[0xb0, *c, 0xee]); // mov al, c; out dx, al
    }
    code.extend_from_slice(&[0x41, 0xb8, 5, 0, 0, 0]); // mov r8d, 5
                                                       // loop: xor eax, eax; xor ecx, ecx; cpuid; dec r8d; jnz loop
    code.extend_from_slice(&[
        0x31, 0xc0, 0x31, 0xc9, 0x0f, 0xa2, 0x41, 0xff, 0xc8, 0x75, 0xf5,
    ]);
    let [lo, hi] = ports::ACPI_SLEEP_CONTROL.to_le_bytes();
    let value = (ports::ACPI_S5_SLEEP_TYPE << 2) | 0x20;
    code.extend_from_slice(&[0x66, 0xba, lo, hi, 0xb0, value, 0xee]);
    code.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp hlt
    common::fake_bzimage(&kernel, &code);
    kernel
}

#[test]
fn run_stats_shows_hardware_exits_under_the_seccomp_filters() {
    if !common::kvm_available() {
        return;
    }
    let kernel = cpuid_kernel("hwstats");
    let dir = kernel.parent().unwrap().to_path_buf();
    let json_path = dir.join("stats.json");
    let report = |extra: &[&str]| {
        let mut args = vec!["--memory", "64M", "--stats", "--stats-format", "json"];
        args.extend_from_slice(&["--stats-out", json_path.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let out = run_with(&kernel, &args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
        let text = std::fs::read_to_string(&json_path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        (v["hardware"].clone(), stderr)
    };
    let (hw, stderr) = report(&[]);
    match hw["status"].as_str() {
        Some("traced") => {
            let serial = hw["io"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["port"] == 0x3f8)
                .unwrap_or_else(|| panic!("no serial row: {hw}"));
            assert_eq!(serial["count"], 3, "{serial}");
            assert_eq!(serial["to_userspace"], 3, "{serial}");
            let leaf0 = hw["cpuid"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["leaf"] == 0)
                .unwrap_or_else(|| panic!("no CPUID leaf 0 row: {hw}"));
            assert_eq!(leaf0["count"], 5, "{leaf0}");
        }
        Some("unavailable") => {
            let note = hw["note"].as_str().unwrap_or_default();
            assert!(!note.is_empty(), "{hw}");
            assert!(
                stderr.contains(note),
                "the reason is also on stderr: {stderr}"
            );
            eprintln!("skipped: tracing unavailable here: {note}");
        }
        other => panic!("hardware.status {other:?}: {hw}"),
    }
    let (hw, _) = report(&["--no-trace"]);
    assert_eq!(hw["status"], "off", "{hw}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Code that prints `text` on the serial port and powers off.
fn print_and_power_off(text: &[u8]) -> Vec<u8> {
    use subzero::arch::x86_64::layout::ports;
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for c in text {
        code.extend_from_slice(&[0xb0, *c, 0xee]); // mov al, c; out dx, al
    }
    let [lo, hi] = ports::ACPI_SLEEP_CONTROL.to_le_bytes();
    let value = (ports::ACPI_S5_SLEEP_TYPE << 2) | 0x20;
    code.extend_from_slice(&[0x66, 0xba, lo, hi, 0xb0, value, 0xee]);
    code.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp hlt
    code
}

/// An ELF64 vmlinux (no PVH note: entered at its 64-bit entry) of `code`
/// at 1 MiB.
fn tiny_vmlinux(code: &[u8]) -> Vec<u8> {
    const AT: u64 = 0x10_0000;
    let mut b = vec![0u8; 120];
    b[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b[18..20].copy_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[24..32].copy_from_slice(&AT.to_le_bytes()); // e_entry
    b[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    b[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    b[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    b[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let p = &mut b[64..120];
    p[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    p[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    p[8..16].copy_from_slice(&120u64.to_le_bytes()); // p_offset
    p[16..24].copy_from_slice(&AT.to_le_bytes()); // p_vaddr
    p[24..32].copy_from_slice(&AT.to_le_bytes()); // p_paddr
    p[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    p[40..48].copy_from_slice(&(code.len() as u64).to_le_bytes()); // p_memsz
    b.extend_from_slice(code);
    b
}

/// A bzImage whose own 64-bit entry prints "guest-unpacked" and whose
/// gzip payload is a vmlinux that prints "host-unpacked".
fn two_faced_bzimage(path: &Path) {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tiny_vmlinux(&print_and_power_off(b"host-unpacked\n")))
        .unwrap();
    let payload = gz.finish().unwrap();
    let mut pm = vec![0u8; 0x200];
    pm.extend(print_and_power_off(b"guest-unpacked\n"));
    pm.resize(0x400, 0);
    pm.extend_from_slice(&payload);
    common::fake_bzimage(path, &pm);
    let mut img = std::fs::read(path).unwrap();
    img[0x248..0x24c].copy_from_slice(&0x400u32.to_le_bytes()); // payload_offset
    img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    std::fs::write(path, img).unwrap();
}

#[test]
fn a_bzimage_is_unpacked_on_the_host_and_cached_unless_told_not_to() {
    if !common::kvm_available() {
        return;
    }
    let dir = common::scratch("hostunpack");
    let kernel = dir.join("bzImage");
    two_faced_bzimage(&kernel);
    let cache = dir.join("cache");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory",
            "64M",
        ];
        args.extend_from_slice(extra);
        let out = Command::new(env!("CARGO_BIN_EXE_subzero"))
            .args(&args)
            .env("SUBZERO_CACHE_DIR", &cache)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stderr}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(run(&[]), "host-unpacked\n");
    let entries: Vec<_> = std::fs::read_dir(cache.join("vmlinux"))
        .expect("the cache directory exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(
        entries[0].ends_with(".elf") && entries[0].len() == 64 + 4,
        "{entries:?}"
    );
    // From the cache, the same kernel.
    assert_eq!(run(&[]), "host-unpacked\n");
    // Opted out: the bzImage's own code runs.
    assert_eq!(run(&["--no-host-decompress"]), "guest-unpacked\n");
    // A payload that cannot be unpacked boots the ordinary way, and says so.
    let mut img = std::fs::read(&kernel).unwrap();
    let start = 2 * 512 + 0x400;
    img[start + 20..start + 40].fill(0x55);
    std::fs::write(&kernel, img).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_subzero"))
        .args([
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory",
            "64M",
        ])
        .env("SUBZERO_CACHE_DIR", &cache)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "guest-unpacked\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not unpacked on the host") && stderr.contains("gzip payload"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
