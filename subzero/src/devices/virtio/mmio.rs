//! The virtio-mmio transport, register layout version 2 (virtio 1.x
//! section 4.2.2).
//!
//! vCPU threads run the register protocol here: feature negotiation, queue
//! setup and the status state machine. Queue notifications normally never
//! arrive here: KVM turns writes of QueueNotify into ioeventfd signals that
//! the device thread serves. The interrupt status register is read and
//! acknowledged without taking the device lock, so interrupt handling in
//! the guest does not wait for a device busy with I/O.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{features, DeviceError, Interrupt, QueueCtx, VirtioDevice, INT_CONFIG};
use crate::bus::{BusDevice, DeviceAction};

/// "virt" in little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// Register layout version 2 (virtio 1.x, no legacy).
pub const VERSION: u32 = 2;
/// Vendor id Subzero reports ("SBZ0").
pub const VENDOR_ID: u32 = 0x305a_4253;

/// Register offsets.
#[allow(missing_docs)]
pub mod regs {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_AVAIL_LOW: u64 = 0x090;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x094;
    pub const QUEUE_USED_LOW: u64 = 0x0a0;
    pub const QUEUE_USED_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (virtio 1.x section 2.1).
#[allow(missing_docs)]
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// Counters of one device, readable while the VM runs.
#[derive(Debug, Default)]
pub struct VirtioCounters {
    /// Guest kicks that arrived through an ioeventfd (no userspace exit).
    pub eventfd_kicks: AtomicU64,
    /// Guest kicks that arrived as an MMIO exit on a vCPU thread.
    pub mmio_kicks: AtomicU64,
    /// Chains refused as malformed.
    pub bad_chains: AtomicU64,
    /// Times the device entered DEVICE_NEEDS_RESET.
    pub needs_reset: AtomicU64,
}

/// One queue, as a snapshot keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSnapshot {
    /// Largest size the device offers.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
    /// Next available-ring index the device reads.
    pub next_avail: u16,
    /// Next used-ring index the device writes.
    pub next_used: u16,
    /// VIRTIO_F_RING_EVENT_IDX in use.
    pub event_idx: bool,
}

/// A transport's registers and queues, and its device's own state.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSnapshot {
    /// Device type, checked on restore.
    pub device_type: u32,
    /// Device status.
    pub status: u32,
    /// Features the driver accepted.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// Interrupt status bits not yet acknowledged.
    pub isr: u32,
    /// ConfigGeneration.
    #[serde(default)]
    pub config_generation: u32,
    /// Queues whose QueueNum write was refused.
    pub size_invalid: Vec<bool>,
    /// The queues.
    pub queues: Vec<QueueSnapshot>,
    /// [`VirtioDevice::save_state`].
    pub device: serde_json::Value,
}

/// State shared by the vCPU threads (registers) and the device thread (queues).
pub struct TransportState {
    /// The device model.
    pub device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    size_invalid: Vec<bool>,
    kicks: Vec<EventFd>,
    activated: EventFd,
    irq: Arc<Interrupt>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
    counters: Arc<VirtioCounters>,
}

/// A shared handle on a transport's state.
pub type SharedTransport = Arc<Mutex<TransportState>>;

/// Locks `t`, carrying on if a thread panicked while holding it.
pub fn lock(t: &SharedTransport) -> MutexGuard<'_, TransportState> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

impl TransportState {
    /// Features the device offers, transport features included.
    pub fn offered_features(&self) -> u64 {
        self.device.features()
            | features::VERSION_1
            | features::RING_EVENT_IDX
            | features::RING_INDIRECT_DESC
    }

    /// Whether the driver finished setup and the device is not broken.
    pub fn active(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::DEVICE_NEEDS_RESET == 0
    }

    /// Signalled when the driver sets DRIVER_OK, for the device thread.
    pub fn activated_event(&self) -> std::io::Result<EventFd> {
        self.activated.try_clone()
    }

