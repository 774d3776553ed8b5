//! Virtio devices on the virtio 1.x MMIO transport.
//!
//! A device implements [`VirtioDevice`]: what it offers (type, features,
//! queues, config space) and how it serves its queues. [`mmio::MmioTransport`]
//! puts it on the MMIO bus and runs the register protocol on vCPU threads.
//! [`worker::DeviceWorker`] serves the queues on the device thread, woken by
//! KVM ioeventfds, and interrupts the guest through an irqfd. A guest kick
//! therefore never passes through a vCPU thread in userspace.

pub mod block;
pub mod chain;
pub mod iov;
pub mod mmio;
pub mod net;
pub mod rng;
#[cfg(test)]
pub mod testing;
pub mod vsock;
pub mod worker;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use chain::{ChainError, DescChain};

use crate::devices::rate_limiter::RateLimiterConfig;

/// Device type numbers (virtio 1.x section 5).
pub mod types {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Socket device.
    pub const VSOCK: u32 = 19;
}

/// Feature bits every Subzero device offers.
pub mod features {
    /// The device is a virtio 1.x device (bit 32).
    pub const VERSION_1: u64 = 1 << 32;
    /// The used/avail event index notification suppression (bit 29).
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// Indirect descriptors (bit 28).
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
}

/// Why a device gave up on its queues. The transport then sets
/// DEVICE_NEEDS_RESET and tells the driver through a config interrupt.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The driver broke the virtqueue protocol (bad ring index, queue
    /// memory outside the guest).
    #[error("queue {0}: {1}")]
    Queue(usize, String),
    /// A host-side backend failed in a way the device cannot report per request.
    #[error("backend: {0}")]
    Backend(String),
}

/// A device's notification and interrupt counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VirtioDeviceCounts {
    /// Device name, e.g. "virtio-blk0".
    pub device: String,
    /// MMIO window base.
    pub base: u64,
    /// Queue notifications delivered through an ioeventfd (no exit).
    pub eventfd_kicks: u64,
    /// Queue notifications that exited to userspace as MMIO writes.
    pub mmio_kicks: u64,
    /// Interrupts raised through the irqfd.
    pub interrupts: u64,
    /// Times the device entered DEVICE_NEEDS_RESET.
    pub needs_reset: u64,
    /// Requests and frames its rate limiter held back.
    pub throttled: u64,
    /// Chains put on the used rings: requests and frames completed.
    pub completed: u64,
}

/// The device's interrupt line: the ISR bits the driver reads, and the
/// irqfd that raises the guest interrupt.
pub struct Interrupt {
    status: Arc<AtomicU32>,
    irqfd: EventFd,
    sent: AtomicU64,
}

/// ISR bit: a used ring changed.
pub const INT_VRING: u32 = 1;
/// ISR bit: the configuration (or device status) changed.
pub const INT_CONFIG: u32 = 2;

impl Interrupt {
    /// An interrupt line raising `irqfd`, with ISR bits in `status`.
    pub fn new(status: Arc<AtomicU32>, irqfd: EventFd) -> Self {
        Interrupt {
            status,
            irqfd,
            sent: AtomicU64::new(0),
        }
    }

    /// Sets `bits` in the ISR and raises the interrupt.
    pub fn signal(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.sent.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.irqfd.write(1) {
            log::warn!("virtio irqfd write failed: {e}");
        }
    }

    /// Clears the ISR bits (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// Interrupts raised so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

/// What a device gets while it serves a queue: guest memory, its queues
/// and its interrupt.
pub struct QueueCtx<'a> {
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
    /// All the device's queues, in index order.
    pub queues: &'a mut [Queue],
    /// The interrupt line.
    pub irq: &'a Interrupt,
    /// Whether the driver has set DRIVER_OK (and the device is not broken).
    /// Before that, a device must not touch its queues.
    pub active: bool,
    /// Chains refused so far (the transport's counter).
    pub bad_chains: &'a AtomicU64,
    /// Requests a rate limiter held back (the transport's counter, which
    /// `--stats` shows).
    pub throttled: &'a AtomicU64,
    /// Chains completed through [`QueueCtx::add_used`] (the transport's
    /// counter).
    pub completed: &'a AtomicU64,
    /// A queue that looked non-empty but yielded nothing.
    pub(crate) stalled: Option<usize>,
    /// Bit `q`: queue `q` got used entries since its last notify.
    pub(crate) added: u64,
}

