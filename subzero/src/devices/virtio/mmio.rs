//! The virtio-mmio transport, register layout version 2 (virtio 1.x
//! section 4.2.2).
//!
//! A transport is two halves behind two locks:
//! - [`Registers`], which vCPU threads read and write: feature negotiation,
//!   queue setup, the status state machine, and a copy of the device's
//!   configuration space;
//! - [`DeviceState`] (`device.rs`): the device model, the queues as the
//!   device advances them, and guest memory. The device thread holds this
//!   lock while it serves requests: disk I/O, TAP reads and writes.
//!
//! So a register access never waits for a request in hand, with two
//! exceptions a driver makes only while its device is idle: DRIVER_OK hands
//! the queues to the device and activates it, and a reset (status 0) waits
//! until the device lets go of the rings, which the driver may free as soon
//! as its write returns. Locks are taken registers first, then device; the
//! device thread never takes the registers'. Queue notifications normally
//! never arrive here: KVM turns writes of QueueNotify into ioeventfd signals
//! that the device thread serves. The interrupt status register is read and
//! acknowledged through an atomic.

mod device;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use device::{lock, DeviceState, QueueSnapshot, SharedTransport, TransportSnapshot};

use super::{features, DeviceError, Interrupt, VirtioDevice};
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
    /// Requests and frames its rate limiter held back until tokens refilled.
    pub throttled: AtomicU64,
    /// Chains the device put on its used rings: requests completed.
    pub completed: AtomicU64,
}

/// The registers, what the vCPU threads lock.
pub struct Registers {
    /// The device half, locked (after this one) at DRIVER_OK and reset.
    dev: Arc<Mutex<DeviceState>>,
    name: String,
    device_type: u32,
    /// Features offered, transport features included.
    offered: u64,
    /// The device's configuration space, as [`read_config_space`] read it.
    config: Vec<u8>,
    mem: GuestMemoryMmap,
    /// The queues as the driver sets them up; the device gets a copy at
    /// DRIVER_OK.
    queues: Vec<Queue>,
    size_invalid: Vec<bool>,
    kicks: Vec<EventFd>,
    activated: EventFd,
    irq: Arc<Interrupt>,
    /// DEVICE_NEEDS_RESET, which the device thread sets without this lock.
    needs_reset: Arc<AtomicBool>,
    counters: Arc<VirtioCounters>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// Device status, without DEVICE_NEEDS_RESET.
    status: u32,
    config_generation: u32,
}

/// Bytes of configuration space a transport serves (every Subzero device
/// has less); reads past them see 0.
pub const CONFIG_SPACE: usize = 256;

/// Reads `device`'s configuration space, for the transport's copy.
pub fn read_config_space(device: &dyn VirtioDevice) -> Vec<u8> {
    let mut c = vec![0u8; CONFIG_SPACE];
    device.read_config(0, &mut c);
    c
}