    /// The device's counters.
    pub fn counters(&self) -> &Arc<VirtioCounters> {
        &self.counters
    }

    /// Runs `f` with the device and a queue context.
    pub fn with_ctx<R>(&mut self, f: impl FnOnce(&mut dyn VirtioDevice, &mut QueueCtx) -> R) -> R {
        let active = self.active();
        let mut ctx = QueueCtx {
            mem: &self.mem,
            queues: &mut self.queues,
            irq: &self.irq,
            active,
            bad_chains: &self.counters.bad_chains,
            stalled: None,
            added: 0,
        };
        f(self.device.as_mut(), &mut ctx)
    }

    /// Marks the device broken: the driver sees DEVICE_NEEDS_RESET and a
    /// configuration interrupt, and the device serves nothing until reset.
    pub fn fail(&mut self, err: &DeviceError) {
        if self.status & status::DEVICE_NEEDS_RESET == 0 {
            log::warn!("{}: {err}; the device needs a reset", self.device.name());
            self.status |= status::DEVICE_NEEDS_RESET;
            self.counters.needs_reset.fetch_add(1, Ordering::Relaxed);
            if self.status & status::DRIVER_OK != 0 {
                self.irq.signal(INT_CONFIG);
            }
        }
    }

    /// The registers, queues and device state, for a snapshot. The device
    /// thread must be paused.
    pub fn save(&self) -> TransportSnapshot {
        TransportSnapshot {
            device_type: self.device.device_type(),
            status: self.status,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            isr: self.irq.status.load(Ordering::SeqCst),
            config_generation: self.config_generation,
            size_invalid: self.size_invalid.clone(),
            queues: self
                .queues
                .iter()
                .map(|q| {
                    let s = q.state();
                    QueueSnapshot {
                        max_size: s.max_size,
                        size: s.size,
                        ready: s.ready,
                        desc_table: s.desc_table,
                        avail_ring: s.avail_ring,
                        used_ring: s.used_ring,
                        next_avail: s.next_avail,
                        next_used: s.next_used,
                        event_idx: s.event_idx_enabled,
                    }
                })
                .collect(),
            device: self.device.save_state(),
        }
    }

    /// Puts back a snapshot's state into a new transport for the same
    /// device, before its thread starts. A device the driver had started is
    /// activated again, and its thread serves every ready queue once.
    pub fn restore(&mut self, s: &TransportSnapshot) -> Result<(), DeviceError> {
        let name = self.device.name().to_string();
        let bad = |what: String| DeviceError::Backend(format!("{name}: snapshot: {what}"));
        if s.device_type != self.device.device_type() {
            return Err(bad(format!(
                "device type {} where the VM has {}",
                s.device_type,
                self.device.device_type()
            )));
        }
        if s.queues.len() != self.queues.len() || s.size_invalid.len() != self.queues.len() {
            return Err(bad(format!(
                "{} queues where the device has {}",
                s.queues.len(),
                self.queues.len()
            )));
        }
        let mut queues = Vec::with_capacity(s.queues.len());
        for (i, q) in s.queues.iter().enumerate() {
            let state = virtio_queue::QueueState {
                max_size: q.max_size,
                next_avail: q.next_avail,
                next_used: q.next_used,
                event_idx_enabled: q.event_idx,
                size: q.size,
                ready: q.ready,
                desc_table: q.desc_table,
                avail_ring: q.avail_ring,
                used_ring: q.used_ring,
            };
            if q.max_size != self.queues[i].max_size() {
                return Err(bad(format!("queue {i} has another maximum size")));
            }
            queues.push(Queue::try_from(state).map_err(|e| bad(format!("queue {i}: {e}")))?);
        }
        self.queues = queues;
        self.size_invalid = s.size_invalid.clone();
        self.status = s.status;
        self.driver_features = s.driver_features;
        self.queue_sel = s.queue_sel;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.irq.status.store(s.isr, Ordering::SeqCst);
        self.config_generation = s.config_generation;
        if self.active() {
            if let Some(i) = (0..self.queues.len())
                .find(|&i| self.queues[i].ready() && !self.queues[i].is_valid(&self.mem))
            {
                return Err(bad(format!("queue {i} lies outside guest memory")));
            }
            self.device.activate(self.driver_features)?;
            self.device.restore_state(&s.device)?;
            let _ = self.activated.write(1);
        }
        Ok(())
    }