impl QueueCtx<'_> {
    /// Takes the next available chain of queue `q`, validated. `Ok(None)`
    /// when the queue is empty. A chain that breaks the rules is returned
    /// to the driver as used with length 0 and reported as `Err`, so the
    /// device can count it and go on.
    pub fn pop(&mut self, q: usize, max_len: u64) -> Result<Option<DescChain>, ChainError> {
        self.pop_or_fail(q, max_len, |_, _| 0)
    }

    /// Like [`QueueCtx::pop`], but a refused chain is first handed to
    /// `fail` with its raw descriptors, so the device can write an error
    /// status the driver will read; `fail` returns the used length.
    pub fn pop_or_fail(
        &mut self,
        q: usize,
        max_len: u64,
        fail: impl FnOnce(&GuestMemoryMmap, &[Descriptor]) -> u32,
    ) -> Result<Option<DescChain>, ChainError> {
        let Some(queue) = self.queues.get_mut(q) else {
            return Ok(None);
        };
        // An iterator error means the queue cannot yield anything (rings
        // not placed, or the available index too far ahead); remember it so
        // enable_notification does not let the device retry forever. An
        // empty queue is not an error, even if the driver adds a chain just
        // after we looked.
        let next = match queue.iter(self.mem) {
            Ok(mut it) => it.next(),
            Err(e) => {
                log::debug!("queue {q}: {e}");
                self.stalled = Some(q);
                None
            }
        };
        let Some(chain) = next else {
            return Ok(None);
        };
        let head = chain.head_index();
        let descs: Vec<Descriptor> = chain.collect();
        match DescChain::from_descriptors(self.mem, head, &descs, max_len) {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                self.bad_chains.fetch_add(1, Ordering::Relaxed);
                let len = fail(self.mem, &descs);
                if queue.add_used(self.mem, head, len).is_ok() {
                    self.added |= 1u64 << (q % 64);
                }
                Err(e)
            }
        }
    }

    /// Puts the chain with head `head` on the used ring of queue `q` with
    /// `len` bytes written by the device.
    pub fn add_used(&mut self, q: usize, head: u16, len: u32) -> Result<(), DeviceError> {
        let queue = queue_mut(self.queues, q)?;
        queue
            .add_used(self.mem, head, len)
            .map_err(|e| DeviceError::Queue(q, e.to_string()))?;
        self.added |= 1u64 << (q % 64);
        self.completed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Raises the queue interrupt if queue `q` got used entries since the
    /// last call and the driver wants an interrupt for them.
    pub fn notify(&mut self, q: usize) -> Result<(), DeviceError> {
        let bit = 1u64 << (q % 64);
        if self.added & bit == 0 {
            return Ok(());
        }
        self.added &= !bit;
        let queue = queue_mut(self.queues, q)?;
        if queue
            .needs_notification(self.mem)
            .map_err(|e| DeviceError::Queue(q, e.to_string()))?
        {
            self.irq.signal(INT_VRING);
        }
        Ok(())
    }

    /// Re-enables driver notifications on queue `q` and says whether more
    /// chains arrived meanwhile (then the device should keep going).
    ///
    /// A queue that looks non-empty but cannot yield chains (rings never
    /// placed, or an available index more than a queue's length ahead,
    /// which virtio-queue's iterator refuses) breaks the protocol: this is
    /// then an error (DEVICE_NEEDS_RESET) rather than a reason to spin.
    pub fn enable_notification(&mut self, q: usize) -> Result<bool, DeviceError> {
        let queue = queue_mut(self.queues, q)?;
        let more = queue
            .enable_notification(self.mem)
            .map_err(|e| DeviceError::Queue(q, e.to_string()))?;
        if more && self.stalled == Some(q) {
            return Err(DeviceError::Queue(
                q,
                "the available ring has entries the queue cannot yield".into(),
            ));
        }
        Ok(more)
    }

    /// Turns off driver notifications on queue `q` while the device drains it.
    pub fn disable_notification(&mut self, q: usize) -> Result<(), DeviceError> {
        let queue = queue_mut(self.queues, q)?;
        queue
            .disable_notification(self.mem)
            .map_err(|e| DeviceError::Queue(q, e.to_string()))
    }

    /// Puts the chain last taken from queue `q` back, for a device that
    /// cannot serve it yet (its rate limiter says wait).
    pub fn undo_pop(&mut self, q: usize) {
        if let Some(queue) = self.queues.get_mut(q) {
            queue.go_to_previous_position();
        }
    }

    /// Whether the device is active and queue `q` is set up by the driver.
    pub fn ready(&self, q: usize) -> bool {
        self.active && self.queues.get(q).is_some_and(|queue| queue.ready())
    }
}

