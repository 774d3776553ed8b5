//! The live view. `subzero run --stats-socket PATH` serves one JSON
//! [`StatsReport`] line per second to each client of a Unix socket;
//! `subzero stat PATH` reads them and shows rates, like `perf kvm stat live`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::report::{StatsReport, TargetRow};
use super::VcpuStats;
use crate::files::{bind_socket, BoundSocket};
use crate::seccomp::ThreadKind;

/// Produces the current report on demand.
pub type Snapshot = Box<dyn Fn() -> StatsReport + Send + Sync>;

/// Clients served at once; more are closed at once.
pub const MAX_CLIENTS: usize = 16;
/// A client that has not taken a line for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest line `subzero stat` takes from a server.
pub const MAX_LINE: u64 = 16 << 20;

/// A running stats server; stops, and removes its socket if it is still
/// its own, when dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    _socket: BoundSocket,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve stats on {}: {source}", path.display())]
pub struct ServeError {
    path: PathBuf,
    source: std::io::Error,
}

/// Serves snapshots on a Unix socket at `path` (replacing a stale socket,
/// never a live one).
pub fn serve(path: &Path, snapshot: Snapshot) -> Result<Server, ServeError> {
    let err = |source| ServeError {
        path: path.to_path_buf(),
        source,
    };
    let (listener, socket) = bind_socket(path, "--stats-socket").map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    let stop = Arc::new(AtomicBool::new(false));
    let snapshot = Arc::new(snapshot);
    let stop_for_thread = stop.clone();
    std::thread::Builder::new()
        .name("stats-server".into())
        .spawn(move || {
            crate::seccomp::enter_or_exit(ThreadKind::Stats);
            accept_loop(listener, snapshot, stop_for_thread)
        })
        .map_err(err)?;
    Ok(Server {
        stop,
        _socket: socket,
    })
}

