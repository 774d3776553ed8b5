//! `subzero run`: boot a kernel, optionally with exit statistics.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use subzero::devices::virtio::mmio::lock;
use subzero::stats::clock::TickClock;
use subzero::stats::live;
use subzero::stats::report::{StatsReport, VirtioRow};
use subzero::stats::symbols::Symbols;
use subzero::vmm::config::{parse_size, DEFAULT_CMDLINE};
use subzero::vmm::device_config::{DiskConfig, EngineChoice, NetConfig, VsockConfig};
use subzero::vmm::exit::StopReason;
use subzero::vmm::hw_trace::HwTrace;
use subzero::vmm::resources::{
    BootSource, Drive, Entropy, MachineConfig, NetworkInterface, VmResources, Vsock,
};
use subzero::vmm::{build_linux, console, RunReport};

use subzero::stats::kvm::KvmStatsFds;

/// Exit status when the guest kernel panicked.
const EXIT_GUEST_PANIC: u8 = 2;
/// Exit status when a vCPU hit an exit Subzero cannot handle.
const EXIT_VCPU_ERROR: u8 = 3;
/// Exit status when the guest reset before it printed anything.
const EXIT_NEVER_STARTED: u8 = 4;

/// Output formats of the stats report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StatsFormat {
    /// A table for people.
    Table,
    /// JSON (schema subzero.stats/v1, see docs/stats.md).
    Json,
    /// Prometheus text exposition format.
    Prometheus,
}

/// Arguments of `subzero run`.
#[derive(clap::Args)]
pub struct RunArgs {
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
    #[arg(long, default_value_t = 1)]
    vcpus: u64,
    /// Print VM exit statistics when the VM ends.
    #[arg(long)]
    stats: bool,
    /// Format of the --stats report.
    #[arg(long, value_enum, default_value_t = StatsFormat::Table, requires = "stats")]
    stats_format: StatsFormat,
    /// Write the --stats report to this file instead of stderr.
    #[arg(long, value_name = "PATH", requires = "stats")]
    stats_out: Option<PathBuf>,
    /// The guest kernel's System.map, kallsyms, or unstripped ELF vmlinux, to
    /// name sampled RIPs.
    #[arg(long, value_name = "PATH")]
    symbols: Option<PathBuf>,
    /// Attach a raw disk image as a virtio-blk device (repeatable; the first
    /// is /dev/vda):
    /// path=FILE[,readonly=on][,id=NAME][,bw=BYTES/s][,iops=N][,engine=E][,queues=N].
    /// bw (e.g. 4M: 4 MiB/s) and iops limit the disk, with bursts of one
    /// second's worth; engine is auto (io_uring, or sync for an image in
    /// memory or where io_uring is refused), uring or sync; queues is the
    /// number of request queues (default: one per vCPU).
    #[arg(
        long,
        value_name = "path=FILE[,readonly=on][,id=NAME][,bw=RATE][,iops=N][,engine=E][,queues=N]",
        value_parser = parse_disk
    )]
    disk: Vec<DiskConfig>,
    /// Attach a virtio-net device on a host TAP device (created if absent):
    /// tap=NAME[,mac=XX:XX:XX:XX:XX:XX][,bw=BYTES/s][,pps=N][,queues=N]. bw
    /// and pps limit each direction, with bursts of one second's worth;
    /// queues is the number of queue pairs (default 1).
    #[arg(
        long,
        value_name = "tap=NAME[,mac=MAC][,bw=RATE][,pps=N][,queues=N]",
        value_parser = parse_net
    )]
    net: Vec<NetConfig>,
    /// Attach a virtio-vsock device; host programs connect through the Unix
    /// socket PATH (Firecracker's CONNECT <port> convention): cid=N,uds=PATH.
    #[arg(long, value_name = "cid=N,uds=PATH", value_parser = parse_vsock)]
    vsock: Option<VsockConfig>,
    /// Give the guest a host PCI device, bound to vfio-pci and isolated by
    /// the IOMMU (repeatable): path=/sys/bus/pci/devices/DDDD:BB:DD.F.
    /// README.md ("PCI passthrough") gives the host-side binding steps.
    #[arg(long = "device", value_name = "path=SYSFS_DIR", value_parser = parse_device)]
    device: Vec<PathBuf>,
    /// Attach a virtio-rng device fed from the host's getrandom(2).
    #[arg(long)]
    rng: bool,
    /// Also describe the virtio devices on the kernel command line
    /// (virtio_mmio.device=...), for kernels built with
    /// CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES that do not read them from ACPI.
    #[arg(long)]
    virtio_cmdline: bool,
    /// Serve live statistics on this Unix socket (read with `subzero stat`).
    #[arg(long, value_name = "PATH")]
    stats_socket: Option<PathBuf>,
    /// Run without the seccomp filters that confine each thread.
    #[arg(long)]
    no_seccomp: bool,
    /// How the virtio device threads are scheduled: batch (SCHED_BATCH: a
    /// device thread a guest kick wakes does not preempt the vCPU thread,
    /// so a guest sharing a host CPU with its devices hands over requests
    /// in batches) or normal.
    #[arg(long, value_enum, default_value_t = super::DeviceSched::Batch)]
    device_sched: super::DeviceSched,
    /// With --stats or --stats-socket, do not read KVM's tracepoints for
    /// the hardware exit reasons.
    #[arg(long)]
    no_trace: bool,
    /// Boot a bzImage and an initramfs as given, letting them unpack in the
    /// guest, instead of unpacking the kernel's payload and a compressed
    /// initramfs on the host (and caching the results in ~/.cache/subzero,
    /// or $SUBZERO_CACHE_DIR).
    #[arg(long)]
    no_host_decompress: bool,
}

