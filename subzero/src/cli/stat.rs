//! `subzero stat SOCKET`: the live view of a running VM's exits.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use subzero::stats::live;

/// Arguments of `subzero stat`.
#[derive(clap::Args)]
pub struct StatArgs {
    /// The socket given to `subzero run --stats-socket`.
    socket: PathBuf,
}

/// Runs `subzero stat`.
pub fn run(args: StatArgs) -> anyhow::Result<ExitCode> {
    // SAFETY: isatty only inspects the descriptor.
    let tty = unsafe { libc::isatty(libc::STDOUT_FILENO) } == 1;
    let shown =
        live::watch(&args.socket, tty, &mut std::io::stdout().lock()).with_context(|| {
            format!(
                "reading live stats from {} (is `subzero run --stats-socket {}` running?)",
                args.socket.display(),
                args.socket.display()
            )
        })?;
    eprintln!("subzero stat: the VM ended after {shown} refreshes");
    Ok(ExitCode::SUCCESS)
}
