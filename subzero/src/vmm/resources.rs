//! What a VM is made of, in the shape of Firecracker's API and config file:
//! boot source, machine config, drives, network interfaces, vsock and
//! entropy. `subzero run`'s flags, `--config-file` and the API all build a
//! [`VmResources`]; [`VmResources::vm_config`] checks it and gives the
//! [`VmConfig`] the builder takes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::config::{
    check_memory, host_ram, ConfigError, DevicesConfig, VmConfig, DEFAULT_CMDLINE,
};
use super::device_config::{DiskConfig, EngineChoice, NetConfig, VsockConfig};
pub use crate::devices::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
use crate::devices::virtio::block::MAX_QUEUES;
use crate::devices::virtio::net::MAX_PAIRS;

/// Firecracker's default guest RAM, in MiB, when machine-config is not set.
pub const DEFAULT_MEM_MIB: u64 = 128;

/// A setting, named as the API and the command line name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    /// boot-source.kernel_image_path.
    Kernel,
    /// boot-source.initrd_path.
    Initrd,
    /// machine-config.mem_size_mib.
    Memory,
    /// machine-config.vcpu_count.
    Vcpus,
    /// A machine-config field Subzero does not support in this value.
    Machine(&'static str),
    /// A field of drive `id`.
    Drive(String, &'static str),
    /// A field of network interface `id`.
    Net(String, &'static str),
    /// A vsock field.
    Vsock(&'static str),
    /// An entropy field.
    Entropy(&'static str),
}

impl Setting {
    /// The setting as the API and config file name it.
    pub fn api_name(&self) -> String {
        match self {
            Setting::Kernel => "boot-source.kernel_image_path".into(),
            Setting::Initrd => "boot-source.initrd_path".into(),
            Setting::Memory => "machine-config.mem_size_mib".into(),
            Setting::Vcpus => "machine-config.vcpu_count".into(),
            Setting::Machine(f) => format!("machine-config.{f}"),
            Setting::Drive(id, f) => format!("drives[{id}].{f}"),
            Setting::Net(id, f) => format!("network-interfaces[{id}].{f}"),
            Setting::Vsock(f) => format!("vsock.{f}"),
            Setting::Entropy(f) => format!("entropy.{f}"),
        }
    }

    /// The `subzero run` flag that sets it.
    pub fn flag(&self) -> String {
        match self {
            Setting::Kernel => "--kernel".into(),
            Setting::Initrd => "--initrd".into(),
            Setting::Memory => "--memory".into(),
            Setting::Vcpus => "--vcpus".into(),
            Setting::Machine(f) => format!("machine-config.{f}"),
            Setting::Drive(id, _) => format!("--disk (id={id})"),
            Setting::Net(id, _) => format!("--net ({id})"),
            Setting::Vsock(_) => "--vsock".into(),
            Setting::Entropy(_) => "--rng".into(),
        }
    }
}

/// A setting with a value Subzero cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {problem}", setting.api_name())]
pub struct ResourceError {
    /// Which setting.
    pub setting: Setting,
    /// What is wrong with it, and what to do.
    pub problem: String,
}

impl ResourceError {
    fn new(setting: Setting, problem: impl Into<String>) -> Self {
        ResourceError {
            setting,
            problem: problem.into(),
        }
    }

    /// The message with the command-line flag in place of the API name.
    pub fn for_cli(&self) -> String {
        format!("{} {}", self.setting.flag(), self.problem)
    }
}

/// `PUT /boot-source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// bzImage or ELF vmlinux.
    pub kernel_image_path: PathBuf,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
}

/// `PUT /machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// vCPUs.
    pub vcpu_count: u64,
    /// Guest RAM in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading (not offered: must be false).
    #[serde(default)]
    pub smt: bool,
    /// Dirty-page tracking for diff snapshots (not offered: must be false).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Huge pages: only "None".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<String>,
    /// A CPU template (none are offered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: DEFAULT_MEM_MIB,
            smt: false,
            track_dirty_pages: false,
            huge_pages: None,
            cpu_template: None,
        }
    }
}

/// `PATCH /machine-config`: only the fields given change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    /// vCPUs.
    pub vcpu_count: Option<u64>,
    /// Guest RAM in MiB.
    pub mem_size_mib: Option<u64>,
    /// SMT.
    pub smt: Option<bool>,
    /// Dirty-page tracking.
    pub track_dirty_pages: Option<bool>,
    /// Huge pages.
    pub huge_pages: Option<String>,
    /// CPU template.
    pub cpu_template: Option<String>,
}

impl MachineConfig {
    /// Applies a PATCH.
    pub fn update(&mut self, u: MachineConfigUpdate) {
        self.vcpu_count = u.vcpu_count.unwrap_or(self.vcpu_count);
        self.mem_size_mib = u.mem_size_mib.unwrap_or(self.mem_size_mib);
        self.smt = u.smt.unwrap_or(self.smt);
        self.track_dirty_pages = u.track_dirty_pages.unwrap_or(self.track_dirty_pages);
        if u.huge_pages.is_some() {
            self.huge_pages = u.huge_pages;
        }
        if u.cpu_template.is_some() {
            self.cpu_template = u.cpu_template;
        }
    }
}