fn parse_memory(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    DiskConfig::parse(s).map_err(|e| e.to_string())
}

fn parse_net(s: &str) -> Result<NetConfig, String> {
    NetConfig::parse(s).map_err(|e| e.to_string())
}

fn parse_device(s: &str) -> Result<PathBuf, String> {
    match s.split_once('=') {
        Some(("path", p)) if !p.is_empty() && !p.contains(',') => Ok(PathBuf::from(p)),
        Some(("path", _)) => Err(
            "path= needs one sysfs directory, e.g. path=/sys/bus/pci/devices/0000:01:00.0".into(),
        ),
        _ => Err(format!(
            "{s:?}: expected path=/sys/bus/pci/devices/DDDD:BB:DD.F (the only key --device takes)"
        )),
    }
}

fn parse_vsock(s: &str) -> Result<VsockConfig, String> {
    VsockConfig::parse(s).map_err(|e| e.to_string())
}

/// The VM the flags describe, in the configuration types the API and
/// `--config-file` use too.
fn resources(args: &RunArgs) -> anyhow::Result<VmResources> {
    if args.memory % (1 << 20) != 0 {
        anyhow::bail!(
            "--memory {} KiB is not a whole number of MiB: round it, e.g. {}M",
            args.memory >> 10,
            (args.memory >> 20).max(1)
        );
    }
    let file_name = |p: &std::path::Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string())
    };
    Ok(VmResources {
        boot_source: Some(BootSource {
            kernel_image_path: args.kernel.clone(),
            boot_args: Some(args.cmdline.clone()),
            initrd_path: args.initrd.clone(),
        }),
        machine_config: MachineConfig {
            vcpu_count: args.vcpus,
            mem_size_mib: args.memory >> 20,
            ..MachineConfig::default()
        },
        drives: args
            .disk
            .iter()
            .map(|d| Drive {
                drive_id: d.id.clone().unwrap_or_else(|| file_name(&d.path)),
                path_on_host: d.path.clone(),
                is_root_device: false,
                is_read_only: d.readonly,
                partuuid: None,
                cache_type: None,
                rate_limiter: d.rate_limiter.limits().then_some(d.rate_limiter),
                io_engine: match d.engine {
                    EngineChoice::Auto => None,
                    EngineChoice::Sync => Some("Sync".into()),
                    EngineChoice::Uring => Some("Async".into()),
                },
                num_queues: d.queues,
                socket: None,
            })
            .collect(),
        network_interfaces: args
            .net
            .iter()
            .enumerate()
            .map(|(i, n)| NetworkInterface {
                iface_id: format!("net{i}"),
                host_dev_name: n.tap.clone(),
                guest_mac: n.mac.clone(),
                rx_rate_limiter: n.rx_rate_limiter.limits().then_some(n.rx_rate_limiter),
                tx_rate_limiter: n.tx_rate_limiter.limits().then_some(n.tx_rate_limiter),
                num_queue_pairs: n.queues,
            })
            .collect(),
        vsock: args.vsock.as_ref().map(|v| Vsock {
            guest_cid: v.cid,
            uds_path: v.uds.clone(),
            vsock_id: None,
        }),
        entropy: args.rng.then(Entropy::default),
        logger: None,
        metrics: None,
    })
}

