//! The command-line front end: one module per command.

pub mod bench;
pub mod demo;
pub mod jail;
pub mod run;
pub mod stat;
pub mod vmm;

use subzero::seccomp::{self, ThreadKind};

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
