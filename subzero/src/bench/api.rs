//! `subzero bench api`: the control plane's costs, for Subzero and, when
//! given, Firecracker in the same run, both driven through their API
//! sockets with the counter guest:
//!
//! - from process start to an API socket that answers `GET /` (wall time,
//!   and the VMM's CPU time then);
//! - snapshot create time, and the two files' sizes;
//! - restore latency, from the `PUT /snapshot/load` request (with
//!   `resume_vm`) to its answer, and to the guest's first serial output.
//!
//! Each figure is the median of the rounds; the VMMs alternate order.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::client::{expect_ok, request};

/// How long a VMM gets to reach each point.
const DEADLINE: Duration = Duration::from_secs(60);

/// A VMM binary that speaks Firecracker's API.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Shown in the report.
    pub name: String,
    /// The binary.
    pub binary: PathBuf,
}

/// One round's figures.
#[derive(Debug, Clone, Default)]
struct Round {
    api_ms: f64,
    api_cpu_ms: f64,
    snapshot_ms: f64,
    state_bytes: u64,
    mem_bytes: u64,
    load_ms: f64,
    first_output_ms: f64,
}

/// A spawned VMM and its console.
struct Running {
    child: Child,
    sock: PathBuf,
    console: Arc<Mutex<Vec<u8>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn err(what: impl std::fmt::Display) -> String {
    what.to_string()
}

/// CPU time of every thread of `pid` so far, in ms, from the scheduler's
/// own accounting (`/proc/PID/task/*/schedstat`, nanoseconds).
fn cpu_ms(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return f64::NAN;
    };
    let ns: u64 = tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e6
}

fn wait_until(mut f: impl FnMut() -> bool, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + DEADLINE;
    while !f() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// Starts `peer` on `sock` and waits for its API; returns it, the wall
/// time and its CPU time at that moment.
fn spawn(peer: &Peer, sock: &Path) -> Result<(Running, f64, f64), String> {
    // A killed VMM leaves its socket behind, and Firecracker will not bind
    // over one.
    let _ = std::fs::remove_file(sock);
    let t0 = Instant::now();
    let mut child = Command::new(&peer.binary)
        .arg("--api-sock")
        .arg(sock)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", peer.binary.display()))?;
    let console = Arc::new(Mutex::new(Vec::new()));
    let mut out = child.stdout.take().expect("piped");
    let sink = console.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(&buf[..n]);
        }
    });
    let run = Running {
        child,
        sock: sock.to_path_buf(),
        console,
    };
    wait_until(
        || matches!(request(sock, "GET", "/", ""), Ok((200, _))),
        "the API socket",
    )?;
    let wall = t0.elapsed().as_secs_f64() * 1e3;
    let cpu = cpu_ms(run.child.id());
    Ok((run, wall, cpu))
}

fn console_len(r: &Running) -> usize {
    r.console.lock().unwrap_or_else(|p| p.into_inner()).len()
}

