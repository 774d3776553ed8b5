//! The `subzero` command line.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "subzero",
    version,
    about = "A KVM virtual machine monitor that shows you every VM exit",
    long_about = "A KVM virtual machine monitor that shows you every VM exit.\n\n\
        Run a subcommand, or, as Firecracker is run, give --api-sock to serve \
        Firecracker's API and/or --config-file to boot the VM a Firecracker \
        config file describes.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    vmm: cli::vmm::VmmArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a Linux kernel with the serial console on this terminal.
    ///
    /// Exit status: 0 when the guest powers off or reboots, 1 when the VM
    /// cannot be built, 2 when the guest kernel panics, 3 when a vCPU hits an
    /// exit Subzero cannot handle, 4 when the guest resets before it printed
    /// anything (it never started).
    Run(Box<cli::run::RunArgs>),
    /// Run a tiny embedded guest (no files needed) and report its VM exits.
    Demo(cli::demo::DemoArgs),
    /// Watch a running VM's exits live (its `run --stats-socket` socket).
    Stat(cli::stat::StatArgs),
    /// Benchmarks: `subzero bench exits` measures what each VM exit costs.
    Bench(cli::bench::BenchArgs),
    /// Run the VMM confined: a private root, new namespaces, rlimits, a
    /// cgroup, and an unprivileged uid with no capabilities (needs root).
    Jail(cli::jail::JailArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    subzero::logger::init(cli.vmm.level);
    let result = match cli.command {
        Some(Command::Run(args)) => cli::run::run(*args),
        Some(Command::Demo(args)) => cli::demo::run(args),
        Some(Command::Stat(args)) => cli::stat::run(args),
        Some(Command::Bench(args)) => cli::bench::run(args),
        Some(Command::Jail(args)) => cli::jail::run(args),
        None if cli.vmm.wanted() => cli::vmm::run(cli.vmm),
        None => {
            use clap::CommandFactory;
            let _ = Cli::command().print_help();
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("subzero: error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, leaving out causes whose text the
/// message above them already includes.
fn error_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    let mut last = line.clone();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !last.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        last = text;
    }
    line
}