impl Registers {
    fn device(&self) -> MutexGuard<'_, DeviceState> {
        lock(&self.dev)
    }

    /// The status register: the driver's bits and DEVICE_NEEDS_RESET.
    fn status(&self) -> u32 {
        if self.needs_reset.load(Ordering::SeqCst) {
            self.status | status::DEVICE_NEEDS_RESET
        } else {
            self.status
        }
    }

    fn reset(&mut self) {
        let mut dev = lock(&self.dev);
        dev.reset();
        self.needs_reset.store(false, Ordering::SeqCst);
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
            regs::DEVICE_ID => self.device_type,
            regs::VENDOR_ID => VENDOR_ID,
            regs::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered as u32,
                1 => (self.offered >> 32) as u32,
                _ => 0,
            },
            regs::QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            regs::QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            regs::STATUS => self.status(),
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
                self.name
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
        // DEVICE_NEEDS_RESET is the device's to set (and the reset's to clear).
        let mut new = v & !status::DEVICE_NEEDS_RESET;
        let rising = new & !old;
        if rising & status::FEATURES_OK != 0 {
            let unknown = self.driver_features & !self.offered;
            if unknown != 0 || self.driver_features & features::VERSION_1 == 0 {
                log::warn!(
                    "{}: driver features {:#x} refused (offered {:#x})",
                    self.name,
                    self.driver_features,
                    self.offered
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

    /// DRIVER_OK: checks every ready queue, hands the queues to the device
    /// and activates it.
    fn start(&mut self) {
        let event_idx = self.driver_features & features::RING_EVENT_IDX != 0;
        let mut dev = lock(&self.dev);
        dev.started = true;
        for (i, q) in self.queues.iter_mut().enumerate() {
            if !q.ready() {
                continue;
            }
            if self.size_invalid[i] {
                let e = DeviceError::Queue(i, "queue size is not a power of two".into());
                return dev.fail(&e);
            }
            if q.avail_ring() == 0 || q.desc_table() == 0 || q.used_ring() == 0 {
                let e =
                    DeviceError::Queue(i, "queue rings left at address 0 (never set up)".into());
                return dev.fail(&e);
            }
            if !q.is_valid(&self.mem) {
                let e =
                    DeviceError::Queue(i, "queue rings misplaced or outside guest memory".into());
                return dev.fail(&e);
            }
            q.set_event_idx(event_idx);
        }
        if let Err(e) = dev.take_queues(&self.queues) {
            return dev.fail(&e);
        }
        if let Err(e) = dev.device.activate(self.driver_features) {
            return dev.fail(&e);
        }
        drop(dev);
        // Some drivers add buffers and kick before DRIVER_OK (Linux 5.18's
        // virtio-rng did); those kicks found the device inactive, so the
        // device thread serves every ready queue once now.
        if let Err(e) = self.activated.write(1) {
            log::warn!("{}: cannot wake the device thread: {e}", self.name);
        }
    }
}

/// A virtio device on the MMIO bus.
pub struct MmioTransport {
    shared: SharedTransport,
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
        let (name, device_type, config) = (
            device.name().to_string(),
            device.device_type(),
            read_config_space(device.as_ref()),
        );
        let offered = device.features()
            | features::VERSION_1
            | features::RING_EVENT_IDX
            | features::RING_INDIRECT_DESC;
        let new_queues = || -> Result<Vec<Queue>, DeviceError> {
            let max = device.queue_max_sizes().iter().enumerate();
            max.map(|(i, &m)| Queue::new(m).map_err(|e| DeviceError::Queue(i, e.to_string())))
                .collect()
        };
        let (queues, live) = (new_queues()?, new_queues()?);
        let isr = Arc::new(AtomicU32::new(0));
        let irq = Arc::new(Interrupt::new(isr.clone(), irqfd));
        let needs_reset = Arc::new(AtomicBool::new(false));
        let counters = Arc::<VirtioCounters>::default();
        let dev = DeviceState::new(
            device,
            mem.clone(),
            live,
            irq.clone(),
            needs_reset.clone(),
            counters.clone(),
        );
        let n = queues.len();
        let regs = Registers {
            dev: Arc::new(Mutex::new(dev)),
            name,
            device_type,
            offered,
            config,
            mem,
            queues,
            size_invalid: vec![false; n],
            kicks,
            activated: EventFd::new(libc::EFD_NONBLOCK)
                .map_err(|e| DeviceError::Backend(format!("eventfd: {e}")))?,
            irq,
            needs_reset,
            counters: counters.clone(),
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
        };
        let dev = regs.dev.clone();
        Ok(MmioTransport {
            shared: SharedTransport {
                regs: Arc::new(Mutex::new(regs)),
                dev,
                counters,
            },
            isr,
        })
    }

    /// The transport's two halves, to share with the device thread and
    /// the snapshot code.
    pub fn shared(&self) -> SharedTransport {
        self.shared.clone()
    }

    /// The interrupt line.
    pub fn interrupt(&self) -> Arc<Interrupt> {
        self.shared.regs().irq.clone()
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= regs::CONFIG {
            let r = self.shared.regs();
            let at = offset - regs::CONFIG;
            for (i, b) in data.iter_mut().enumerate() {
                *b = at
                    .checked_add(i as u64)
                    .and_then(|at| usize::try_from(at).ok())
                    .and_then(|at| r.config.get(at).copied())
                    .unwrap_or(0);
            }
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
            self.shared.regs().read_reg(offset)
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        if offset >= regs::CONFIG {
            // No Subzero device has a writable configuration field.
            log::debug!("virtio-mmio: configuration write at {offset:#x} ignored");
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
            self.shared.regs().write_reg(offset, v);
        }
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests;