/// A field Subzero accepts only when it is absent or null.
pub type Unsupported = Option<serde_json::Value>;

/// `PUT /drives/{drive_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// The drive's name; also the serial the guest reads.
    pub drive_id: String,
    /// Raw image file.
    pub path_on_host: PathBuf,
    /// Whether it is the root device (Subzero puts root devices first).
    #[serde(default)]
    pub is_root_device: bool,
    /// Refuse guest writes.
    #[serde(default)]
    pub is_read_only: bool,
    /// Root partition UUID (not offered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Unsupported,
    /// "Unsafe" or "Writeback"; flushes are always honoured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<String>,
    /// Bytes and requests per second (a size or refill time of 0 is
    /// unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
    /// "Sync" (preadv/pwritev on the device thread) or "Async"
    /// (io_uring). Left out: io_uring where the host allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<String>,
    /// Subzero's own: request queues (default one per vCPU, at most 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_queues: Option<u16>,
    /// vhost-user socket (not offered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Unsupported,
}

/// `PATCH /drives/{drive_id}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveUpdate {
    /// The drive.
    pub drive_id: String,
    /// A new backing file.
    pub path_on_host: Option<PathBuf>,
    /// New limits, replacing the old ones (a running disk's buckets start
    /// full).
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// `PUT /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// The interface's name.
    pub iface_id: String,
    /// Host TAP device.
    pub host_dev_name: String,
    /// Guest MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Bytes and frames per second to the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Bytes and frames per second from the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
    /// Subzero's own: queue pairs (default 1, at most 8; more need a TAP
    /// that can be opened multi-queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_queue_pairs: Option<u16>,
}

/// `PATCH /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceUpdate {
    /// The interface.
    pub iface_id: String,
    /// New receive limits.
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// New transmit limits.
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// `PUT /vsock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// The guest's context id.
    pub guest_cid: u64,
    /// Host Unix socket.
    pub uds_path: PathBuf,
    /// Deprecated name, ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

/// `PUT /entropy`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entropy {
    /// Rate limiter (not offered yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Unsupported,
}

/// `PUT /logger`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// Log file (or FIFO) to write to.
    #[serde(default)]
    pub log_path: Option<PathBuf>,
    /// Error, Warning, Info, Debug, Trace or Off.
    #[serde(default)]
    pub level: Option<String>,
    /// Prefix each line with its level.
    #[serde(default)]
    pub show_level: Option<bool>,
    /// Prefix each line with its source location.
    #[serde(default)]
    pub show_log_origin: Option<bool>,
    /// Only this module's lines.
    #[serde(default)]
    pub module: Option<String>,
}

/// `PUT /metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// File (or FIFO) that FlushMetrics writes to.
    pub metrics_path: PathBuf,
}

/// A whole VM, as `GET /vm/config` shows it and `--config-file` gives it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmResources {
    /// Kernel, initrd and command line.
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSource>,
    /// vCPUs and memory.
    #[serde(rename = "machine-config", default)]
    pub machine_config: MachineConfig,
    /// Block devices.
    #[serde(default)]
    pub drives: Vec<Drive>,
    /// Network devices.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    /// The socket device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    /// The entropy device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<Entropy>,
    /// Logging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<Logger>,
    /// Metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
}

fn refuse_set(value: &Unsupported, setting: Setting, what: &str) -> Result<(), ResourceError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(_) => Err(ResourceError::new(
            setting,
            format!("{what} is not supported by Subzero yet; leave it out"),
        )),
    }
}

impl VmResources {
    /// Adds or replaces a drive (by id), keeping root devices first.
    pub fn put_drive(&mut self, drive: Drive) {
        match self
            .drives
            .iter_mut()
            .find(|d| d.drive_id == drive.drive_id)
        {
            Some(d) => *d = drive,
            None => self.drives.push(drive),
        }
        self.drives.sort_by_key(|d| !d.is_root_device);
    }

