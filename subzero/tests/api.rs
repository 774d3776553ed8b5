//! Host-KVM: the `subzero` binary driven through Firecracker's API on its
//! Unix socket, with the counter guest.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{counts, kvm_available, scratch, wait_for, Console};

/// A `subzero --api-sock` process and its console.
struct Vmm {
    child: Child,
    sock: PathBuf,
    console: Console,
    stderr: Console,
}

/// Copies what `from` gives into `into` as it arrives, partial lines too.
fn collect(mut from: impl Read + Send + 'static, into: Console) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.0.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
}

impl Vmm {
    /// Starts `subzero --api-sock` with its console collected.
    fn spawn(sock: &Path, extra: &[&str]) -> Vmm {
        let mut vmm = Vmm::launch(sock, extra);
        collect(vmm.child.stdout.take().unwrap(), vmm.console.clone());
        vmm
    }

    /// Starts `subzero --api-sock` and waits for its socket, leaving its
    /// console (stdout) unread in `child`.
    fn launch(sock: &Path, extra: &[&str]) -> Vmm {
        let mut child = Command::new(env!("CARGO_BIN_EXE_subzero"))
            .arg("--api-sock")
            .arg(sock)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn subzero");
        let stderr = Console::default();
        collect(child.stderr.take().unwrap(), stderr.clone());
        let vmm = Vmm {
            child,
            sock: sock.to_path_buf(),
            console: Console::default(),
            stderr,
        };
        assert!(
            wait_for(10, || UnixStream::connect(sock).is_ok()),
            "the API socket never answered: {}",
            vmm.stderr.text()
        );
        vmm
    }

    fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        http(&self.sock, method, path, body)
    }

    /// Asserts a 204.
    fn ok(&self, method: &str, path: &str, body: &str) {
        let (status, text) = self.call(method, path, body);
        assert_eq!(status, 204, "{method} {path} {body}: {text}");
    }

    fn kill(self) {
        drop(self);
    }
}

/// A test that fails must not leave its VMM (and the guest, counting
/// forever) running.
impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request on a new connection; the status and the body.
fn http(sock: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    subzero::api::client::request(sock, method, path, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// A `PUT /snapshot/load` body for these files, not resuming.
fn load_body(state: &Path, mem: &Path) -> String {
    format!(
        r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}}}"#,
        state.display(),
        mem.display()
    )
}

fn fault(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    v["fault_message"]
        .as_str()
        .expect("fault_message")
        .to_string()
}

/// Asserts that a request fails with `status` and a fault message holding
/// `needle`.
fn expect(vmm: &Vmm, method: &str, path: &str, body: &str, status: u16, needle: &str) {
    let (got, text) = vmm.call(method, path, body);
    assert_eq!(got, status, "{method} {path}: {text}");
    let msg = fault(&text);
    assert!(msg.contains(needle), "{method} {path}: {msg}");
}

fn state(vmm: &Vmm) -> String {
    let (status, body) = vmm.call("GET", "/", "");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["state"].as_str().unwrap().to_string()
}

/// A scratch dir with the counter guest in it.
fn setup(name: &str) -> (PathBuf, PathBuf) {
    let dir = scratch(name);
    let kernel = dir.join("counter.elf");
    std::fs::write(&kernel, subzero::demo::COUNTER_ELF).unwrap();
    (dir, kernel)
}

fn boot_counter(vmm: &Vmm, kernel: &Path) {
    vmm.ok(
        "PUT",
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display()),
    );
    vmm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
    );
    vmm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
}

