//! Device threads: an event loop (event-manager) per virtio device serving
//! its queue kicks and host-side sources, so device work never runs on a
//! vCPU thread, and a device waiting on slow host I/O holds up no other.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

use super::mmio::SharedTransport;
use crate::seccomp::ThreadKind;

/// Event data of host-side sources: `SOURCE_BASE + index`.
const SOURCE_BASE: u32 = 1 << 16;
/// Event data of the transport's DRIVER_OK event.
const ACTIVATED: u32 = u32::MAX;

/// Serves one device: its kick eventfds and its host-side sources.
pub struct DeviceWorker {
    transport: SharedTransport,
    kicks: Vec<EventFd>,
    activated: Option<EventFd>,
    sources: Vec<RawFd>,
}

impl DeviceWorker {
    /// A worker for `transport`, woken by `kicks[i]` for queue `i`.
    pub fn new(transport: SharedTransport, kicks: Vec<EventFd>) -> Self {
        let sources = transport.device().device.event_fds();
        let activated = transport.activated_event();
        let activated = activated
            .map_err(|e| log::error!("virtio: no DRIVER_OK event: {e}"))
            .ok();
        DeviceWorker {
            transport,
            kicks,
            activated,
            sources,
        }
    }

    /// The driver set DRIVER_OK: serves every ready queue once, for
    /// buffers it added (and kicked) before that.
    pub fn handle_activated(&mut self) {
        if let Some(a) = &self.activated {
            let _ = a.read();
        }
        for q in 0..self.kicks.len() {
            self.serve(q);
        }
    }

    /// Serves a kick of queue `q` (also called directly by tests).
    pub fn handle_kick(&mut self, q: usize) {
        // The eventfd counter holds the number of kicks since the last read.
        let n = self.kicks[q].read().unwrap_or(0);
        self.transport
            .counters()
            .eventfd_kicks
            .fetch_add(n, Ordering::Relaxed);
        self.serve(q);
    }

    /// Serves queue `q` if the device is active and the queue ready.
    fn serve(&mut self, q: usize) {
        // Only the device half: the registers stay free for the vCPUs.
        let mut t = self.transport.device();
        if !t.active() {
            return;
        }
        if let Err(e) = t.with_ctx(|dev, ctx| {
            if ctx.ready(q) {
                dev.process_queue(q, ctx)
            } else {
                Ok(())
            }
        }) {
            t.fail(&e);
        }
    }

    /// Finishes the device's requests in flight (before parking; also
    /// called directly by tests).
    pub fn quiesce(&mut self) {
        let mut t = self.transport.device();
        if let Err(e) = t.with_ctx(|dev, ctx| dev.quiesce(ctx)) {
            t.fail(&e);
        }
    }

    /// Serves host-side source `token` (also called directly by tests).
    pub fn handle_source(&mut self, token: usize) {
        let mut t = self.transport.device();
        if let Err(e) = t.with_ctx(|dev, ctx| dev.process_event(token, ctx)) {
            t.fail(&e);
        }
    }
}

impl MutEventSubscriber for DeviceWorker {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, k) in self.kicks.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(k, i as u32, EventSet::IN)) {
                log::error!("cannot watch a virtio queue eventfd: {e:?}");
            }
        }
        if let Some(a) = &self.activated {
            if let Err(e) = ops.add(Events::with_data(a, ACTIVATED, EventSet::IN)) {
                log::error!("cannot watch a virtio DRIVER_OK event: {e:?}");
            }
        }
        for (i, fd) in self.sources.iter().enumerate() {
            let ev = Events::with_data_raw(*fd, SOURCE_BASE + i as u32, EventSet::IN);
            if let Err(e) = ops.add(ev) {
                log::error!("cannot watch a virtio device source: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let data = events.data();
        if data == ACTIVATED {
            self.handle_activated();
        } else if data >= SOURCE_BASE {
            self.handle_source((data - SOURCE_BASE) as usize);
        } else if (data as usize) < self.kicks.len() {
            self.handle_kick(data as usize);
        }
    }
}

/// Holds a device thread between two loop turns while the VM is paused.
#[derive(Default)]
struct Gate {
    /// (asked to pause, parked).
    state: Mutex<(bool, bool)>,
    cond: Condvar,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, (bool, bool)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a pause is asked for.
    fn pausing(&self) -> bool {
        self.lock().0
    }

    /// Parks the calling device thread while a pause is asked for.
    fn wait_while_paused(&self, stop: &AtomicBool) {
        let mut g = self.lock();
        if !g.0 {
            return;
        }
        g.1 = true;
        self.cond.notify_all();
        while g.0 && !stop.load(Ordering::Acquire) {
            g = self.cond.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g.1 = false;
    }
}

/// Whether device threads run under `SCHED_BATCH` (see
/// [`set_batch_scheduling`]); on unless turned off.
static BATCH: AtomicBool = AtomicBool::new(true);

/// Whether device threads started from now on run under `SCHED_BATCH`
/// (the default). A woken SCHED_BATCH thread does not preempt the thread
/// running on its CPU, so where a vCPU thread and a device thread share a
/// host CPU, the vCPU that kicked goes on adding requests (without more
/// kicks, as the device has not turned notifications back on) and the
/// device serves them in one pass, with one interrupt. Where the device
/// thread has a CPU to itself nothing changes. Off, the host's ordinary
/// scheduling lets a woken device thread preempt the vCPU at once.
pub fn set_batch_scheduling(on: bool) {
    BATCH.store(on, Ordering::Relaxed);
}

/// Puts the calling thread under `SCHED_BATCH`, if asked for.
fn batch_if_asked() {
    if !BATCH.load(Ordering::Relaxed) {
        return;
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the sched_param we pass; pid 0 is
    // the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        let e = std::io::Error::last_os_error();
        let me = std::thread::current();
        let name = me.name().unwrap_or("a device thread");
        log::warn!("{name}: cannot run under SCHED_BATCH: {e}");
    }
}

/// How long a device thread gets to finish the work in hand and park.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The running device thread; stops when dropped.
pub struct WorkerThread {
    stop: Arc<AtomicBool>,
    wake: Arc<EventFd>,
    gate: Arc<Gate>,
    handle: Option<JoinHandle<()>>,
}

/// Wakes the loop so it sees the stop flag.
struct Waker(Arc<EventFd>);

impl MutEventSubscriber for Waker {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.0.as_ref(), EventSet::IN));
    }
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.read();
    }
}