    /// Adds or replaces a network interface (by id).
    pub fn put_net(&mut self, net: NetworkInterface) {
        match self
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == net.iface_id)
        {
            Some(n) => *n = net,
            None => self.network_interfaces.push(net),
        }
    }

    /// Checks every setting and gives the builder's configuration.
    pub fn vm_config(&self) -> Result<VmConfig, ResourceError> {
        let boot = self.boot_source.as_ref().ok_or_else(|| {
            ResourceError::new(
                Setting::Kernel,
                "no kernel: set the boot source (PUT /boot-source) before InstanceStart",
            )
        })?;
        let m = &self.machine_config;
        if m.smt {
            return Err(ResourceError::new(
                Setting::Machine("smt"),
                "SMT is not offered: set it to false",
            ));
        }
        if m.track_dirty_pages {
            return Err(ResourceError::new(
                Setting::Machine("track_dirty_pages"),
                "diff snapshots are not offered yet: set it to false",
            ));
        }
        if !matches!(m.huge_pages.as_deref(), None | Some("None")) {
            return Err(ResourceError::new(
                Setting::Machine("huge_pages"),
                "huge pages are not offered yet: use \"None\"",
            ));
        }
        if !matches!(m.cpu_template.as_deref(), None | Some("None")) {
            return Err(ResourceError::new(
                Setting::Machine("cpu_template"),
                "CPU templates are not offered: leave it out",
            ));
        }
        let memory = m
            .mem_size_mib
            .checked_mul(1 << 20)
            .ok_or_else(|| ResourceError::new(Setting::Memory, "too large"))?;
        check_memory(memory, host_ram()).map_err(|e| {
            let problem = match e {
                ConfigError::MemoryTooSmall(mib, min) => {
                    format!("{mib} MiB is too small: Subzero needs at least {min} MiB")
                }
                ConfigError::MemoryTooLarge(mib, host) => format!(
                    "{mib} MiB is more than this host's {host} MiB of RAM: choose a smaller size"
                ),
                other => other.to_string(),
            };
            ResourceError::new(Setting::Memory, problem)
        })?;
        if m.vcpu_count == 0 {
            return Err(ResourceError::new(Setting::Vcpus, "must be at least 1"));
        }
        let mut disks = Vec::with_capacity(self.drives.len());
        for d in &self.drives {
            let s = |f| Setting::Drive(d.drive_id.clone(), f);
            refuse_set(&d.partuuid, s("partuuid"), "a partition UUID")?;
            refuse_set(&d.socket, s("socket"), "a vhost-user socket")?;
            let engine =
                match d.io_engine.as_deref() {
                    None => EngineChoice::Auto,
                    Some("Sync") => EngineChoice::Sync,
                    Some("Async") => EngineChoice::Uring,
                    Some(_) => return Err(ResourceError::new(
                        s("io_engine"),
                        "use \"Sync\" or \"Async\" (io_uring), or leave it out to let Subzero pick",
                    )),
                };
            if matches!(d.num_queues, Some(n) if !(1..=MAX_QUEUES).contains(&n)) {
                return Err(ResourceError::new(
                    s("num_queues"),
                    "give a number of request queues from 1 to 16, or leave it out for one per vCPU",
                ));
            }
            if !matches!(d.cache_type.as_deref(), None | Some("Unsafe" | "Writeback")) {
                return Err(ResourceError::new(
                    s("cache_type"),
                    "use \"Unsafe\" or \"Writeback\"",
                ));
            }
            disks.push(DiskConfig {
                path: d.path_on_host.clone(),
                readonly: d.is_read_only,
                id: Some(d.drive_id.clone()),
                rate_limiter: d.rate_limiter.unwrap_or_default(),
                engine,
                queues: d.num_queues,
            });
        }
        let mut nets = Vec::with_capacity(self.network_interfaces.len());
        for n in &self.network_interfaces {
            if matches!(n.num_queue_pairs, Some(k) if !(1..=MAX_PAIRS as u16).contains(&k)) {
                return Err(ResourceError::new(
                    Setting::Net(n.iface_id.clone(), "num_queue_pairs"),
                    "give a number of queue pairs from 1 to 8, or leave it out for one",
                ));
            }
            nets.push(NetConfig {
                tap: n.host_dev_name.clone(),
                mac: n.guest_mac.clone(),
                rx_rate_limiter: n.rx_rate_limiter.unwrap_or_default(),
                tx_rate_limiter: n.tx_rate_limiter.unwrap_or_default(),
                queues: n.num_queue_pairs,
            });
        }
        let vsock = match &self.vsock {
            Some(v) if v.guest_cid < 3 || v.guest_cid > u64::from(u32::MAX) => {
                return Err(ResourceError::new(
                    Setting::Vsock("guest_cid"),
                    format!("{} is not a guest context id: use 3 or more", v.guest_cid),
                ))
            }
            Some(v) => Some(VsockConfig {
                cid: v.guest_cid,
                uds: v.uds_path.clone(),
            }),
            None => None,
        };
        if let Some(e) = &self.entropy {
            refuse_set(
                &e.rate_limiter,
                Setting::Entropy("rate_limiter"),
                "a rate limiter",
            )?;
        }
        Ok(VmConfig {
            kernel: boot.kernel_image_path.clone(),
            initrd: boot.initrd_path.clone(),
            cmdline: boot
                .boot_args
                .clone()
                .unwrap_or_else(|| DEFAULT_CMDLINE.into()),
            memory,
            vcpus: m.vcpu_count,
            devices: DevicesConfig {
                disks,
                nets,
                vsock,
                rng: self.entropy.is_some(),
                mmio_cmdline: false,
                passthrough: Vec::new(),
            },
            host_unpack: true,
            unpack_cache: super::kernel_cache::default_dir(),
        })
    }
}

#[cfg(test)]
mod tests;