/// One round for `peer` with `mem_mib` of guest RAM, in `dir`.
fn round(peer: &Peer, kernel: &Path, mem_mib: u64, dir: &Path) -> Result<Round, String> {
    let (state, mem) = (dir.join("vm.snap"), dir.join("vm.mem"));
    let _ = std::fs::remove_file(&state);
    let _ = std::fs::remove_file(&mem);
    let (vm, api_ms, api_cpu_ms) = spawn(peer, &dir.join("a.sock"))?;
    let s = &vm.sock;
    expect_ok(
        s,
        "PUT",
        "/boot-source",
        &format!(
            r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}}"#,
            kernel.display()
        ),
    )
    .map_err(err)?;
    expect_ok(
        s,
        "PUT",
        "/machine-config",
        &format!(r#"{{"vcpu_count": 1, "mem_size_mib": {mem_mib}}}"#),
    )
    .map_err(err)?;
    expect_ok(s, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#).map_err(err)?;
    wait_until(|| console_len(&vm) > 40, "the guest's output")?;
    expect_ok(s, "PATCH", "/vm", r#"{"state": "Paused"}"#).map_err(err)?;
    let t = Instant::now();
    expect_ok(
        s,
        "PUT",
        "/snapshot/create",
        &format!(
            r#"{{"snapshot_type": "Full", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
            state.display(),
            mem.display()
        ),
    )
    .map_err(err)?;
    let snapshot_ms = t.elapsed().as_secs_f64() * 1e3;
    drop(vm);
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let (state_bytes, mem_bytes) = (size(&state), size(&mem));

    let (vm, _, _) = spawn(peer, &dir.join("b.sock"))?;
    let before = console_len(&vm);
    let t = Instant::now();
    expect_ok(
        &vm.sock,
        "PUT",
        "/snapshot/load",
        &format!(
            r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}, "resume_vm": true}}"#,
            state.display(),
            mem.display()
        ),
    )
    .map_err(err)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    wait_until(|| console_len(&vm) > before, "output after the restore")?;
    let first_output_ms = t.elapsed().as_secs_f64() * 1e3;
    drop(vm);
    let _ = std::fs::remove_file(&state);
    let _ = std::fs::remove_file(&mem);
    Ok(Round {
        api_ms,
        api_cpu_ms,
        snapshot_ms,
        state_bytes,
        mem_bytes,
        load_ms,
        first_output_ms,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs the benchmark and returns the report.
pub fn run(peers: &[Peer], mem_mibs: &[u64], rounds: usize) -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!("subzero-bench-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(err)?;
    let kernel = dir.join("counter.elf");
    std::fs::write(&kernel, crate::demo::COUNTER_ELF).map_err(err)?;
    let mut results: Vec<(usize, u64, Vec<Round>)> = Vec::new();
    for &mib in mem_mibs {
        for (i, _) in peers.iter().enumerate() {
            results.push((i, mib, Vec::new()));
        }
        for r in 0..rounds {
            // Alternate which VMM goes first.
            let mut order: Vec<usize> = (0..peers.len()).collect();
            if r % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let one = round(&peers[i], &kernel, mib, &dir)
                    .map_err(|e| format!("{} with {mib} MiB: {e}", peers[i].name))?;
                let slot = results
                    .iter_mut()
                    .find(|(p, m, _)| *p == i && *m == mib)
                    .expect("made above");
                slot.2.push(one);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut out = format!(
        "subzero bench api: the counter guest through each VMM's API socket, 1 vCPU, median of {rounds} rounds\n\n"
    );
    out.push_str(&format!(
        "{:<12} {:>7} {:>10} {:>9} {:>12} {:>10} {:>11} {:>10} {:>13}\n",
        "vmm",
        "MiB",
        "api ms",
        "api cpu",
        "snapshot ms",
        "state KiB",
        "memory MiB",
        "load ms",
        "1st output ms"
    ));
    for (i, mib, rs) in &results {
        let m = |f: fn(&Round) -> f64| median(rs.iter().map(f).collect());
        out.push_str(&format!(
            "{:<12} {:>7} {:>10.2} {:>9.1} {:>12.1} {:>10.1} {:>11.1} {:>10.2} {:>13.2}\n",
            peers[*i].name,
            mib,
            m(|r| r.api_ms),
            m(|r| r.api_cpu_ms),
            m(|r| r.snapshot_ms),
            m(|r| r.state_bytes as f64 / 1024.0),
            m(|r| r.mem_bytes as f64 / (1 << 20) as f64),
            m(|r| r.load_ms),
            m(|r| r.first_output_ms),
        ));
    }
    out.push_str(
        "\napi ms: process start to a GET / that answers; api cpu: the VMM's CPU ms by then \
         (all threads, from /proc/PID/task/*/schedstat).\nload ms: PUT /snapshot/load with \
         resume_vm to its answer; 1st output ms: to the guest's first serial byte after it.\n",
    );
    Ok(out)
}
