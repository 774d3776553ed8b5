//! The vCPU thread: KVM_RUN, dispatch, count, repeat, until the VM stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};

use kvm_ioctls::VcpuFd;

use super::exit::{dispatch, Buses, ExitKind, Outcome, StopReason};

/// Exits of one vCPU, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitCounts([u64; ExitKind::ALL.len()]);

impl ExitCounts {
    fn slot(kind: ExitKind) -> usize {
        ExitKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
    }
    /// Counts one exit.
    pub fn add(&mut self, kind: ExitKind) {
        self.0[Self::slot(kind)] += 1;
    }
    /// Exits of `kind`.
    pub fn get(&self, kind: ExitKind) -> u64 {
        self.0[Self::slot(kind)]
    }
    /// All exits.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    /// Adds another vCPU's counts to these.
    pub fn merge(&mut self, other: &ExitCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }
}

/// Why and where the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmStop {
    /// The reason.
    pub reason: StopReason,
    /// The vCPU that stopped it.
    pub vcpu: usize,
    /// Its RIP, when the stop was an unhandled exit or an error.
    pub rip: Option<u64>,
}

/// Shared between the vCPU threads and the thread waiting for the VM.
#[derive(Default)]
pub struct StopSignal {
    stopping: AtomicBool,
    first: Mutex<Option<VmStop>>,
    cond: Condvar,
}

impl StopSignal {
    /// Records why the VM stops; the first caller wins.
    pub fn stop(&self, stop: VmStop) {
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(stop);
        }
        self.stopping.store(true, Ordering::SeqCst);
        self.cond.notify_all();
    }

    /// Whether the VM is stopping.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Blocks until some vCPU stops the VM.
    pub fn wait(&self) -> VmStop {
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(stop) = first.clone() {
                return stop;
            }
            first = self.cond.wait(first).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The signal used to kick a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Installs a no-op handler for [`kick_signal`], so that the signal only
/// interrupts KVM_RUN (EINTR) instead of killing the process.
pub fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
        if let Err(e) = vmm_sys_util::signal::register_signal_handler(kick_signal(), noop) {
            log::warn!("cannot install the vCPU kick handler: {e}");
        }
    });
}

/// Runs one vCPU until the VM stops. Returns its exit counts.
pub fn run(index: usize, mut fd: VcpuFd, buses: Arc<Buses>, signal: Arc<StopSignal>) -> ExitCounts {
    let mut counts = ExitCounts::default();
    while !signal.stopping() {
        let outcome = match fd.run() {
            Ok(exit) => {
                let (kind, outcome) = dispatch(exit, &buses);
                counts.add(kind);
                outcome
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                counts.add(ExitKind::Interrupted);
                Outcome::Continue
            }
            Err(e) => Outcome::Stop(StopReason::Unhandled(format!("KVM_RUN failed: {e}"))),
        };
        if let Outcome::Stop(reason) = outcome {
            let rip = match reason {
                StopReason::Unhandled(_) | StopReason::Crash => fd.get_regs().ok().map(|r| r.rip),
                _ => None,
            };
            signal.stop(VmStop {
                reason,
                vcpu: index,
                rip,
            });
        }
    }
    counts
}
