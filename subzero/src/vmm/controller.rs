//! The controller: the VMM's state (not started, running, paused) and the
//! actions that change it. It runs on the main thread, in [`super::event_loop`];
//! nothing else touches the VM.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use vmm_sys_util::eventfd::EventFd;

use super::actions::{
    ActionError, ActionType, SnapshotCreate, SnapshotLoad, VmState, VmmAction, VmmData, VmmResult,
};
use super::builder::{build_linux, restore_vm, BuildError};
use super::config::ConfigError;
use super::machine::{Machine, RunReport, RunningVm};
use super::resources::{
    BootSource, DriveUpdate, MachineConfig, NetworkInterfaceUpdate, VmResources,
};
use super::snapshot::{self, SnapshotError};
use crate::arch::x86_64::boot;
use crate::devices::virtio::net::{RX_QUEUE, TX_QUEUE};
use crate::stats::clock::TickClock;
use crate::stats::kvm::KvmStatsFds;
use crate::stats::live;
use crate::stats::report::{StatsReport, VirtioRow};
use crate::vmm::hw_trace::HwTrace;

/// The Firecracker API version whose paths and bodies Subzero serves.
pub const FIRECRACKER_API_VERSION: &str = "1.7.0";

/// Where the guest's console goes.
pub type ConsoleFactory = Box<dyn FnMut() -> Box<dyn Write + Send> + Send>;

/// Called with a VM once it is built, before it runs.
pub type StartHook = Box<dyn FnMut(&RunningVm) + Send>;

/// A VM that runs or is paused.
struct Live {
    vm: RunningVm,
    kvm: Arc<KvmStatsFds>,
    hw: Option<HwTrace>,
    clock: TickClock,
    started: Instant,
}

impl Live {
    /// The exit statistics so far, as `--stats-format json` gives them.
    fn stats(&self) -> StatsReport {
        let mut report = StatsReport::build(
            &live::current(&self.vm.stats),
            self.started.elapsed(),
            self.clock.ns_per_tick(),
            &self.vm.buses,
            self.kvm.read(),
            None,
        );
        report.virtio = self
            .vm
            .virtio_counts()
            .iter()
            .map(VirtioRow::from)
            .collect();
        report.hardware = self
            .hw
            .as_ref()
            .map(|hw| hw.report(&self.vm.buses, &report.exits, None));
        report
    }
}

/// The VMM: its configuration and, once started, its VM.
pub struct Controller {
    id: String,
    resources: VmResources,
    configured: bool,
    live: Option<Live>,
    report: Option<RunReport>,
    stop_event: EventFd,
    console: ConsoleFactory,
    metrics: Option<File>,
    /// Called with the VM once it is built, before it runs (the CLI uses
    /// it to forward stdin to the console).
    pub on_start: Option<StartHook>,
    /// Read KVM's tracepoints, so that `GET /stats` has the hardware exit
    /// reasons (`--trace-exits`).
    pub trace_exits: bool,
}

const AFTER_START: &str = "The requested operation is not supported after starting the microVM.";

fn bad(e: impl std::fmt::Display) -> ActionError {
    ActionError::bad(e.to_string())
}

/// A build error as the API reports it: settings by their API names.
fn build_error(e: BuildError) -> ActionError {
    match e {
        BuildError::Config(ConfigError::TooManyVcpus(n, max)) => ActionError::bad(format!(
            "machine-config.vcpu_count: {n} is more than this host allows: at most {max}"
        )),
        BuildError::Kvm(_) | BuildError::VmIoctl(..) => ActionError::internal(e.to_string()),
        e => bad(e),
    }
}

impl Controller {
    /// A VMM with nothing configured, named `id`, whose guest console goes
    /// where `console` says.
    pub fn new(id: String, console: ConsoleFactory) -> std::io::Result<Controller> {
        Ok(Controller {
            id,
            resources: VmResources::default(),
            configured: false,
            live: None,
            report: None,
            stop_event: EventFd::new(libc::EFD_NONBLOCK)?,
            console,
            metrics: None,
            on_start: None,
            trace_exits: false,
        })
    }

    /// Readable when the guest stops the VM.
    pub fn stop_event(&self) -> &EventFd {
        &self.stop_event
    }

    /// How the VM ended, once it has.
    pub fn report(&self) -> Option<&RunReport> {
        self.report.as_ref()
    }