impl WorkerThread {
    /// Starts a device thread called `name` serving `worker`, confined by
    /// the seccomp filter of `kind`.
    /// With `paused`, the thread parks before it serves anything, until
    /// [`WorkerThread::resume`].
    pub fn start(
        name: &str,
        kind: ThreadKind,
        worker: DeviceWorker,
        paused: bool,
    ) -> std::io::Result<Self> {
        type Sub = Arc<Mutex<dyn MutEventSubscriber + Send>>;
        let mut em: EventManager<Sub> =
            EventManager::new().map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        em.add_subscriber(Arc::new(Mutex::new(Waker(wake.clone()))));
        let worker = Arc::new(Mutex::new(worker));
        em.add_subscriber(worker.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(Gate::default());
        gate.lock().0 = paused;
        let (flag, parking) = (stop.clone(), gate.clone());
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                batch_if_asked();
                crate::seccomp::enter_or_exit(kind);
                while !flag.load(Ordering::Acquire) {
                    if parking.pausing() {
                        // Nothing in flight may land in guest memory while
                        // the VM is paused or saved.
                        worker.lock().unwrap_or_else(|p| p.into_inner()).quiesce();
                    }
                    parking.wait_while_paused(&flag);
                    if flag.load(Ordering::Acquire) {
                        break;
                    }
                    if let Err(e) = em.run() {
                        log::error!("virtio device loop: {e:?}");
                        break;
                    }
                }
            })?;
        Ok(WorkerThread {
            stop,
            wake,
            gate,
            handle: Some(handle),
        })
    }

    /// Stops serving: returns once the thread has finished the events in
    /// hand and parked, so the device touches neither its queues nor guest
    /// memory until [`WorkerThread::resume`]. False if it did not park in
    /// time.
    pub fn pause(&self) -> bool {
        let mut g = self.gate.lock();
        g.0 = true;
        let _ = self.wake.write(1);
        let deadline = std::time::Instant::now() + PAUSE_TIMEOUT;
        while !g.1 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            g = self
                .gate
                .cond
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Serves again.
    pub fn resume(&self) {
        self.gate.lock().0 = false;
        self.gate.cond.notify_all();
    }
}

impl Drop for WorkerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.resume();
        let _ = self.wake.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::rng::Rng;
    use crate::devices::virtio::testing::{TestDriver, DATA};

    #[test]
    fn a_paused_device_thread_serves_nothing_until_resumed() {
        let mut d = TestDriver::new(Box::new(Rng::default()));
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let worker = DeviceWorker::new(d.shared.clone(), vec![kick.try_clone().unwrap()]);
        let thread = WorkerThread::start("test-rng", ThreadKind::Rng, worker, false).unwrap();
        assert!(thread.pause(), "the thread parks");
        d.add_chain(0, &[(DATA, 16, true)]);
        kick.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(d.used(0).is_empty(), "a paused device served a request");
        thread.resume();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while d.used(0).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            d.used(0).len(),
            1,
            "the kick made while paused is served after"
        );
        drop(thread);
    }

    #[test]
    fn device_threads_run_under_sched_batch_by_default() {
        let d = TestDriver::new(Box::new(Rng::default()));
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let worker = DeviceWorker::new(d.shared.clone(), vec![kick]);
        let thread = WorkerThread::start("sz-sched-test", ThreadKind::Rng, worker, false).unwrap();
        let policy = || {
            for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
                let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                if comm.trim() == "sz-sched-test" {
                    let tid: i32 = t.file_name().to_str().unwrap().parse().unwrap();
                    // SAFETY: sched_getscheduler only reads the thread's policy.
                    return Some(unsafe { libc::sched_getscheduler(tid) });
                }
            }
            None
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while policy() != Some(libc::SCHED_BATCH) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(policy(), Some(libc::SCHED_BATCH));
        drop(thread);
    }

    #[test]
    fn a_thread_started_paused_serves_nothing_until_resumed() {
        let mut d = TestDriver::new(Box::new(Rng::default()));
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        d.add_chain(0, &[(DATA, 16, true)]);
        kick.write(1).unwrap();
        let worker = DeviceWorker::new(d.shared.clone(), vec![kick.try_clone().unwrap()]);
        let thread = WorkerThread::start("test-rng", ThreadKind::Rng, worker, true).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            d.used(0).is_empty(),
            "a thread started paused served a kick"
        );
        assert!(thread.pause(), "it is parked");
        thread.resume();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while d.used(0).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(d.used(0).len(), 1);
    }
}