#[test]
fn the_counter_pauses_snapshots_and_goes_on_in_a_new_process() {
    if !kvm_available() {
        return;
    }
    let (dir, kernel) = setup("api-snapshot");
    let vmm = Vmm::spawn(&dir.join("a.sock"), &["--id", "counter"]);
    assert_eq!(state(&vmm), "Not started");
    // 1. configure and start
    boot_counter(&vmm, &kernel);
    assert!(
        wait_for(30, || counts(&vmm.console.text()).len() >= 3),
        "no count: {:?} {}",
        vmm.console.text(),
        vmm.stderr.text()
    );
    assert_eq!(state(&vmm), "Running");
    // 2. pause: the counter stops
    vmm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(state(&vmm), "Paused");
    let at_pause = vmm.console.text();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(vmm.console.text(), at_pause, "the paused guest printed");
    // 3. snapshot, and kill the process
    let (snap, mem) = (dir.join("vm.snap"), dir.join("vm.mem"));
    vmm.ok(
        "PUT",
        "/snapshot/create",
        &format!(
            r#"{{"snapshot_type": "Full", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
            snap.display(),
            mem.display()
        ),
    );
    vmm.kill();
    // 4. load it in a new process, and resume
    let vmm = Vmm::spawn(&dir.join("b.sock"), &[]);
    vmm.ok("PUT", "/snapshot/load", &load_body(&snap, &mem));
    assert_eq!(state(&vmm), "Paused");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(vmm.console.text(), "", "the loaded VM ran before Resumed");
    vmm.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    // 5. the counter goes on from where it was paused
    assert!(
        wait_for(30, || counts(&vmm.console.text()).len() >= 2),
        "no count after the restore: {:?} {}",
        vmm.console.text(),
        vmm.stderr.text()
    );
    let joined = counts(&(at_pause.clone() + &vmm.console.text()));
    let expected: Vec<u64> = (1..=joined.len() as u64).collect();
    assert_eq!(joined, expected, "the count restarted or skipped");
    let (_, config) = vmm.call("GET", "/vm/config", "");
    assert!(config.contains("counter.elf"), "{config}");
    vmm.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_requests_get_firecrackers_status_and_fault_message() {
    if !kvm_available() {
        return;
    }
    let (dir, kernel) = setup("api-bad");
    let vmm = Vmm::spawn(&dir.join("a.sock"), &[]);
    expect(
        &vmm,
        "GET",
        "/no/such/path",
        "",
        400,
        "Invalid request method and/or path",
    );
    expect(
        &vmm,
        "DELETE",
        "/machine-config",
        "",
        400,
        "Invalid request method and/or path",
    );
    expect(
        &vmm,
        "PUT",
        "/machine-config",
        "{\"vcpu_count\": ",
        400,
        "deserializing the json body",
    );
    expect(
        &vmm,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64, "x": 1}"#,
        400,
        "unknown field `x`",
    );
    expect(
        &vmm,
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#,
        400,
        "/nonexistent/vmlinux",
    );
    expect(
        &vmm,
        "PATCH",
        "/vm",
        r#"{"state": "Paused"}"#,
        400,
        "not running",
    );
    expect(
        &vmm,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
        400,
        "PUT /boot-source",
    );
    let huge = format!(r#"{{"kernel_image_path": "{}"}}"#, "a".repeat(60_000));
    expect(&vmm, "PUT", "/boot-source", &huge, 413, "at most 51200");
    // Garbage and a client that leaves mid-request harm nothing.
    {
        let mut s = UnixStream::connect(&vmm.sock).unwrap();
        s.write_all(b"\x16\x03\x01\x00\xa5garbage\r\n\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
        let mut s = UnixStream::connect(&vmm.sock).unwrap();
        s.write_all(b"PUT /boot-source HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"ker")
            .unwrap();
    }
    assert_eq!(state(&vmm), "Not started");

    boot_counter(&vmm, &kernel);
    expect(
        &vmm,
        "PUT",
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display()),
        400,
        "not supported after starting the microVM",
    );
    expect(
        &vmm,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
        400,
        "not supported after starting the microVM",
    );
    let create = format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        dir.join("s").display(),
        dir.join("m").display()
    );
    expect(
        &vmm,
        "PUT",
        "/snapshot/create",
        &create,
        400,
        "only when the microVM is paused",
    );
    expect(
        &vmm,
        "PUT",
        "/snapshot/load",
        &create,
        400,
        "not allowed after configuring",
    );
    vmm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    vmm.ok("PUT", "/snapshot/create", &create);
    expect(
        &vmm,
        "PUT",
        "/snapshot/create",
        &create,
        400,
        "already exists",
    );
    vmm.ok(
        "PUT",
        "/snapshot/create",
        &create.replace('}', r#", "overwrite": true}"#),
    );
    vmm.kill();

    // A corrupt or truncated state file: 400, and the process goes on.
    let vmm = Vmm::spawn(&dir.join("b.sock"), &[]);
    let data = std::fs::read(dir.join("s")).unwrap();
    std::fs::write(dir.join("truncated"), &data[..data.len() / 2]).unwrap();
    let mut flipped = data.clone();
    flipped[data.len() / 2] ^= 0x40;
    std::fs::write(dir.join("flipped"), &flipped).unwrap();
    let load = |state: &str| load_body(&dir.join(state), &dir.join("m"));
    expect(
        &vmm,
        "PUT",
        "/snapshot/load",
        &load("truncated"),
        400,
        "is truncated",
    );
    expect(
        &vmm,
        "PUT",
        "/snapshot/load",
        &load("flipped"),
        400,
        "checksum does not match",
    );
    expect(
        &vmm,
        "PUT",
        "/snapshot/load",
        &load("nonexistent"),
        400,
        "No such file",
    );
    assert_eq!(state(&vmm), "Not started");
    vmm.ok("PUT", "/snapshot/load", &load("s"));
    assert_eq!(state(&vmm), "Paused");
    vmm.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_live_socket_is_never_taken_and_a_stale_one_is_replaced() {
    if !kvm_available() {
        return;
    }
    let dir = scratch("api-sock");
    let sock = dir.join("a.sock");
    let first = Vmm::spawn(&sock, &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_subzero"))
        .arg("--api-sock")
        .arg(&sock)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is in use by a running process"),
        "{stderr}"
    );
    assert_eq!(
        state(&first),
        "Not started",
        "the first VMM lost its socket"
    );
    first.kill();
    // The killed process left its socket behind; a new VMM takes it over.
    let second = Vmm::spawn(&sock, &[]);
    assert_eq!(state(&second), "Not started");
    second.kill();
    let file = dir.join("notes.txt");
    std::fs::write(&file, "keep me").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_subzero"))
        .arg("--api-sock")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exists and is a regular file, not a socket")
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_config_file_boots_without_an_api() {
    if !kvm_available() {
        return;
    }
    let (dir, kernel) = setup("api-config");
    let cfg = dir.join("vm.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 32}}}}"#,
            kernel.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_subzero"))
        .args([
            "--no-api",
            "--no-seccomp",
            "--level",
            "Warning",
            "--config-file",
        ])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let console = Console::default();
    collect(child.stdout.take().unwrap(), console.clone());
    let counted = wait_for(30, || counts(&console.text()).len() >= 2);
    let _ = child.kill();
    let _ = child.wait();
    assert!(counted, "{:?}", console.text());

    std::fs::write(
        &cfg,
        r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 32}, "ballon": {}}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_subzero"))
        .args(["--no-api", "--config-file"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("vm.json") && stderr.contains("unknown field `ballon`"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_running_vms_drive_gets_a_new_backing_file() {
    if !kvm_available() {
        return;
    }
    let (dir, kernel) = setup("api-patch-drive");
    let (a, b) = (dir.join("a.img"), dir.join("b.img"));
    std::fs::write(&a, vec![0u8; 1 << 20]).unwrap();
    std::fs::write(&b, vec![1u8; 2 << 20]).unwrap();
    let vmm = Vmm::spawn(&dir.join("a.sock"), &[]);
    let drive = |path: &Path| {
        format!(
            r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false, "is_read_only": false}}"#,
            path.display()
        )
    };
    vmm.ok("PUT", "/drives/data", &drive(&a));
    boot_counter(&vmm, &kernel);
    let patch = |path: &Path| {
        format!(
            r#"{{"drive_id": "data", "path_on_host": "{}"}}"#,
            path.display()
        )
    };
    vmm.ok("PATCH", "/drives/data", &patch(&b));
    let (_, config) = vmm.call("GET", "/vm/config", "");
    assert!(
        config.contains("b.img") && !config.contains("a.img"),
        "{config}"
    );
    expect(
        &vmm,
        "PATCH",
        "/drives/data",
        &patch(&dir.join("missing.img")),
        400,
        "missing.img",
    );
    expect(
        &vmm,
        "PATCH",
        "/drives/other",
        r#"{"drive_id": "other", "path_on_host": "x"}"#,
        400,
        "no drive \"other\"",
    );
    let (_, config) = vmm.call("GET", "/vm/config", "");
    assert!(
        config.contains("b.img"),
        "a failed swap changed the drive: {config}"
    );
    // The running disk takes new rate limits, which the configuration keeps.
    vmm.ok(
        "PATCH",
        "/drives/data",
        r#"{"drive_id": "data", "rate_limiter": {"bandwidth": {"size": 4194304, "refill_time": 1000}}}"#,
    );
    let (_, config) = vmm.call("GET", "/vm/config", "");
    assert!(
        config.contains(r#""rate_limiter":{"bandwidth":{"refill_time":1000,"size":4194304}}"#),
        "{config}"
    );
    expect(
        &vmm,
        "PATCH",
        "/network-interfaces/eth9",
        r#"{"iface_id": "eth9", "rx_rate_limiter": {"ops": {"size": 1, "refill_time": 1}}}"#,
        400,
        "no network interface \"eth9\"",
    );
    assert!(
        wait_for(30, || counts(&vmm.console.text()).len() >= 2),
        "the guest stopped: {}",
        vmm.stderr.text()
    );
    vmm.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_console_nobody_reads_does_not_stop_a_pause() {
    if !kvm_available() {
        return;
    }
    use std::os::fd::AsRawFd;
    let (dir, kernel) = setup("api-stuck-console");
    let mut vmm = Vmm::launch(&dir.join("a.sock"), &[]);
    // A one-page pipe that nobody reads: the counter fills it in about 2 s.
    let stdout = vmm.child.stdout.take().unwrap();
    // SAFETY: F_SETPIPE_SZ on a pipe this test owns.
    unsafe { libc::fcntl(stdout.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    boot_counter(&vmm, &kernel);
    std::thread::sleep(Duration::from_secs(4));
    let started = std::time::Instant::now();
    vmm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the pause waited on the console"
    );
    assert_eq!(state(&vmm), "Paused");
    vmm.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    drop(stdout);
    vmm.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each thread of `pid`: its name and its status file's `Seccomp:` value.
fn thread_seccomp(pid: u32) -> Vec<(String, String)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("status")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .unwrap_or("missing")
            .trim()
            .to_string();
        threads.push((comm.trim().to_string(), mode));
    }
    threads.sort();
    threads
}

#[test]
fn every_thread_runs_under_a_seccomp_filter() {
    if !kvm_available() {
        return;
    }
    let (dir, kernel) = setup("api-seccomp");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let vmm = Vmm::spawn(&dir.join("a.sock"), &["--trace-exits"]);
    vmm.ok(
        "PUT",
        "/drives/data",
        &format!(
            r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false, "is_read_only": false}}"#,
            disk.display()
        ),
    );
    vmm.ok(
        "PUT",
        "/vsock",
        &format!(
            r#"{{"guest_cid": 3, "uds_path": "{}"}}"#,
            dir.join("v.sock").display()
        ),
    );
    vmm.ok("PUT", "/entropy", "{}");
    boot_counter(&vmm, &kernel);
    assert!(
        wait_for(30, || counts(&vmm.console.text()).len() >= 2),
        "the guest does not run: {}",
        vmm.stderr.text()
    );
    // An API connection is open while the threads are read.
    let mut conn = UnixStream::connect(&vmm.sock).unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let threads = thread_seccomp(vmm.child.id());
    let names: Vec<&str> = threads.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "subzero",
        "api",
        "api-conn",
        "vcpu0",
        "console",
        "virtio-blk0",
        "virtio-vsock0",
        "virtio-rng0",
    ] {
        assert!(
            names.contains(&expected),
            "no {expected} thread: {threads:?}"
        );
    }
    for (name, mode) in &threads {
        assert_eq!(mode, "2", "thread {name} is not filtered: {threads:?}");
    }
    // --trace-exits: GET /stats has the hardware section, read by a
    // filtered hw-trace thread where tracing is possible.
    let (status, body) = vmm.call("GET", "/stats", "");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let hw = &v["hardware"];
    match hw["status"].as_str() {
        Some("traced") => {
            assert!(names.contains(&"hw-trace"), "{threads:?}");
            let serial = hw["io"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["port"] == 0x3f8);
            assert!(
                serial.is_some_and(|r| r["to_userspace"].as_u64() > Some(0)),
                "the counter's console writes are traced: {hw}"
            );
        }
        Some("unavailable") => eprintln!("skipped: tracing unavailable: {}", hw["note"]),
        other => panic!("hardware.status {other:?}: {body}"),
    }
    drop(conn);
    vmm.kill();

    // --no-seccomp: no thread is filtered.
    let vmm = Vmm::spawn(&dir.join("b.sock"), &["--no-seccomp"]);
    boot_counter(&vmm, &kernel);
    assert!(wait_for(30, || counts(&vmm.console.text()).len() >= 2));
    for (name, mode) in thread_seccomp(vmm.child.id()) {
        assert_eq!(mode, "0", "thread {name} is filtered under --no-seccomp");
    }
    vmm.kill();
    let _ = std::fs::remove_dir_all(&dir);
}