    /// Takes a whole configuration (`--config-file`).
    pub fn configure(&mut self, resources: VmResources) {
        self.resources = resources;
        self.configured = true;
    }

    /// "Not started", "Running" or "Paused", as Firecracker says it.
    pub fn state_name(&self) -> &'static str {
        match &self.live {
            None => "Not started",
            Some(l) if l.vm.is_paused() => "Paused",
            Some(_) => "Running",
        }
    }

    /// The guest stopped the VM: finish it and keep its report.
    pub fn vm_stopped(&mut self) {
        let _ = self.stop_event.read();
        if let Some(live) = self.live.take() {
            self.report = Some(live.vm.finish());
        }
    }

    fn before_start(&mut self) -> Result<(), ActionError> {
        if self.live.is_some() || self.report.is_some() {
            return Err(ActionError::bad(AFTER_START));
        }
        self.configured = true;
        Ok(())
    }

    fn live(&mut self) -> Result<&mut Live, ActionError> {
        self.live
            .as_mut()
            .ok_or_else(|| ActionError::bad("the microVM is not running: start it first"))
    }

    /// Carries out one action.
    pub fn handle(&mut self, action: VmmAction) -> VmmResult {
        use VmmAction::*;
        let json = |v: serde_json::Value| Ok(VmmData::Json(v));
        match action {
            GetInstanceInfo => json(serde_json::json!({
                "app_name": "Subzero",
                "id": self.id,
                "state": self.state_name(),
                "vmm_version": env!("CARGO_PKG_VERSION"),
            })),
            GetVersion => json(serde_json::json!({
                "firecracker_version": FIRECRACKER_API_VERSION,
                "subzero_version": env!("CARGO_PKG_VERSION"),
            })),
            GetVmConfig => json(serde_json::to_value(&self.resources).map_err(bad)?),
            GetMachineConfig => {
                json(serde_json::to_value(&self.resources.machine_config).map_err(bad)?)
            }
            GetStats => {
                let report = self.live()?.stats();
                json(serde_json::to_value(&report).map_err(bad)?)
            }
            PutMachineConfig(m) => self.set_machine(m),
            PatchMachineConfig(u) => {
                let mut m = self.resources.machine_config.clone();
                m.update(u);
                self.set_machine(m)
            }
            PutBootSource(b) => {
                self.before_start()?;
                boot::probe_kernel(&b.kernel_image_path).map_err(bad)?;
                if let Some(initrd) = &b.initrd_path {
                    boot::probe_initrd(initrd).map_err(bad)?;
                }
                self.resources.boot_source = Some(b);
                Ok(VmmData::Empty)
            }
            PutDrive(d) => {
                self.before_start()?;
                let meta = std::fs::metadata(&d.path_on_host).map_err(|e| {
                    bad(format!(
                        "drives[{}].path_on_host {}: {e}",
                        d.drive_id,
                        d.path_on_host.display()
                    ))
                })?;
                if meta.is_dir() {
                    return Err(bad(format!(
                        "drives[{}].path_on_host {} is a directory: give a raw disk image",
                        d.drive_id,
                        d.path_on_host.display()
                    )));
                }
                self.resources.put_drive(d);
                Ok(VmmData::Empty)
            }
            PatchDrive(u) => self.patch_drive(u),
            PatchNetworkInterface(u) => self.patch_net(u),
            PutNetworkInterface(n) => {
                self.before_start()?;
                self.resources.put_net(n);
                Ok(VmmData::Empty)
            }
            PutVsock(v) => {
                self.before_start()?;
                self.resources.vsock = Some(v);
                Ok(VmmData::Empty)
            }
            PutEntropy(e) => {
                self.before_start()?;
                self.resources.entropy = Some(e);
                Ok(VmmData::Empty)
            }
            PutLogger(l) => {
                let level = l
                    .level
                    .as_deref()
                    .map(crate::logger::parse_level)
                    .transpose()
                    .map_err(|e| bad(format!("logger.level: {e}")))?;
                if let Some(path) = &l.log_path {
                    crate::logger::set_path(path).map_err(bad)?;
                }
                if let Some(level) = level {
                    crate::logger::set_level(level);
                }
                self.resources.logger = Some(l);
                Ok(VmmData::Empty)
            }
            PutMetrics(m) => {
                if self.metrics.is_some() {
                    return Err(ActionError::bad("metrics are already configured"));
                }
                let file = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&m.metrics_path)
                    .map_err(|e| bad(format!("metrics_path {}: {e}", m.metrics_path.display())))?;
                self.metrics = Some(file);
                self.resources.metrics = Some(m);
                Ok(VmmData::Empty)
            }
            Action(ActionType::InstanceStart) => self.start(),
            Action(ActionType::SendCtrlAltDel) => {
                let live = self.live()?;
                if live.vm.is_paused() {
                    return Err(ActionError::bad(
                        "the microVM is paused: resume it before SendCtrlAltDel",
                    ));
                }
                live.vm
                    .i8042
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .ctrl_alt_del();
                Ok(VmmData::Empty)
            }
            Action(ActionType::FlushMetrics) => self.flush_metrics(),
            SetVmState(VmState::Paused) => {
                self.live()?
                    .vm
                    .pause()
                    .map_err(|e| ActionError::internal(e.to_string()))?;
                Ok(VmmData::Empty)
            }
            SetVmState(VmState::Resumed) => {
                self.live()?
                    .vm
                    .resume()
                    .map_err(|e| ActionError::internal(e.to_string()))?;
                Ok(VmmData::Empty)
            }
            CreateSnapshot(c) => self.create_snapshot(c),
            LoadSnapshot(l) => self.load_snapshot(l),
        }
    }

    /// A new backing file or rate limiter for a drive: in the
    /// configuration before boot, and in the running device (which tells
    /// the guest of a new file) after.
    fn patch_drive(&mut self, u: DriveUpdate) -> VmmResult {
        let index = self
            .resources
            .drives
            .iter()
            .position(|d| d.drive_id == u.drive_id)
            .ok_or_else(|| bad(format!("no drive {:?}: PUT /drives/{0} first", u.drive_id)))?;
        if let Some(path) = u.path_on_host {
            if let Some(live) = &self.live {
                live.vm
                    .virtio
                    .swap_disk(index, &path)
                    .map_err(|e| bad(format!("drives[{}]: {e}", u.drive_id)))?;
            }
            self.resources.drives[index].path_on_host = path;
        }
        if let Some(limits) = u.rate_limiter {
            if let Some(live) = &self.live {
                let name = format!("virtio-blk{index}");
                live.vm
                    .virtio
                    .set_rate_limiter(&name, 0, &limits)
                    .map_err(|e| bad(format!("drives[{}].rate_limiter: {e}", u.drive_id)))?;
            }
            self.resources.drives[index].rate_limiter = Some(limits);
        }
        Ok(VmmData::Empty)
    }

    /// New rate limiters for a network interface, before boot or while it
    /// runs.
    fn patch_net(&mut self, u: NetworkInterfaceUpdate) -> VmmResult {
        let index = self
            .resources
            .network_interfaces
            .iter()
            .position(|n| n.iface_id == u.iface_id)
            .ok_or_else(|| {
                bad(format!(
                    "no network interface {:?}: PUT /network-interfaces/{0} first",
                    u.iface_id
                ))
            })?;
        let name = format!("virtio-net{index}");
        for (queue, limits, field) in [
            (RX_QUEUE, u.rx_rate_limiter, "rx_rate_limiter"),
            (TX_QUEUE, u.tx_rate_limiter, "tx_rate_limiter"),
        ] {
            let Some(limits) = limits else {
                continue;
            };
            if let Some(live) = &self.live {
                live.vm
                    .virtio
                    .set_rate_limiter(&name, queue, &limits)
                    .map_err(|e| bad(format!("network-interfaces[{}].{field}: {e}", u.iface_id)))?;
            }
            let n = &mut self.resources.network_interfaces[index];
            *if queue == RX_QUEUE {
                &mut n.rx_rate_limiter
            } else {
                &mut n.tx_rate_limiter
            } = Some(limits);
        }
        Ok(VmmData::Empty)
    }

    fn set_machine(&mut self, m: MachineConfig) -> VmmResult {
        self.before_start()?;
        // Check it now, as Firecracker does, with a stand-in boot source.
        let mut probe = VmResources {
            machine_config: m.clone(),
            boot_source: Some(BootSource {
                kernel_image_path: "-".into(),
                boot_args: None,
                initrd_path: None,
            }),
            ..VmResources::default()
        };
        probe.vm_config().map_err(bad)?;
        probe.machine_config = m;
        self.resources.machine_config = probe.machine_config;
        Ok(VmmData::Empty)
    }

    fn run(&mut self, mut machine: Machine, paused: bool) -> VmmResult {
        let kvm = Arc::new(KvmStatsFds::open(&machine.vm, &machine.vcpus));
        let hw = self.trace_exits.then(|| HwTrace::start(&mut machine, true));
        let stats = machine.new_stats();
        let stop = self
            .stop_event
            .try_clone()
            .map_err(|e| ActionError::internal(e.to_string()))?;
        let vm = machine
            .start(stats, Some(stop), paused)
            .map_err(|e| ActionError::internal(format!("starting the vCPUs: {e}")))?;
        if let Some(f) = self.on_start.as_mut() {
            f(&vm);
        }
        self.live = Some(Live {
            vm,
            kvm,
            hw,
            clock: TickClock::start(),
            started: Instant::now(),
        });
        Ok(VmmData::Empty)
    }

    fn start(&mut self) -> VmmResult {
        self.before_start()?;
        let cfg = self.resources.vm_config().map_err(bad)?;
        let machine = build_linux(&cfg, (self.console)()).map_err(build_error)?;
        self.run(machine, false)
    }

    fn flush_metrics(&mut self) -> VmmResult {
        let line = match &self.live {
            Some(live) => live.stats().to_json(),
            None => serde_json::json!({"state": self.state_name()}).to_string(),
        };
        let file = self
            .metrics
            .as_mut()
            .ok_or_else(|| ActionError::bad("metrics are not configured: PUT /metrics first"))?;
        writeln!(file, "{line}").map_err(|e| ActionError::internal(format!("metrics: {e}")))?;
        Ok(VmmData::Empty)
    }

    fn create_snapshot(&mut self, c: SnapshotCreate) -> VmmResult {
        if !matches!(c.snapshot_type.as_deref(), None | Some("Full")) {
            return Err(ActionError::bad(
                "snapshot_type: only \"Full\" snapshots are offered yet",
            ));
        }
        let resources = self.resources.clone();
        let live = self.live()?;
        if !live.vm.is_paused() {
            return Err(ActionError::bad(
                "Create snapshot is allowed only when the microVM is paused: PATCH /vm {\"state\": \"Paused\"} first",
            ));
        }
        snapshot::create(
            &mut live.vm,
            &resources,
            &c.snapshot_path,
            &c.mem_file_path,
            c.overwrite,
        )
        .map_err(snapshot_error)?;
        Ok(VmmData::Empty)
    }

    fn load_snapshot(&mut self, l: SnapshotLoad) -> VmmResult {
        if self.live.is_some() || self.report.is_some() || self.configured {
            return Err(ActionError::bad(
                "Loading a microVM snapshot is not allowed after configuring boot-specific resources: use a new Subzero process",
            ));
        }
        if l.enable_diff_snapshots || l.track_dirty_pages {
            return Err(ActionError::bad(
                "diff snapshots and dirty-page tracking are not offered yet",
            ));
        }
        if !l.network_overrides.is_empty() {
            return Err(ActionError::bad("network_overrides are not offered yet"));
        }
        let mem_path = match (&l.mem_backend, &l.mem_file_path) {
            (Some(b), None) if b.backend_type == "File" => b.backend_path.clone(),
            (Some(b), None) => {
                return Err(ActionError::bad(format!(
                    "mem_backend.backend_type {:?} is not offered: use \"File\"",
                    b.backend_type
                )))
            }
            (None, Some(p)) => p.clone(),
            (Some(_), Some(_)) => {
                return Err(ActionError::bad(
                    "give mem_backend or mem_file_path, not both",
                ))
            }
            (None, None) => {
                return Err(ActionError::bad(
                    "the memory file is missing: give mem_backend {\"backend_type\": \"File\", \"backend_path\": ...}",
                ))
            }
        };
        let (snap, mem) = snapshot::read(&l.snapshot_path, &mem_path).map_err(snapshot_error)?;
        let config = snap.config.clone();
        let machine = restore_vm(snap, &mem, (self.console)()).map_err(build_error)?;
        self.resources = config;
        self.configured = true;
        self.run(machine, !l.resume_vm)
    }
}

fn snapshot_error(e: SnapshotError) -> ActionError {
    match e {
        SnapshotError::Vcpu(_) | SnapshotError::State(_) => ActionError::internal(e.to_string()),
        e => bad(e),
    }
}

/// Reads a Firecracker JSON config file (`--config-file`).
pub fn read_config_file(path: &Path) -> Result<VmResources, String> {
    let text = crate::files::read_regular(path, 1 << 20)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}