/// Runs `subzero run`.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    if !args.device.is_empty() {
        subzero::seccomp::allow_passthrough();
    }
    args.device_sched.apply();
    super::confine(args.no_seccomp)?;
    let symbols = args.symbols.as_deref().map(Symbols::load).transpose()?;
    // Opened now, so that a bad path fails before the VM runs, not after.
    let mut stats_out = args
        .stats_out
        .as_deref()
        .map(|path| open_stats_out(path, &inputs(&args)))
        .transpose()?;
    let mut cfg = resources(&args)?
        .vm_config()
        .map_err(|e| anyhow::anyhow!(e.for_cli()))?;
    cfg.devices.mmio_cmdline = args.virtio_cmdline;
    cfg.devices.passthrough = args.device.clone();
    cfg.host_unpack = !args.no_host_decompress;
    // Without id=, a disk's serial is its file name, cut to what virtio-blk
    // holds; the drive_id above only names it.
    for (disk, arg) in cfg.devices.disks.iter_mut().zip(&args.disk) {
        disk.id = arg.id.clone();
    }
    let mut machine = build_linux(&cfg, Box::new(std::io::stdout()))?;
    let stats = machine.new_stats();
    // Only when statistics are asked for: tracing costs time per exit.
    let hw = (args.stats || args.stats_socket.is_some())
        .then(|| Arc::new(Mutex::new(HwTrace::start(&mut machine, !args.no_trace))));
    let buses = machine.buses.clone();
    let pci = machine.pci.clone();
    let virtio = machine.virtio.slots.clone();
    let kvm = Arc::new(KvmStatsFds::open(&machine.vm, &machine.vcpus));
    let started = Instant::now();
    let clock = TickClock::start();
    let _server = match &args.stats_socket {
        Some(path) => {
            let (stats, buses, kvm, symbols, hw) = (
                stats.clone(),
                buses.clone(),
                kvm.clone(),
                symbols.clone(),
                hw.clone(),
            );
            Some(live::serve(
                path,
                Box::new(move || {
                    let mut report = StatsReport::build(
                        &live::current(&stats),
                        started.elapsed(),
                        clock.ns_per_tick(),
                        &buses,
                        kvm.read(),
                        symbols.as_ref(),
                    );
                    report.virtio = virtio
                        .iter()
                        .map(|s| VirtioRow::from(&s.counts()))
                        .collect();
                    add_hardware(&mut report, hw.as_deref(), &buses, symbols.as_ref());
                    report
                }),
            )?)
        }
        None => None,
    };
    console::forward_stdin(machine.serial.clone());
    console::setup_terminal();
    let report = machine.run_with_stats(stats).context("running the VM");
    console::restore_terminal();
    let report = report?;
    if let Some(hw) = &hw {
        lock(hw).finish();
    }
    if args.stats {
        let mut stats = StatsReport::build(
            &report.per_vcpu,
            report.elapsed,
            report.ns_per_tick,
            &buses,
            kvm.read(),
            symbols.as_ref(),
        );
        stats.virtio = report.virtio.iter().map(VirtioRow::from).collect();
        stats.passthrough = pci
            .as_ref()
            .map(subzero::vmm::pci::passthrough_rows)
            .unwrap_or_default();
        stats.log = subzero::logger::counts();
        add_hardware(&mut stats, hw.as_deref(), &buses, symbols.as_ref());
        let text = match args.stats_format {
            StatsFormat::Table => stats.to_table(),
            StatsFormat::Json => stats.to_json() + "\n",
            StatsFormat::Prometheus => stats.to_prometheus(),
        };
        match (&mut stats_out, &args.stats_out) {
            (Some(file), Some(path)) => write_stats_out(file, &text)
                .with_context(|| format!("writing the stats report to {}", path.display()))?,
            _ => {
                let _ = std::io::stderr().write_all(text.as_bytes());
            }
        }
    }
    Ok(outcome(&report))
}

