//! Guest console output on its way to the host: the UART puts bytes in a
//! bounded queue without ever blocking, and a thread of its own writes them
//! out. A stdout that blocks (a full pipe, a stopped terminal) then holds up
//! only that thread, never a vCPU holding the UART's lock. When the queue
//! is full, new bytes are dropped and counted.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes held for a slow console before new ones are dropped.
pub const CAPACITY: usize = 1 << 20;

#[derive(Default)]
struct State {
    queue: VecDeque<u8>,
    writing: bool,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when bytes arrive, when a write ends, and on close.
    cond: Condvar,
    dropped: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The queue and its writer thread; clones share them. The thread ends
/// when the last clone is dropped, after writing what is queued.
#[derive(Clone)]
pub struct ConsolePipe {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

/// Closes the queue when the last [`ConsolePipe`] goes.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.cond.notify_all();
    }
}

impl ConsolePipe {
    /// A pipe writing to `out` from a thread named `console`.
    pub fn new(out: Box<dyn Write + Send>) -> std::io::Result<ConsolePipe> {
        Self::new_or_back(out).map_err(|_| std::io::Error::other("cannot start the console thread"))
    }

    /// Like [`ConsolePipe::new`], but gives `out` back if the thread cannot
    /// start.
    pub fn new_or_back(out: Box<dyn Write + Send>) -> Result<ConsolePipe, Box<dyn Write + Send>> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        // The writer moves into the thread only once it has started.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Box<dyn Write + Send>>(1);
        let spawned = std::thread::Builder::new()
            .name("console".into())
            .spawn(move || {
                crate::seccomp::enter_or_exit(crate::seccomp::ThreadKind::Console);
                let Ok(mut out) = rx.recv() else { return };
                loop {
                    let chunk: Vec<u8> = {
                        let mut st = s.lock();
                        while st.queue.is_empty() && !st.closed {
                            st = s.cond.wait(st).unwrap_or_else(|p| p.into_inner());
                        }
                        if st.queue.is_empty() {
                            return;
                        }
                        st.writing = true;
                        st.queue.drain(..).collect()
                    };
                    // A closed or failing console must not stop the guest.
                    let _ = out.write_all(&chunk).and_then(|()| out.flush());
                    s.lock().writing = false;
                    s.cond.notify_all();
                }
            });
        if spawned.is_err() {
            return Err(out);
        }
        if let Err(e) = tx.send(out) {
            return Err(e.0);
        }
        Ok(ConsolePipe {
            _owner: Arc::new(Owner(shared.clone())),
            shared,
        })
    }

    /// Queues `bytes`; what does not fit is dropped and counted.
    pub fn push(&self, bytes: &[u8]) {
        let mut st = self.shared.lock();
        let room = CAPACITY.saturating_sub(st.queue.len());
        let take = bytes.len().min(room);
        st.queue.extend(&bytes[..take]);
        drop(st);
        if take < bytes.len() {
            let total = self
                .shared
                .dropped
                .fetch_add((bytes.len() - take) as u64, Ordering::Relaxed);
            log::warn!(
                "the console is not taking the guest's output: {} bytes dropped so far",
                total + (bytes.len() - take) as u64
            );
        }
        if take > 0 {
            self.shared.cond.notify_all();
        }
    }

    /// Bytes dropped because the console did not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Waits until everything queued is written, for at most `timeout`;
    /// false if the console did not take it all in time.
    pub fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        while !st.queue.is_empty() || st.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that blocks until told to go on.
    struct Gate(Arc<(Mutex<bool>, Condvar)>, Arc<Mutex<Vec<u8>>>);

    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let (open, cond) = &*self.0;
            let mut g = open.lock().unwrap();
            while !*g {
                g = cond.wait(g).unwrap();
            }
            self.1.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_blocked_console_never_blocks_the_writer_and_drops_what_does_not_fit() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let pipe = ConsolePipe::new(Box::new(Gate(gate.clone(), seen.clone()))).unwrap();
        let t = Instant::now();
        for _ in 0..3 {
            pipe.push(&vec![b'x'; CAPACITY]);
        }
        assert!(t.elapsed() < Duration::from_secs(1), "push blocked");
        assert!(
            !pipe.drain(Duration::from_millis(50)),
            "a blocked console drained"
        );
        assert!(pipe.dropped() >= CAPACITY as u64);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        assert!(pipe.drain(Duration::from_secs(5)));
        let got = seen.lock().unwrap().len() as u64;
        assert_eq!(got + pipe.dropped(), 3 * CAPACITY as u64);
    }

    #[test]
    fn order_is_kept_and_drain_waits_for_the_last_byte() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new((Mutex::new(true), Condvar::new()));
        let pipe = ConsolePipe::new(Box::new(Gate(gate, seen.clone()))).unwrap();
        for i in 0..10_000u32 {
            pipe.push(&i.to_le_bytes());
        }
        assert!(pipe.drain(Duration::from_secs(5)));
        let want: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
        assert_eq!(*seen.lock().unwrap(), want);
        assert_eq!(pipe.dropped(), 0);
    }
}
