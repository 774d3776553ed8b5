//! The vCPU thread: KVM_RUN, dispatch, count, repeat, until the VM stops,
//! and the commands it takes between two runs: pause, resume, save or
//! restore its state, exit. [`super::vcpu_handle`] is the other end.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, Once};

use kvm_bindings::kvm_run;
use kvm_ioctls::VcpuFd;
use vmm_sys_util::eventfd::EventFd;

use super::exit::{dispatch, Buses, ExitKind, Handled, Outcome, StopReason};
use crate::arch::x86_64::vcpu_state::VcpuState;
use crate::stats::clock::ticks;
use crate::stats::VcpuStats;
use crate::trace::Attacher;

/// Exits between two guest RIP samples (each sample costs a KVM_GET_REGS).
pub const RIP_SAMPLE_PERIOD: u64 = 64;

pub use crate::stats::SharedStats;

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
    event: Option<EventFd>,
}

impl StopSignal {
    /// A signal that also makes `event` readable when the VM stops, for an
    /// event loop.
    pub fn with_event(event: EventFd) -> StopSignal {
        StopSignal {
            event: Some(event),
            ..StopSignal::default()
        }
    }

    /// Records why the VM stops; the first caller wins.
    pub fn stop(&self, stop: VmStop) {
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(stop);
        }
        self.stopping.store(true, Ordering::SeqCst);
        self.cond.notify_all();
        if let Some(event) = &self.event {
            let _ = event.write(1);
        }
    }

    /// Why the VM stopped, if it did.
    pub fn reason(&self) -> Option<VmStop> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).clone()
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

thread_local! {
    /// This thread's `kvm_run` page, for the kick handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// Installs the handler for [`kick_signal`]. It interrupts KVM_RUN (EINTR)
/// and sets the thread's `kvm_run.immediate_exit`, so that a kick that
/// lands just before KVM_RUN makes it return at once instead of being lost.
pub fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        extern "C" fn kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
            let run = KVM_RUN.with(Cell::get);
            if !run.is_null() {
                // SAFETY: the pointer is this thread's own kvm_run mapping,
                // set by its vCPU loop, which clears it before the VcpuFd
                // (and the mapping) is dropped. A volatile byte store is
                // async-signal-safe.
                unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
            }
        }
        if let Err(e) = vmm_sys_util::signal::register_signal_handler(kick_signal(), kick) {
            log::warn!("cannot install the vCPU kick handler: {e}");
        }
    });
}

fn lock(stats: &SharedStats) -> std::sync::MutexGuard<'_, VcpuStats> {
    stats.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the main thread asks of a vCPU thread.
pub enum VcpuCommand {
    /// Leave KVM_RUN and wait.
    Pause,
    /// Run again.
    Resume,
    /// Send the vCPU's state (only while paused).
    Save,
    /// Leave the thread.
    Exit,
}

/// What a vCPU thread answers.
pub enum VcpuReply {
    /// It is out of KVM_RUN and waiting.
    Paused,
    /// It runs again.
    Resumed,
    /// Its state.
    Saved(Box<VcpuState>),
    /// A command failed; the vCPU stays paused.
    Failed(String),
}

/// What a vCPU thread is made of, besides its command channels.
pub struct VcpuSetup {
    /// The vCPU's index (its APIC id).
    pub index: usize,
    /// The vCPU.
    pub fd: VcpuFd,
    /// Where its exits go.
    pub buses: Arc<Buses>,
    /// Set when any vCPU stops the VM.
    pub signal: Arc<StopSignal>,
    /// Its exit accounting.
    pub stats: SharedStats,
    /// KVM's list of MSRs to save.
    pub msr_indices: Arc<Vec<u32>>,
    /// A state to put into the vCPU before it first runs (a restore).
    pub restore: Option<Box<VcpuState>>,
    /// Start paused, waiting for Resume.
    pub start_paused: bool,
    /// Opens KVM's tracepoints for this thread before it first runs.
    pub tracer: Option<Attacher>,
}

/// The vCPU side of a [`super::vcpu_handle::VcpuHandle`].
pub struct VcpuRunner {
    index: usize,
    fd: VcpuFd,
    buses: Arc<Buses>,
    signal: Arc<StopSignal>,
    stats: SharedStats,
    msr_indices: Arc<Vec<u32>>,
    restore: Option<Box<VcpuState>>,
    tracer: Option<Attacher>,
    start_paused: bool,
    pending: Arc<AtomicBool>,
    commands: Receiver<VcpuCommand>,
    replies: Sender<VcpuReply>,
}

/// What the command loop decided.
enum Next {
    Run,
    Exit,
}

impl VcpuRunner {
    /// A runner that takes commands from `commands` after `pending` is set
    /// and answers on `replies`.
    pub fn new(
        setup: VcpuSetup,
        pending: Arc<AtomicBool>,
        commands: Receiver<VcpuCommand>,
        replies: Sender<VcpuReply>,
    ) -> VcpuRunner {
        VcpuRunner {
            index: setup.index,
            fd: setup.fd,
            buses: setup.buses,
            signal: setup.signal,
            stats: setup.stats,
            msr_indices: setup.msr_indices,
            restore: setup.restore,
            tracer: setup.tracer,
            start_paused: setup.start_paused,
            pending,
            commands,
            replies,
        }
    }

