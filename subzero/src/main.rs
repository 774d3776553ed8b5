//! The `subzero` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use subzero::demo;
use subzero::vmm::config::{parse_size, DEFAULT_CMDLINE};
use subzero::vmm::exit::StopReason;
use subzero::vmm::{build_linux, console, RunReport, VmConfig};

/// Exit status when the guest kernel panicked.
const EXIT_GUEST_PANIC: u8 = 2;
/// Exit status when a vCPU hit an exit Subzero cannot handle.
const EXIT_VCPU_ERROR: u8 = 3;

#[derive(Parser)]
#[command(
    name = "subzero",
    version,
    about = "A KVM virtual machine monitor that shows you every VM exit"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a Linux kernel with the serial console on this terminal.
    ///
    /// Exit status: 0 when the guest powers off or reboots, 1 when the VM
    /// cannot be built, 2 when the guest kernel panics, 3 when a vCPU hits an
    /// exit Subzero cannot handle.
    Run(RunArgs),
    /// Run a tiny embedded guest (no files needed) and report its VM exits.
    Demo,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kernel image: a bzImage (e.g. /boot/vmlinuz-*) or an ELF vmlinux.
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
    /// Initial ramdisk (initramfs) to load.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Guest memory: a number with K, M, G or T (plain numbers are MiB).
    #[arg(long, default_value = "256M", value_parser = parse_memory)]
    memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64))]
    vcpus: u64,
}

fn parse_memory(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Demo => demo_cmd(),
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

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let cfg = VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        memory: args.memory,
        vcpus: args.vcpus,
    };
    let machine = build_linux(&cfg, Box::new(std::io::stdout()))?;
    console::forward_stdin(machine.serial.clone());
    console::setup_terminal();
    let report = machine.run().context("running the VM");
    console::restore_terminal();
    Ok(outcome(&report?))
}

/// Maps how the VM ended to a message and an exit status.
fn outcome(report: &RunReport) -> ExitCode {
    let stop = &report.stop;
    let rip = stop
        .rip
        .map(|r| format!(" at RIP {r:#x}"))
        .unwrap_or_default();
    if let Some(panic) = &report.panic {
        if matches!(stop.reason, StopReason::Reset(_) | StopReason::Crash) {
            eprintln!("subzero: guest kernel panicked: {panic}");
            return ExitCode::from(EXIT_GUEST_PANIC);
        }
    }
    match &stop.reason {
        StopReason::PowerOff => {
            log::info!("guest powered off");
            ExitCode::SUCCESS
        }
        StopReason::Reset(how) => {
            log::info!("guest reset: {how}");
            ExitCode::SUCCESS
        }
        StopReason::Crash => {
            eprintln!(
                "subzero: guest crashed (KVM crash event) on vCPU {}{rip}",
                stop.vcpu
            );
            ExitCode::from(EXIT_GUEST_PANIC)
        }
        StopReason::Unhandled(what) => {
            eprintln!("subzero: vCPU {} stopped: {what}{rip}", stop.vcpu);
            ExitCode::from(EXIT_VCPU_ERROR)
        }
    }
}

fn demo_cmd() -> anyhow::Result<ExitCode> {
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
