//! `subzero demo`: the embedded guest and its exit report.

use std::process::ExitCode;

use subzero::demo;

/// Runs `subzero demo`.
pub fn run() -> anyhow::Result<ExitCode> {
    println!("subzero demo: starting the embedded guest; its serial output follows.\n");
    let report = demo::run(true)?;
    print!("{report}");
    let problems = report.problems();
    if problems.is_empty() {
        println!("\nEvery exit the guest was asked to make reached the VMM and was handled.");
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            eprintln!("subzero demo: mismatch: {p}");
        }
        Ok(ExitCode::FAILURE)
    }
}
