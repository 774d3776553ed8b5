//! `subzero bench exits`: the exit-cost benchmark.

use std::process::ExitCode;
use std::time::Instant;

use subzero::bench;

/// Arguments of `subzero bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    what: What,
    /// Exits per run.
    #[arg(long, default_value_t = 20_000)]
    exits: u64,
    /// Rounds per case (the median is reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// Benchmarks.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum What {
    /// The round trip of each VM exit kind, against a raw kvm-ioctls loop.
    Exits,
}

/// Runs `subzero bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let What::Exits = args.what;
    let started = Instant::now();
    let results = bench::run(args.exits, args.rounds)?;
    print!(
        "{}",
        bench::table(&results, args.exits, args.rounds, started.elapsed())
    );
    Ok(ExitCode::SUCCESS)
}