/// Fills in the report's hardware section from the tracer, if any.
fn add_hardware(
    report: &mut StatsReport,
    hw: Option<&Mutex<HwTrace>>,
    buses: &subzero::bus::Buses,
    symbols: Option<&Symbols>,
) {
    let Some(hw) = hw else { return };
    let slide = report.rips.kaslr_slide;
    let hardware = lock(hw).report(buses, &report.exits, symbols.map(|s| (s, slide)));
    report.hardware = Some(hardware);
}

/// Every file the VM reads.
fn inputs(args: &RunArgs) -> Vec<PathBuf> {
    let mut v = vec![args.kernel.clone()];
    v.extend(args.initrd.clone());
    v.extend(args.symbols.clone());
    v.extend(args.disk.iter().map(|d| d.path.clone()));
    v
}

/// Opens the `--stats-out` file without truncating it yet, refusing any
/// file the VM reads (checked on the opened file, so a link cannot hide
/// one).
fn open_stats_out(path: &std::path::Path, inputs: &[PathBuf]) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    if path.is_dir() {
        anyhow::bail!("--stats-out {} is a directory: name a file", path.display());
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("--stats-out {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("--stats-out {}", path.display()))?;
    if meta.is_dir() {
        anyhow::bail!("--stats-out {} is a directory: name a file", path.display());
    }
    // O_NONBLOCK was only for the open (a FIFO with no reader fails at
    // once); the report is written blocking.
    // SAFETY: F_SETFL on a descriptor this function owns.
    unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::F_SETFL, 0) };
    for input in inputs {
        if let Ok(m) = std::fs::metadata(input) {
            if m.dev() == meta.dev() && m.ino() == meta.ino() {
                anyhow::bail!(
                    "--stats-out {} is {}, which the VM reads: refusing to overwrite it; \
                     choose another file",
                    path.display(),
                    input.display()
                );
            }
        }
    }
    Ok(file)
}

/// Replaces the contents of the `--stats-out` file with `text`.
fn write_stats_out(file: &mut std::fs::File, text: &str) -> std::io::Result<()> {
    if file.metadata()?.is_file() {
        file.set_len(0)?;
    }
    file.write_all(text.as_bytes())
}

/// Maps how the VM ended to a message and an exit status.
pub fn outcome(report: &RunReport) -> ExitCode {
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
    if report.console_bytes == 0 && matches!(stop.reason, StopReason::Reset(_)) {
        let how = match &stop.reason {
            StopReason::Reset(how) => *how,
            _ => "",
        };
        eprintln!(
            "subzero: the guest reset ({how}) before it printed anything: it never started. \
             Check that --kernel is an x86_64 Linux kernel built for this kind of boot, that \
             --memory is enough for it and its initrd, and that --cmdline has console=ttyS0"
        );
        return ExitCode::from(EXIT_NEVER_STARTED);
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
        StopReason::Stopped => ExitCode::SUCCESS,
    }
}
