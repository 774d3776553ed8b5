//! `subzero bench exits`: the exit-cost benchmark.

use std::io::Write;
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
    /// Measure only these cases (repeatable; default: all).
    #[arg(long = "case", value_enum)]
    cases: Vec<CaseArg>,
    /// `bench api`: guest RAM sizes to snapshot and restore (repeatable).
    #[arg(long = "memory-mib", default_values_t = [128u64, 512])]
    memory_mib: Vec<u64>,
    /// `bench api`: also measure this Firecracker binary, in the same run.
    #[arg(long, value_name = "PATH")]
    firecracker: Option<std::path::PathBuf>,
}

/// Cases, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum CaseArg {
    /// OUT to a port handled in userspace.
    Pio,
    /// Store to MMIO handled in userspace.
    Mmio,
    /// OUT to an ioeventfd port (stays in the kernel).
    Ioeventfd,
    /// HLT without an in-kernel irqchip (exits to userspace).
    Hlt,
    /// HLT in the kernel, woken by an irqfd interrupt.
    HltWake,
}

impl From<CaseArg> for bench::Case {
    fn from(c: CaseArg) -> Self {
        match c {
            CaseArg::Pio => bench::Case::PioWrite,
            CaseArg::Mmio => bench::Case::MmioWrite,
            CaseArg::Ioeventfd => bench::Case::IoeventfdWrite,
            CaseArg::Hlt => bench::Case::Hlt,
            CaseArg::HltWake => bench::Case::HltWake,
        }
    }
}

/// Benchmarks.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum What {
    /// The round trip of each VM exit kind, against a raw kvm-ioctls loop.
    Exits,
    /// The API's start, snapshot and restore times (with --firecracker,
    /// Firecracker's too).
    Api,
}

/// Runs `subzero bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let What::Api = args.what {
        return run_api(&args);
    }
    let cases: Vec<bench::Case> = if args.cases.is_empty() {
        bench::Case::ALL.to_vec()
    } else {
        args.cases.iter().map(|&c| c.into()).collect()
    };
    let started = Instant::now();
    let mut out = std::io::stdout();
    let _ = write!(out, "{}", bench::header(args.exits, args.rounds));
    let _ = out.flush();
    bench::run(&cases, args.exits, args.rounds, &mut |r| {
        let _ = write!(out, "{}", bench::row(r));
        let _ = out.flush();
    })?;
    print!("{}", bench::footer(started.elapsed()));
    Ok(ExitCode::SUCCESS)
}

/// Runs `subzero bench api`.
fn run_api(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let mut peers = vec![bench::api::Peer {
        name: "subzero".into(),
        binary: std::env::current_exe()?,
    }];
    if let Some(fc) = &args.firecracker {
        if !fc.is_file() {
            anyhow::bail!("--firecracker {}: no such file", fc.display());
        }
        peers.push(bench::api::Peer {
            name: "firecracker".into(),
            binary: fc.clone(),
        });
    }
    let report = bench::api::run(&peers, &args.memory_mib, args.rounds)
        .map_err(|e| anyhow::anyhow!("bench api: {e}"))?;
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}
