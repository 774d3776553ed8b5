//! The main thread's end of a vCPU thread: it sends a command, kicks the
//! thread out of KVM_RUN, and waits for the answer. The vCPU is running,
//! paused, or exited.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::signal::Killable;

use super::vcpu::{kick_signal, VcpuCommand, VcpuReply, VcpuRunner, VcpuSetup};
use crate::arch::x86_64::vcpu_state::VcpuState;

/// How long a vCPU gets to answer a command.
pub const VCPU_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a vCPU is, as the main thread last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuRunState {
    /// In or around KVM_RUN.
    Running,
    /// Out of KVM_RUN, waiting for commands.
    Paused,
    /// Its thread is gone.
    Exited,
}

/// A command a vCPU did not carry out.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// No answer in time.
    #[error("vCPU {0} did not answer within {1:?}")]
    Timeout(usize, Duration),
    /// Its thread is gone.
    #[error("vCPU {0} has exited")]
    Gone(usize),
    /// It answered with an error.
    #[error("vCPU {0}: {1}")]
    Failed(usize, String),
}

/// A running vCPU thread.
pub struct VcpuHandle {
    index: usize,
    state: VcpuRunState,
    pending: Arc<AtomicBool>,
    commands: Sender<VcpuCommand>,
    replies: Receiver<VcpuReply>,
    thread: Option<JoinHandle<()>>,
}

impl VcpuHandle {
    /// Starts a thread for the vCPU of `setup`.
    pub fn spawn(setup: VcpuSetup) -> std::io::Result<VcpuHandle> {
        let (index, start_paused) = (setup.index, setup.start_paused);
        let pending = Arc::new(AtomicBool::new(false));
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (reply_tx, reply_rx) = mpsc::channel();
        let runner = VcpuRunner::new(setup, pending.clone(), cmd_rx, reply_tx);
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || runner.run())?;
        Ok(VcpuHandle {
            index,
            state: if start_paused {
                VcpuRunState::Paused
            } else {
                VcpuRunState::Running
            },
            pending,
            commands: cmd_tx,
            replies: reply_rx,
            thread: Some(thread),
        })
    }

    /// The vCPU's state as last commanded.
    pub fn state(&self) -> VcpuRunState {
        self.state
    }

    fn send(&mut self, cmd: VcpuCommand) -> Result<(), VcpuError> {
        // Drop answers nobody waited for (a vCPU parks itself when the VM
        // stops, and says so).
        while self.replies.try_recv().is_ok() {}
        self.commands
            .send(cmd)
            .map_err(|_| VcpuError::Gone(self.index))?;
        self.pending.store(true, Ordering::SeqCst);
        if let Some(thread) = &self.thread {
            // A kick that lands outside KVM_RUN sets immediate_exit instead,
            // so one is enough.
            let _ = thread.kill(kick_signal());
        }
        Ok(())
    }

    fn wait(&mut self, want: fn(&VcpuReply) -> bool) -> Result<VcpuReply, VcpuError> {
        let deadline = Instant::now() + VCPU_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left) {
                Ok(VcpuReply::Failed(why)) => return Err(VcpuError::Failed(self.index, why)),
                Ok(reply) if want(&reply) => return Ok(reply),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(VcpuError::Timeout(self.index, VCPU_TIMEOUT))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.state = VcpuRunState::Exited;
                    return Err(VcpuError::Gone(self.index));
                }
            }
        }
    }

    /// Takes the vCPU out of KVM_RUN and parks it.
    pub fn pause(&mut self) -> Result<(), VcpuError> {
        self.send(VcpuCommand::Pause)?;
        self.wait(|r| matches!(r, VcpuReply::Paused))?;
        self.state = VcpuRunState::Paused;
        Ok(())
    }

    /// Lets a paused vCPU run again.
    pub fn resume(&mut self) -> Result<(), VcpuError> {
        self.send(VcpuCommand::Resume)?;
        self.wait(|r| matches!(r, VcpuReply::Resumed))?;
        self.state = VcpuRunState::Running;
        Ok(())
    }

    /// The state of a paused vCPU, read on its own thread.
    pub fn save(&mut self) -> Result<VcpuState, VcpuError> {
        self.send(VcpuCommand::Save)?;
        match self.wait(|r| matches!(r, VcpuReply::Saved(_)))? {
            VcpuReply::Saved(state) => Ok(*state),
            _ => unreachable!("wait returns only the reply asked for"),
        }
    }

    /// Ends the thread and joins it; false if it did not end in time.
    pub fn exit(&mut self) -> bool {
        let _ = self.send(VcpuCommand::Exit);
        let Some(thread) = self.thread.take() else {
            return true;
        };
        let deadline = Instant::now() + VCPU_TIMEOUT;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.state = VcpuRunState::Exited;
        if !thread.is_finished() {
            log::warn!("vCPU {} did not stop within {VCPU_TIMEOUT:?}", self.index);
            return false;
        }
        if thread.join().is_err() {
            log::warn!("vCPU {} thread panicked", self.index);
        }
        true
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.exit();
    }
}
