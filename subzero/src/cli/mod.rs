//! The command-line front end: one module per command.

pub mod bench;
pub mod demo;
pub mod jail;
pub mod run;
pub mod stat;
pub mod vmm;

use subzero::seccomp::{self, ThreadKind};

/// How the virtio device threads are scheduled (`--device-sched`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceSched {
    /// SCHED_BATCH: a device thread woken by a guest kick does not preempt
    /// the vCPU thread, which goes on adding requests the device then
    /// serves together.
    #[default]
    Batch,
    /// The host's ordinary scheduling: a woken device thread may preempt.
    Normal,
}

impl DeviceSched {
    /// Applies to the device threads started from now on.
    pub fn apply(self) {
        subzero::devices::virtio::worker::set_batch_scheduling(self == DeviceSched::Batch);
    }
}

/// Confines the process with Subzero's seccomp filters (see
/// `subzero::seccomp`): compiles them, and filters the calling (main)
/// thread; every thread started afterwards filters itself as it starts.
/// With `off` (`--no-seccomp`) nothing is filtered.
pub fn confine(off: bool) -> anyhow::Result<()> {
    if off {
        log::info!("--no-seccomp: no seccomp filters; Subzero runs unconfined");
        return Ok(());
    }
    seccomp::install()?;
    seccomp::on_violation(subzero::vmm::console::restore_terminal);
    seccomp::enter(ThreadKind::Vmm)?;
    Ok(())
}