fn accept_loop(listener: UnixListener, snapshot: Arc<Snapshot>, stop: Arc<AtomicBool>) {
    let clients = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                if clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                    clients.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
                let (snapshot, stop, count) = (snapshot.clone(), stop.clone(), clients.clone());
                let spawned = std::thread::Builder::new()
                    .name("stats-client".into())
                    .spawn(move || {
                        crate::seccomp::enter_inherited(ThreadKind::Stats);
                        feed(stream, &snapshot, &stop);
                        count.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    clients.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn feed(mut stream: UnixStream, snapshot: &Snapshot, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let line = serde_json::to_string(&snapshot()).unwrap_or_default();
        if writeln!(stream, "{line}").is_err() {
            return;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Rates between two snapshots.
#[derive(Debug, Clone, PartialEq)]
pub struct Rates {
    /// Seconds between the snapshots.
    pub seconds: f64,
    /// Exits per second by reason, highest first.
    pub reasons: Vec<(String, f64)>,
    /// Exits per second by target label, highest first.
    pub targets: Vec<(String, f64)>,
    /// Per virtio device: queue kicks per second through the ioeventfd
    /// (no exit) and as MMIO exits, in device order.
    pub virtio: Vec<(String, f64, f64)>,
    /// Hardware exits per second by reason (KVM's tracepoints), highest
    /// first; empty when not traced.
    pub hardware: Vec<(String, f64)>,
}

fn target_label(t: &TargetRow) -> String {
    let device = t.device.as_deref().unwrap_or("unclaimed");
    format!("{device} {} {:#x} {}", t.space, t.addr, t.access)
}

/// Computes rates from consecutive snapshots.
pub fn rates(before: &StatsReport, after: &StatsReport) -> Rates {
    let seconds = (after.elapsed_s - before.elapsed_s).max(1e-9);
    let old: BTreeMap<&str, u64> = before
        .exits
        .iter()
        .map(|r| (r.reason.as_str(), r.count))
        .collect();
    let mut reasons: Vec<(String, f64)> = after
        .exits
        .iter()
        .map(|r| {
            let d = r
                .count
                .saturating_sub(old.get(r.reason.as_str()).copied().unwrap_or(0));
            (r.reason.clone(), d as f64 / seconds)
        })
        .collect();
    let old_t: BTreeMap<String, u64> = before
        .targets
        .iter()
        .map(|t| (target_label(t), t.count))
        .collect();
    let mut targets: Vec<(String, f64)> = after
        .targets
        .iter()
        .map(|t| {
            let label = target_label(t);
            let d = t
                .count
                .saturating_sub(old_t.get(&label).copied().unwrap_or(0));
            (label, d as f64 / seconds)
        })
        .collect();
    for v in [&mut reasons, &mut targets] {
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    }
    let virtio = after
        .virtio
        .iter()
        .map(|v| {
            let old = before.virtio.iter().find(|o| o.device == v.device);
            let delta = |now: u64, then: fn(&super::report::VirtioRow) -> u64| {
                now.saturating_sub(old.map_or(0, then)) as f64 / seconds
            };
            (
                v.device.clone(),
                delta(v.eventfd_kicks, |o| o.eventfd_kicks),
                delta(v.mmio_kicks, |o| o.mmio_kicks),
            )
        })
        .collect();
    let hardware = after
        .hardware
        .as_ref()
        .filter(|h| h.status == "traced")
        .map(|h| super::hw_table::rates(before.hardware.as_ref(), h, seconds))
        .unwrap_or_default();
    Rates {
        seconds,
        reasons,
        targets,
        virtio,
        hardware,
    }
}

/// Renders one refresh of the live view.
pub fn render(r: &Rates, report: &StatsReport) -> String {
    let mut o = format!(
        "subzero stat: {:.1} s into the run, {} exits so far\n\n{:<16} {:>12}\n",
        report.elapsed_s, report.total_exits, "exit reason", "exits/s"
    );
    for (name, rate) in &r.reasons {
        o.push_str(&format!("{name:<16} {rate:>12.1}\n"));
    }
    if !r.hardware.is_empty() {
        o.push_str(&format!(
            "\n{:<22} {:>12}   (KVM's tracepoints)\n",
            "hardware exit reason", "exits/s"
        ));
        for (name, rate) in r.hardware.iter().take(10) {
            o.push_str(&format!("{name:<22} {rate:>12.1}\n"));
        }
    }
    o.push_str(&format!("\n{:<40} {:>12}\n", "top targets", "exits/s"));
    for (name, rate) in r.targets.iter().take(8) {
        o.push_str(&format!("{name:<40} {rate:>12.1}\n"));
    }
    if !r.virtio.is_empty() {
        o.push_str(&format!(
            "\n{:<16} {:>16} {:>16}\n",
            "virtio kicks/s", "via ioeventfd", "as MMIO exits"
        ));
        for (name, eventfd, mmio) in &r.virtio {
            o.push_str(&format!("{name:<16} {eventfd:>16.1} {mmio:>16.1}\n"));
        }
    }
    o
}

/// Connects to `path` and prints a refreshed view after every snapshot
/// until the VM ends. `clear` redraws in place (for terminals).
pub fn watch(path: &Path, clear: bool, out: &mut dyn Write) -> std::io::Result<usize> {
    let stream = UnixStream::connect(path)?;
    let mut reader = BufReader::new(stream);
    let mut previous: Option<StatsReport> = None;
    let mut shown = 0;
    let started = Instant::now();
    let mut raw = Vec::new();
    loop {
        raw.clear();
        // A peer that never ends a line gets MAX_LINE bytes of our memory.
        let n = (&mut reader).take(MAX_LINE).read_until(b'\n', &mut raw)?;
        if n == 0 {
            break;
        }
        if raw.last() != Some(&b'\n') && n as u64 >= MAX_LINE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the server sent a line over {} MiB", MAX_LINE >> 20),
            ));
        }
        let line = String::from_utf8_lossy(&raw);
        let Ok(report) = serde_json::from_str::<StatsReport>(&line) else {
            continue;
        };
        if let Some(before) = &previous {
            if clear {
                write!(out, "\x1b[2J\x1b[H")?;
            }
            write!(out, "{}", render(&rates(before, &report), &report))?;
            writeln!(
                out,
                "(watching for {:.0} s)\n",
                started.elapsed().as_secs_f64()
            )?;
            out.flush()?;
            shown += 1;
        }
        previous = Some(report);
    }
    Ok(shown)
}

/// Clones the current accounting of every vCPU.
pub fn current(stats: &[super::SharedStats]) -> Vec<VcpuStats> {
    stats
        .iter()
        .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::report::ReasonRow;

    fn report(elapsed_s: f64, io_out: u64) -> StatsReport {
        StatsReport {
            schema: super::super::report::SCHEMA.into(),
            elapsed_s,
            total_exits: io_out,
            exits: vec![ReasonRow {
                reason: "io-out".into(),
                count: io_out,
                share: 1.0,
                total_ns: 0,
                mean_ns: 0.0,
                p50_ns: 0,
                p99_ns: 0,
                max_ns: 0,
            }],
            targets: vec![TargetRow {
                space: "pio".into(),
                addr: 0x3f8,
                device: Some("serial".into()),
                access: "write".into(),
                count: io_out,
                total_ns: 0,
                mean_ns: 0.0,
            }],
            vcpus: vec![],
            kvm: None,
            rips: super::super::report::RipSamples {
                sample_period: 64,
                top: vec![],
                kaslr_slide: 0,
            },
            virtio: vec![],
            passthrough: vec![],
            log: vec![],
            hardware: None,
        }
    }

    #[test]
    fn rates_are_deltas_over_time() {
        let r = rates(&report(1.0, 100), &report(3.0, 700));
        assert_eq!(r.reasons, vec![("io-out".to_string(), 300.0)]);
        assert_eq!(
            r.targets,
            vec![("serial pio 0x3f8 write".to_string(), 300.0)]
        );
        let text = render(&r, &report(3.0, 700));
        assert!(text.contains("io-out") && text.contains("300.0"), "{text}");
        assert!(
            !text.contains("virtio"),
            "no devices, no virtio rows: {text}"
        );
    }

    #[test]
    fn virtio_kick_rates_are_deltas_too() {
        let with_kicks = |t: f64, kicks: u64| {
            let mut r = report(t, 0);
            r.virtio = vec![super::super::report::VirtioRow {
                device: "virtio-blk0".into(),
                base: 0xd000_0000,
                eventfd_kicks: kicks,
                mmio_kicks: 0,
                interrupts: kicks,
                needs_reset: 0,
                throttled: 0,
                completed: kicks,
            }];
            r
        };
        let r = rates(&with_kicks(1.0, 50), &with_kicks(2.0, 250));
        assert_eq!(r.virtio, vec![("virtio-blk0".to_string(), 200.0, 0.0)]);
        let text = render(&r, &with_kicks(2.0, 250));
        assert!(
            text.contains("virtio-blk0") && text.contains("200.0"),
            "{text}"
        );
    }

    #[test]
    fn serve_and_watch_over_a_socket() {
        let path = std::env::temp_dir().join(format!("subzero-live-{}.sock", std::process::id()));
        let t0 = Instant::now();
        let server = serve(
            &path,
            Box::new(move || {
                let s = t0.elapsed().as_secs_f64();
                report(s, (s * 1000.0) as u64)
            }),
        )
        .unwrap();
        let reader = std::thread::spawn({
            let path = path.clone();
            move || {
                let mut out = Vec::new();
                let stream = UnixStream::connect(&path).unwrap();
                let mut lines = BufReader::new(stream).lines();
                for _ in 0..2 {
                    let line = lines.next().unwrap().unwrap();
                    out.push(serde_json::from_str::<StatsReport>(&line).unwrap());
                }
                out
            }
        });
        let snaps = reader.join().unwrap();
        drop(server);
        assert!(snaps[1].elapsed_s > snaps[0].elapsed_s);
        let r = rates(&snaps[0], &snaps[1]);
        assert!((900.0..1100.0).contains(&r.reasons[0].1), "{r:?}");
        assert!(!path.exists(), "socket removed on drop");
    }
}
