//! `subzero --api-sock PATH` and `subzero --no-api --config-file FILE`:
//! Firecracker's command line. A VMM that serves Firecracker's API on a
//! Unix socket, boots the VM of a config file, or both.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use subzero::api::server;
use subzero::vmm::actions::{ActionType, VmmAction};
use subzero::vmm::controller::{read_config_file, Controller};
use subzero::vmm::{console, event_loop};

/// Firecracker's flags. Those Subzero has no use for are accepted, so that
/// tools that spawn Firecracker can spawn Subzero, and said to be ignored.
#[derive(clap::Args, Debug, Default)]
pub struct VmmArgs {
    /// Serve Firecracker's API on this Unix socket.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// The VMM's name, reported by `GET /`.
    #[arg(long, default_value = "anonymous-instance")]
    pub id: String,
    /// Boot the VM this Firecracker JSON config file describes.
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Serve no API (needs --config-file).
    #[arg(long, requires = "config_file")]
    pub no_api: bool,
    /// Run without the seccomp filters that confine each thread (as
    /// Firecracker's --no-seccomp).
    #[arg(long)]
    pub no_seccomp: bool,
    /// How the virtio device threads are scheduled (as `run
    /// --device-sched`): batch or normal.
    #[arg(long, value_enum, default_value_t = super::DeviceSched::Batch)]
    pub device_sched: super::DeviceSched,
    /// Read KVM's tracepoints, so that `GET /stats` has the hardware exit
    /// reasons (as `run --stats` does).
    #[arg(long)]
    pub trace_exits: bool,
    /// Log level: Error, Warning, Info, Debug, Trace or Off.
    #[arg(long, value_name = "LEVEL", value_parser = parse_level)]
    pub level: Option<log::LevelFilter>,
    /// Write the log here instead of stderr.
    #[arg(long, value_name = "PATH")]
    pub log_path: Option<PathBuf>,
    /// Accepted for Firecracker compatibility; ignored.
    #[arg(long, hide = true)]
    pub show_level: bool,
    /// Accepted for Firecracker compatibility; ignored.
    #[arg(long, hide = true)]
    pub show_log_origin: bool,
    /// Accepted for Firecracker compatibility; ignored.
    #[arg(long, hide = true, value_name = "US")]
    pub start_time_us: Option<u64>,
    /// Accepted for Firecracker compatibility; ignored.
    #[arg(long, hide = true, value_name = "US")]
    pub start_time_cpu_us: Option<u64>,
    /// Accepted for Firecracker compatibility; ignored.
    #[arg(long, hide = true, value_name = "US")]
    pub parent_cpu_time_us: Option<u64>,
    /// Accepted for Firecracker compatibility; ignored.
    #[arg(long, hide = true)]
    pub boot_timer: bool,
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    subzero::logger::parse_level(s)
}

impl VmmArgs {
    /// Whether any of Firecracker's mode flags was given.
    pub fn wanted(&self) -> bool {
        self.api_sock.is_some() || self.config_file.is_some()
    }
}

/// Runs the VMM until its guest stops (or forever, with only an API).
pub fn run(args: VmmArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.log_path {
        subzero::logger::set_path(path)?;
    }
    args.device_sched.apply();
    super::confine(args.no_seccomp)?;
    let mut ctl = Controller::new(args.id.clone(), Box::new(|| Box::new(std::io::stdout())))
        .context("creating the VMM's eventfd")?;
    ctl.trace_exits = args.trace_exits;
    ctl.on_start = Some(Box::new(|vm| {
        console::forward_stdin(vm.serial.clone());
        console::setup_terminal();
    }));
    let (requests, _socket) = match (&args.api_sock, args.no_api) {
        (Some(path), false) => {
            let (listener, socket) = server::bind(path)?;
            (Some(server::serve(listener)?), Some(socket))
        }
        _ => (None, None),
    };
    if let Some(path) = &args.config_file {
        let resources = read_config_file(path).map_err(|e| anyhow::anyhow!("--config-file {e}"))?;
        ctl.configure(resources);
        ctl.handle(VmmAction::Action(ActionType::InstanceStart))
            .map_err(|e| anyhow::anyhow!("--config-file {}: {e}", path.display()))?;
    }
    let result = event_loop::run(ctl, requests);
    console::restore_terminal();
    let ctl = result?;
    Ok(match ctl.report() {
        Some(report) => super::run::outcome(report),
        None => ExitCode::SUCCESS,
    })
}