    /// Swaps the device's backing file, and tells a running driver that the
    /// configuration changed (a new disk size, say).
    pub fn swap_backing(&mut self, path: &std::path::Path) -> Result<(), String> {
        self.device.swap_backing(path)?;
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & status::DRIVER_OK != 0 {
            self.irq.signal(INT_CONFIG);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.device.reset();
        self.irq.clear();
        for q in &mut self.queues {
            q.reset();
        }
        self.size_invalid.iter_mut().for_each(|b| *b = false);
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset {
            regs::MAGIC_VALUE => MAGIC,
            regs::VERSION => VERSION,
            regs::DEVICE_ID => self.device.device_type(),
            regs::VENDOR_ID => VENDOR_ID,
            regs::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            regs::QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            regs::QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            regs::STATUS => self.status,
            regs::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        // Queue layout and features are frozen once the driver is running.
        let setup = self.status & status::DRIVER_OK == 0;
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            regs::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            regs::DRIVER_FEATURES if setup && self.status & status::FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            regs::QUEUE_SEL => self.queue_sel = v,
            regs::QUEUE_NUM if setup => {
                let sel = self.queue_sel as usize;
                if let Some(q) = self.queues.get_mut(sel) {
                    let ok = v <= u32::from(u16::MAX) && q.try_set_size(v as u16).is_ok();
                    self.size_invalid[sel] = !ok;
                }
            }
            regs::QUEUE_READY if setup => {
                if let Some(q) = self.selected() {
                    q.set_ready(v == 1);
                }
            }
            regs::QUEUE_DESC_LOW..=regs::QUEUE_USED_HIGH if setup => {
                self.set_queue_address(offset, v)
            }
            regs::QUEUE_NOTIFY => {
                // Only reaches userspace if the ioeventfd is missing.
                self.counters.mmio_kicks.fetch_add(1, Ordering::Relaxed);
                if let Some(k) = self.kicks.get(v as usize & 0xffff) {
                    let _ = k.write(1);
                }
            }
            regs::STATUS => self.write_status(v),
            _ => log::debug!(
                "{}: ignored write {v:#x} to register {offset:#x}",
                self.device.name()
            ),
        }
    }

    /// QueueDesc/QueueDriver/QueueDevice, low (offset multiple of 8) or high half.
    fn set_queue_address(&mut self, offset: u64, v: u32) {
        let Some(q) = self.selected() else {
            return;
        };
        let (low, high) = if offset % 8 == 0 {
            (Some(v), None)
        } else {
            (None, Some(v))
        };
        match offset & !7 {
            regs::QUEUE_DESC_LOW => q.set_desc_table_address(low, high),
            regs::QUEUE_AVAIL_LOW => q.set_avail_ring_address(low, high),
            regs::QUEUE_USED_LOW => q.set_used_ring_address(low, high),
            _ => {}
        }
    }

    fn write_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        let mut new = v | (old & status::DEVICE_NEEDS_RESET);
        let rising = new & !old;
        if rising & status::FEATURES_OK != 0 {
            let unknown = self.driver_features & !self.offered_features();
            if unknown != 0 || self.driver_features & features::VERSION_1 == 0 {
                log::warn!(
                    "{}: driver features {:#x} refused (offered {:#x})",
                    self.device.name(),
                    self.driver_features,
                    self.offered_features()
                );
                new &= !status::FEATURES_OK;
            }
        }
        if rising & status::DRIVER_OK != 0 {
            if new & status::FEATURES_OK == 0 {
                new &= !status::DRIVER_OK;
            } else {
                self.status = new;
                self.start();
                return;
            }
        }
        self.status = new;
    }

