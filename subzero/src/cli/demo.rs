//! `subzero demo`: the embedded guests and their exit reports.

use std::process::ExitCode;

use subzero::demo;

/// Requests the virtio guest makes in the demo.
const VIRTIO_REQUESTS: u64 = 32;
/// Bytes per request.
const VIRTIO_LEN: u64 = 64;

/// Arguments of `subzero demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Run without the seccomp filters that confine each thread.
    #[arg(long)]
    no_seccomp: bool,
}

/// Runs `subzero demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    super::confine(args.no_seccomp)?;
    println!("subzero demo: starting the embedded guest; its serial output follows.\n");
    let report = demo::run(true)?;
    print!("{report}");
    let mut problems = report.problems();
    if problems.is_empty() {
        println!("\nEvery exit the guest was asked to make reached the VMM and was handled.");
    }
    let virtio = demo::virtio::run_virtio(VIRTIO_REQUESTS, VIRTIO_LEN)?;
    print!("{virtio}");
    let virtio_problems = virtio.problems();
    if virtio_problems.is_empty() {
        println!(
            "\nEvery queue kick reached the device thread through the ioeventfd, \
             without an exit to userspace."
        );
    }
    problems.extend(virtio_problems);
    if problems.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            eprintln!("subzero demo: mismatch: {p}");
        }
        Ok(ExitCode::FAILURE)
    }
}
