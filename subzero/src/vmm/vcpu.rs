//! The vCPU thread: KVM_RUN, dispatch, count, repeat, until the VM stops.

use kvm_ioctls::VcpuFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};

use super::exit::{dispatch, Buses, ExitKind, Handled, Outcome, StopReason};
use crate::stats::clock::ticks;
use crate::stats::VcpuStats;

/// Exits between two guest RIP samples (each sample costs a KVM_GET_REGS).
pub const RIP_SAMPLE_PERIOD: u64 = 64;

/// A vCPU's accounting, shared with readers while the VM runs.
pub type SharedStats = Arc<Mutex<VcpuStats>>;

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

fn lock(stats: &SharedStats) -> std::sync::MutexGuard<'_, VcpuStats> {
    stats.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs one vCPU until the VM stops, accounting every exit into `stats`.
pub fn run(
    index: usize,
    mut fd: VcpuFd,
    buses: Arc<Buses>,
    signal: Arc<StopSignal>,
    stats: SharedStats,
) {
    lock(&stats).rip_sample_period = RIP_SAMPLE_PERIOD;
    let mut exits: u64 = 0;
    let mut left_guest = ticks();
    while !signal.stopping() {
        let entered = ticks();
        let result = fd.run();
        let exited = ticks();
        let handled = match result {
            Ok(exit) => dispatch(exit, &buses),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Handled {
                kind: ExitKind::Interrupted,
                target: None,
                outcome: Outcome::Continue,
            },
            Err(e) => Handled {
                kind: ExitKind::Other,
                target: None,
                outcome: Outcome::Stop(StopReason::Unhandled(format!("KVM_RUN failed: {e}"))),
            },
        };
        let handling = ticks().wrapping_sub(exited);
        exits += 1;
        let rip = (exits % RIP_SAMPLE_PERIOD == 0)
            .then(|| fd.get_regs().ok().map(|r| r.rip))
            .flatten();
        {
            let mut s = lock(&stats);
            s.guest_ticks += exited.wrapping_sub(entered);
            s.vmm_ticks += entered.wrapping_sub(left_guest);
            s.record(handled.kind, handled.target, handling);
            if let Some(rip) = rip {
                s.sample_rip(rip);
            }
        }
        left_guest = exited;
        if let Outcome::Stop(reason) = handled.outcome {
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
    let lstar = read_lstar(&fd);
    let mut s = lock(&stats);
    s.vmm_ticks += ticks().wrapping_sub(left_guest);
    s.lstar = lstar;
}

/// The guest's MSR_LSTAR (its syscall entry point), if set.
fn read_lstar(fd: &VcpuFd) -> Option<u64> {
    const MSR_LSTAR: u32 = 0xc000_0082;
    let mut msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
        index: MSR_LSTAR,
        ..Default::default()
    }])
    .ok()?;
    match fd.get_msrs(&mut msrs) {
        Ok(1) => Some(msrs.as_slice()[0].data).filter(|&v| v != 0),
        _ => None,
    }
}
