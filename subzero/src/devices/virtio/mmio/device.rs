//! The device half of a transport, which the device thread locks while it
//! serves requests, and the handle on both halves that the device thread,
//! snapshots and drive swaps use.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{read_config_space, status, Registers, VirtioCounters};
use crate::devices::virtio::{DeviceError, Interrupt, QueueCtx, VirtioDevice, INT_CONFIG};

/// Locks `m`, carrying on if a thread panicked while holding it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

/// The device model with the queues it serves: what the device thread
/// holds while it serves a request.
pub struct DeviceState {
    /// The device model.
    pub device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    /// The queues as the device advances them; a copy of the driver's
    /// setup, taken at DRIVER_OK.
    queues: Vec<Queue>,
    irq: Arc<Interrupt>,
    /// DRIVER_OK was set since the last reset.
    pub(super) started: bool,
    needs_reset: Arc<AtomicBool>,
    counters: Arc<VirtioCounters>,
}

impl DeviceState {
    pub(super) fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        irq: Arc<Interrupt>,
        needs_reset: Arc<AtomicBool>,
        counters: Arc<VirtioCounters>,
    ) -> Self {
        DeviceState {
            device,
            mem,
            queues,
            irq,
            started: false,
            needs_reset,
            counters,
        }
    }

    /// Whether the driver finished setup and the device is not broken.
    pub fn active(&self) -> bool {
        self.started && !self.needs_reset.load(Ordering::SeqCst)
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
            throttled: &self.counters.throttled,
            completed: &self.counters.completed,
            stalled: None,
            added: 0,
        };
        f(self.device.as_mut(), &mut ctx)
    }

    /// Marks the device broken: the driver sees DEVICE_NEEDS_RESET and a
    /// configuration interrupt, and the device serves nothing until reset.
    pub fn fail(&mut self, err: &DeviceError) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            log::warn!("{}: {err}; the device needs a reset", self.device.name());
            self.counters.needs_reset.fetch_add(1, Ordering::Relaxed);
            if self.started {
                self.irq.signal(INT_CONFIG);
            }
        }
    }

    /// Takes a copy of the driver's queue setup (DRIVER_OK, restore).
    pub(super) fn take_queues(&mut self, queues: &[Queue]) -> Result<(), DeviceError> {
        self.queues = queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                Queue::try_from(q.state()).map_err(|e| DeviceError::Queue(i, e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    /// The driver reset the device.
    pub(super) fn reset(&mut self) {
        self.device.reset();
        self.started = false;
        self.queues.iter_mut().for_each(Queue::reset);
    }
}

/// A handle on a transport's two halves.
#[derive(Clone)]
pub struct SharedTransport {
    pub(super) regs: Arc<Mutex<Registers>>,
    pub(super) dev: Arc<Mutex<DeviceState>>,
    pub(super) counters: Arc<VirtioCounters>,
}

impl SharedTransport {
    pub(super) fn regs(&self) -> MutexGuard<'_, Registers> {
        lock(&self.regs)
    }

    /// The device half, for the device thread.
    pub fn device(&self) -> MutexGuard<'_, DeviceState> {
        lock(&self.dev)
    }

    /// Whether someone holds the device half now (for tests' messages).
    pub fn device_busy(&self) -> bool {
        self.dev.try_lock().is_err()
    }

    /// The device's counters.
    pub fn counters(&self) -> &Arc<VirtioCounters> {
        &self.counters
    }

    /// Signalled when the driver sets DRIVER_OK, for the device thread.
    pub fn activated_event(&self) -> std::io::Result<EventFd> {
        self.regs().activated.try_clone()
    }

    /// The registers, queues and device state, for a snapshot. The device
    /// thread must be paused.
    pub fn save(&self) -> TransportSnapshot {
        let r = self.regs();
        let d = r.device();
        // Once the driver set DRIVER_OK the device's copy is the one that moves.
        let queues = if r.status & status::DRIVER_OK != 0 {
            &d.queues
        } else {
            &r.queues
        };
        TransportSnapshot {
            device_type: r.device_type,
            status: r.status(),
            driver_features: r.driver_features,
            queue_sel: r.queue_sel,
            device_features_sel: r.device_features_sel,
            driver_features_sel: r.driver_features_sel,
            isr: r.irq.status.load(Ordering::SeqCst),
            config_generation: r.config_generation,
            size_invalid: r.size_invalid.clone(),
            queues: queues.iter().map(queue_snapshot).collect(),
            device: d.device.save_state(),
        }
    }

    /// Puts back a snapshot's state into a new transport for the same
    /// device, before its thread starts. A device the driver had started is
    /// activated again, and its thread serves every ready queue once.
    pub fn restore(&self, s: &TransportSnapshot) -> Result<(), DeviceError> {
        let mut r = self.regs();
        let name = r.name.clone();
        let bad = |what: String| DeviceError::Backend(format!("{name}: snapshot: {what}"));
        if s.device_type != r.device_type {
            return Err(bad(format!(
                "device type {} where the VM has {}",
                s.device_type, r.device_type
            )));
        }
        if s.queues.len() != r.queues.len() || s.size_invalid.len() != r.queues.len() {
            return Err(bad(format!(
                "{} queues where the device has {}",
                s.queues.len(),
                r.queues.len()
            )));
        }
        let mut queues = Vec::with_capacity(s.queues.len());
        for (i, q) in s.queues.iter().enumerate() {
            if q.max_size != r.queues[i].max_size() {
                return Err(bad(format!("queue {i} has another maximum size")));
            }
            queues.push(queue_from(q).map_err(|e| bad(format!("queue {i}: {e}")))?);
        }
        r.queues = queues;
        r.size_invalid = s.size_invalid.clone();
        r.status = s.status & !status::DEVICE_NEEDS_RESET;
        r.needs_reset
            .store(s.status & status::DEVICE_NEEDS_RESET != 0, Ordering::SeqCst);
        r.driver_features = s.driver_features;
        r.queue_sel = s.queue_sel;
        r.device_features_sel = s.device_features_sel;
        r.driver_features_sel = s.driver_features_sel;
        r.irq.status.store(s.isr, Ordering::SeqCst);
        r.config_generation = s.config_generation;
        let mut d = r.device();
        d.started = r.status & status::DRIVER_OK != 0;
        d.take_queues(&r.queues)?;
        if d.active() {
            if let Some(i) =
                (0..d.queues.len()).find(|&i| d.queues[i].ready() && !d.queues[i].is_valid(&r.mem))
            {
                return Err(bad(format!("queue {i} lies outside guest memory")));
            }
            d.device.activate(r.driver_features)?;
            d.device.restore_state(&s.device)?;
            let _ = r.activated.write(1);
        }
        let config = read_config_space(d.device.as_ref());
        drop(d);
        r.config = config;
        Ok(())
    }

    /// Swaps the device's backing file, and tells a running driver that the
    /// configuration changed (a new disk size, say). The swap waits for the
    /// request in hand; the registers stay free meanwhile.
    pub fn swap_backing(&self, path: &std::path::Path) -> Result<(), String> {
        let config = {
            let mut d = self.device();
            d.device.swap_backing(path)?;
            read_config_space(d.device.as_ref())
        };
        let mut r = self.regs();
        r.config = config;
        r.config_generation = r.config_generation.wrapping_add(1);
        if r.status & status::DRIVER_OK != 0 {
            r.irq.signal(INT_CONFIG);
        }
        Ok(())
    }
}

fn queue_snapshot(q: &Queue) -> QueueSnapshot {
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
}

fn queue_from(q: &QueueSnapshot) -> Result<Queue, virtio_queue::Error> {
    Queue::try_from(virtio_queue::QueueState {
        max_size: q.max_size,
        next_avail: q.next_avail,
        next_used: q.next_used,
        event_idx_enabled: q.event_idx,
        size: q.size,
        ready: q.ready,
        desc_table: q.desc_table,
        avail_ring: q.avail_ring,
        used_ring: q.used_ring,
    })
}