/// Queue `q` of `queues`, or the error a device reports for a bad index.
fn queue_mut(queues: &mut [Queue], q: usize) -> Result<&mut Queue, DeviceError> {
    queues
        .get_mut(q)
        .ok_or_else(|| DeviceError::Queue(q, "no such queue".into()))
}

/// A virtio device model, independent of the transport.
pub trait VirtioDevice: Send {
    /// Short name for logs and statistics, e.g. "virtio-blk".
    fn name(&self) -> &str;
    /// Virtio device type ([`types`]).
    fn device_type(&self) -> u32;
    /// Largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered. The transport adds [`features::VERSION_1`],
    /// [`features::RING_EVENT_IDX`] and [`features::RING_INDIRECT_DESC`].
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space. Bytes past its end
    /// read as 0. The transport reads it when the device is made, restored
    /// or given a new backing file, and serves the driver from that copy,
    /// so a configuration read never waits for the device's I/O.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Called once the driver set DRIVER_OK, with the features it accepted.
    fn activate(&mut self, _acked_features: u64) -> Result<(), DeviceError> {
        Ok(())
    }
    /// Called when the driver resets the device: drop in-flight state.
    fn reset(&mut self) {}
    /// Finishes every request the device has in flight and puts it on its
    /// used ring, before the VM pauses or a snapshot is taken, so that
    /// nothing touches guest memory while the device thread is parked.
    fn quiesce(&mut self, _ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        Ok(())
    }
    /// Puts the device on a new backing file (a disk image) while the VM
    /// runs. The transport then tells the driver its configuration changed.
    fn swap_backing(&mut self, _path: &std::path::Path) -> Result<(), String> {
        Err(format!("{} has no backing file to swap", self.name()))
    }
    /// Sets the rate limiter of queue `queue` (a disk's only queue, a
    /// network card's receive or transmit queue) while the VM runs.
    fn set_rate_limiter(&mut self, _queue: usize, _cfg: &RateLimiterConfig) -> Result<(), String> {
        Err(format!("{} has no rate limiter", self.name()))
    }
    /// State a snapshot keeps beyond the transport's, as JSON (none by
    /// default: the backend is reopened from the configuration).
    fn save_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Puts back what [`VirtioDevice::save_state`] gave, in a restored VM,
    /// after [`VirtioDevice::activate`] with the saved features.
    fn restore_state(&mut self, _state: &serde_json::Value) -> Result<(), DeviceError> {
        Ok(())
    }
    /// Serves queue `q` after the driver kicked it.
    fn process_queue(&mut self, q: usize, ctx: &mut QueueCtx) -> Result<(), DeviceError>;
    /// Host file descriptors the device thread should watch for this device
    /// (a TAP device, a listening socket). Token `i` is the index here.
    fn event_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// One of [`VirtioDevice::event_fds`] is readable. Also called while the
    /// device is not active (`ctx.active` false), so the device can drain
    /// or park the source; the fd is watched level-triggered.
    fn process_event(&mut self, _token: usize, _ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        Ok(())
    }
}