    /// Runs the vCPU until it is told to exit.
    pub fn run(mut self) {
        // Before the filter: perf_event_open is the main thread's call.
        if let Some(tracer) = self.tracer.take() {
            tracer.attach_this_thread(self.index);
        }
        crate::seccomp::enter_or_exit(crate::seccomp::ThreadKind::Vcpu);
        KVM_RUN.with(|c| c.set(self.fd.get_kvm_run()));
        if let Some(state) = self.restore.take() {
            if let Err(e) = state.restore(&self.fd) {
                self.signal.stop(VmStop {
                    reason: StopReason::Unhandled(format!("restoring vCPU {}: {e}", self.index)),
                    vcpu: self.index,
                    rip: None,
                });
            }
        }
        if !self.start_paused || matches!(self.paused(), Next::Run) {
            self.run_loop();
        }
        let lstar = read_lstar(&self.fd);
        lock(&self.stats).lstar = lstar;
        KVM_RUN.with(|c| c.set(std::ptr::null_mut()));
    }

    /// Waits for commands while out of KVM_RUN, until Resume or Exit.
    fn paused(&mut self) -> Next {
        let _ = self.replies.send(VcpuReply::Paused);
        loop {
            let Ok(cmd) = self.commands.recv() else {
                return Next::Exit;
            };
            let reply = match cmd {
                VcpuCommand::Pause => VcpuReply::Paused,
                VcpuCommand::Resume if self.signal.stopping() => {
                    VcpuReply::Failed("the VM has stopped".into())
                }
                VcpuCommand::Resume => {
                    let _ = self.replies.send(VcpuReply::Resumed);
                    return Next::Run;
                }
                VcpuCommand::Save => match VcpuState::save(&self.fd, &self.msr_indices) {
                    Ok(state) => VcpuReply::Saved(Box::new(state)),
                    Err(e) => VcpuReply::Failed(format!("vCPU {}: {e}", self.index)),
                },
                VcpuCommand::Exit => return Next::Exit,
            };
            let _ = self.replies.send(reply);
        }
    }

    /// Serves the commands that a kick announced.
    fn commands(&mut self) -> Next {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                VcpuCommand::Exit => return Next::Exit,
                VcpuCommand::Resume => {
                    let _ = self.replies.send(VcpuReply::Resumed);
                }
                VcpuCommand::Save => {
                    let _ = self
                        .replies
                        .send(VcpuReply::Failed("save needs a paused vCPU".into()));
                }
                VcpuCommand::Pause => {
                    // Tell a kvmclock guest it was stopped, so its watchdogs
                    // do not take the lost time for a soft lockup (EINVAL
                    // when the guest does not use kvmclock).
                    if let Err(e) = self.fd.kvmclock_ctrl() {
                        log::debug!("vCPU {}: KVM_KVMCLOCK_CTRL: {e}", self.index);
                    }
                    if let Next::Exit = self.paused() {
                        return Next::Exit;
                    }
                }
            }
        }
        Next::Run
    }

    /// Lets KVM finish the instruction of the last I/O or MMIO exit (an IN
    /// gets its data, RIP moves past an OUT) without running the guest
    /// further: KVM_RUN with `immediate_exit` set completes it and returns
    /// EINTR. Without this, a vCPU paused right after such an exit would
    /// be saved in the middle of an instruction.
    fn complete_pending_exit(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR => {}
            Err(e) => log::debug!("vCPU {}: completing the last exit: {e}", self.index),
            Ok(exit) => log::warn!(
                "vCPU {}: KVM ran the guest despite immediate_exit ({exit:?})",
                self.index
            ),
        }
        self.fd.set_kvm_immediate_exit(0);
    }

    /// KVM_RUN, dispatch, account, until an Exit command.
    fn run_loop(&mut self) {
        lock(&self.stats).rip_sample_period = RIP_SAMPLE_PERIOD;
        let mut exits: u64 = 0;
        let mut left_guest = ticks();
        loop {
            // Clear first, then look: a kick after the clear sets it again
            // and KVM_RUN returns at once; one before it set `pending` first.
            self.fd.set_kvm_immediate_exit(0);
            if self.pending.swap(false, Ordering::SeqCst) {
                self.complete_pending_exit();
                let vmm = ticks().wrapping_sub(left_guest);
                lock(&self.stats).vmm_ticks += vmm;
                let next = self.commands();
                left_guest = ticks();
                if let Next::Exit = next {
                    break;
                }
                continue;
            }
            if self.signal.stopping() {
                // The VM is over: wait, out of the guest, to be told to exit.
                if let Next::Exit = self.paused() {
                    break;
                }
                continue;
            }
            let entered = ticks();
            let result = self.fd.run();
            let exited = ticks();
            let handled = match result {
                Ok(exit) => dispatch(exit, &self.buses),
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
                .then(|| self.fd.get_regs().ok().map(|r| r.rip))
                .flatten();
            {
                let mut s = lock(&self.stats);
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
                    StopReason::Unhandled(_) | StopReason::Crash => {
                        self.fd.get_regs().ok().map(|r| r.rip)
                    }
                    _ => None,
                };
                self.signal.stop(VmStop {
                    reason,
                    vcpu: self.index,
                    rip,
                });
            }
        }
        lock(&self.stats).vmm_ticks += ticks().wrapping_sub(left_guest);
    }
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
