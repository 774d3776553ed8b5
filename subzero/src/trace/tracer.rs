//! The tracer: each vCPU thread opens KVM's tracepoints for itself before
//! its first KVM_RUN ([`Attacher::attach_this_thread`]); one reader thread
//! drains every vCPU's ring and hands the decoded events to a sink.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::events::{Event, Schema};
use super::format::kvm_events_dir;
use super::ring::{open_tracepoint, Record, Ring};

/// How often the reader looks at rings that have not reached their
/// wakeup mark.
const POLL: Duration = Duration::from_millis(100);

/// One event and when it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamped {
    /// Nanoseconds on perf's clock.
    pub time: u64,
    /// The event.
    pub event: Event,
}

/// Takes each batch of one vCPU's events, in order: (vCPU index, events,
/// records the kernel dropped before them).
pub type Sink = Box<dyn FnMut(usize, &[Stamped], u64) + Send>;

/// Why there is no tracing; the message says what is missing and how to
/// enable it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

struct Shared {
    schema: Schema,
    ids: Vec<u64>,
    new_rings: Mutex<Vec<(usize, Ring)>>,
    stop: AtomicBool,
    failure: Mutex<Option<String>>,
    attached: AtomicU64,
}

/// A running tracer.
pub struct Tracer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Given to each vCPU thread, which attaches itself before it first runs.
#[derive(Clone)]
pub struct Attacher(Arc<Shared>);

fn paranoid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Says what a failed perf_event_open on a tracepoint means.
pub fn explain(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => format!(
            "perf_event_open on kvm:kvm_exit was refused ({e}): it needs CAP_PERFMON or root, \
             or `sysctl kernel.perf_event_paranoid=-1` (now {})",
            paranoid()
        ),
        Some(libc::ENOSYS) => {
            "this kernel has no perf_event_open (built without CONFIG_PERF_EVENTS)".into()
        }
        Some(libc::ENOENT | libc::ENODEV | libc::EINVAL) => {
            format!("the kernel refused KVM's tracepoints ({e}): built without CONFIG_TRACEPOINTS?")
        }
        _ => format!("perf_event_open on KVM's tracepoints failed: {e}"),
    }
}

impl Tracer {
    /// Reads the event formats from tracefs, checks that this process may
    /// open them, and starts the reader thread.
    pub fn start(sink: Sink) -> Result<Tracer, Unavailable> {
        let dir = kvm_events_dir().map_err(|e| Unavailable(e.to_string()))?;
        let schema = Schema::load(&dir).map_err(|e| Unavailable(e.to_string()))?;
        for needed in ["kvm_exit", "kvm_entry"] {
            if !schema.has(needed) {
                return Err(Unavailable(format!(
                    "{} has no {needed} event: this kernel cannot report hardware exits",
                    dir.display()
                )));
            }
        }
        let ids: Vec<u64> = schema.found.iter().map(|(_, id)| *id).collect();
        // A trial open here, so that a refusal is one message now rather
        // than one per vCPU later.
        open_tracepoint(ids[0], 4096).map_err(|e| Unavailable(explain(&e)))?;
        let shared = Arc::new(Shared {
            schema,
            ids,
            new_rings: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            failure: Mutex::new(None),
            attached: AtomicU64::new(0),
        });
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("hw-trace".into())
            .spawn(move || {
                crate::seccomp::enter_or_exit(crate::seccomp::ThreadKind::Trace);
                read_loop(&for_thread, sink)
            })
            .map_err(|e| Unavailable(format!("starting the trace reader: {e}")))?;
        Ok(Tracer {
            shared,
            thread: Some(thread),
        })
    }

    /// What vCPU threads attach with.
    pub fn attacher(&self) -> Attacher {
        Attacher(self.shared.clone())
    }

    /// vCPU threads attached so far.
    pub fn attached(&self) -> u64 {
        self.shared.attached.load(Ordering::SeqCst)
    }

    /// Why some vCPU thread could not attach, if one could not.
    pub fn failure(&self) -> Option<String> {
        lock(&self.shared.failure).clone()
    }

    /// Stops the reader after a last drain of every ring.
    pub fn finish(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Attacher {
    /// Opens the tracepoints for the calling thread (a vCPU thread, before
    /// its first KVM_RUN). A failure is logged once and kept for the
    /// report; the vCPU runs on untraced.
    pub fn attach_this_thread(&self, vcpu: usize) {
        match Ring::open(&self.0.ids) {
            Ok(ring) => {
                lock(&self.0.new_rings).push((vcpu, ring));
                self.0.attached.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                let why = format!("vCPU {vcpu}: {}", explain(&e));
                log::warn!("hardware exit tracing: {why}");
                lock(&self.0.failure).get_or_insert(why);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read_loop(shared: &Shared, mut sink: Sink) {
    let mut rings: Vec<(usize, Ring)> = Vec::new();
    let mut batch: Vec<Stamped> = Vec::new();
    loop {
        let stopping = shared.stop.load(Ordering::SeqCst);
        rings.append(&mut lock(&shared.new_rings));
        for (vcpu, ring) in rings.iter_mut() {
            let mut lost = 0;
            ring.drain(|r| match r {
                Record::Sample { time, raw } => {
                    if let Some(event) = shared.schema.decode(raw) {
                        batch.push(Stamped { time, event });
                    }
                }
                Record::Lost(n) => lost += n,
            });
            if !batch.is_empty() || lost > 0 {
                sink(*vcpu, &batch, lost);
                batch.clear();
            }
        }
        if stopping {
            return;
        }
        wait(&rings);
    }
}

/// Waits until some ring reaches its wakeup mark, or [`POLL`].
fn wait(rings: &[(usize, Ring)]) {
    let mut fds: Vec<libc::pollfd> = rings
        .iter()
        .map(|(_, r)| libc::pollfd {
            fd: r.fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    if fds.is_empty() {
        std::thread::sleep(POLL);
        return;
    }
    // SAFETY: fds is a valid array of fds.len() pollfds.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, POLL.as_millis() as i32) };
    // A ring whose thread has exited stays readable (POLLHUP): do not spin
    // on it.
    if n > 0 && fds.iter().all(|p| p.revents & libc::POLLHUP != 0) {
        std::thread::sleep(POLL);
    }
}