    /// DRIVER_OK: checks every ready queue, then activates the device.
    fn start(&mut self) {
        let event_idx = self.driver_features & features::RING_EVENT_IDX != 0;
        for (i, q) in self.queues.iter_mut().enumerate() {
            if !q.ready() {
                continue;
            }
            if self.size_invalid[i] {
                let e = DeviceError::Queue(i, "queue size is not a power of two".into());
                return self.fail(&e);
            }
            if q.avail_ring() == 0 || q.desc_table() == 0 || q.used_ring() == 0 {
                let e =
                    DeviceError::Queue(i, "queue rings left at address 0 (never set up)".into());
                return self.fail(&e);
            }
            if !q.is_valid(&self.mem) {
                let e =
                    DeviceError::Queue(i, "queue rings misplaced or outside guest memory".into());
                return self.fail(&e);
            }
            q.set_event_idx(event_idx);
        }
        if let Err(e) = self.device.activate(self.driver_features) {
            return self.fail(&e);
        }
        // Some drivers add buffers and kick before DRIVER_OK (Linux 5.18's
        // virtio-rng did); those kicks found the device inactive, so the
        // device thread serves every ready queue once now.
        if let Err(e) = self.activated.write(1) {
            log::warn!("{}: cannot wake the device thread: {e}", self.device.name());
        }
    }
}

/// A virtio device on the MMIO bus.
pub struct MmioTransport {
    state: SharedTransport,
    isr: Arc<AtomicU32>,
}

impl MmioTransport {
    /// Wraps `device`. `kicks[i]` is the eventfd KVM signals when the
    /// driver notifies queue `i`; `irqfd` raises the device's interrupt.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        kicks: Vec<EventFd>,
        irqfd: EventFd,
    ) -> Result<Self, DeviceError> {
        let mut queues = Vec::new();
        for (i, &max) in device.queue_max_sizes().iter().enumerate() {
            queues.push(Queue::new(max).map_err(|e| DeviceError::Queue(i, e.to_string()))?);
        }
        let isr = Arc::new(AtomicU32::new(0));
        let n = queues.len();
        let state = TransportState {
            device,
            mem,
            queues,
            size_invalid: vec![false; n],
            kicks,
            activated: EventFd::new(libc::EFD_NONBLOCK)
                .map_err(|e| DeviceError::Backend(format!("eventfd: {e}")))?,
            irq: Arc::new(Interrupt::new(isr.clone(), irqfd)),
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            counters: Arc::default(),
        };
        Ok(MmioTransport {
            state: Arc::new(Mutex::new(state)),
            isr,
        })
    }

    /// The state, to share with the device thread.
    pub fn shared(&self) -> SharedTransport {
        self.state.clone()
    }

    /// The interrupt line.
    pub fn interrupt(&self) -> Arc<Interrupt> {
        lock(&self.state).irq.clone()
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= regs::CONFIG {
            lock(&self.state)
                .device
                .read_config(offset - regs::CONFIG, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            log::debug!(
                "virtio-mmio: {}-byte read at {offset:#x} ignored",
                data.len()
            );
            return;
        }
        let v = if offset == regs::INTERRUPT_STATUS {
            self.isr.load(Ordering::SeqCst)
        } else {
            lock(&self.state).read_reg(offset)
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        if offset >= regs::CONFIG {
            lock(&self.state)
                .device
                .write_config(offset - regs::CONFIG, data);
            return DeviceAction::None;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            log::debug!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            );
            return DeviceAction::None;
        };
        if offset % 4 != 0 {
            return DeviceAction::None;
        }
        let v = u32::from_le_bytes(bytes);
        if offset == regs::INTERRUPT_ACK {
            self.isr.fetch_and(!v, Ordering::SeqCst);
        } else {
            lock(&self.state).write_reg(offset, v);
        }
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests;
