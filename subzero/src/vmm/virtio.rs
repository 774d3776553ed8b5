//! Places virtio devices in the VM: an MMIO slot and an IOAPIC pin each, a
//! KVM ioeventfd per queue and an irqfd, an entry for the ACPI DSDT, and
//! a thread per device serving it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::exit::Buses;
use crate::arch::x86_64::acpi::AcpiMmioDevice;
use crate::arch::x86_64::layout::{self, MMIO_DEVICES_START, MMIO_DEVICE_SLOT_SIZE};
use crate::devices::rate_limiter::RateLimiterConfig;
use crate::devices::virtio::mmio::{
    regs, MmioTransport, SharedTransport, TransportSnapshot, VirtioCounters,
};
use crate::devices::virtio::worker::{DeviceWorker, WorkerThread, PAUSE_TIMEOUT};
use crate::devices::virtio::{Interrupt, VirtioDevice, VirtioDeviceCounts};
use crate::seccomp::ThreadKind;

/// First IOAPIC pin for virtio devices (0-4 are the PIT, keyboard,
/// cascade, COM2 and COM1).
pub const FIRST_GSI: u32 = 5;
/// Most virtio devices: one per remaining IOAPIC pin.
pub const MAX_DEVICES: usize = (layout::IOAPIC_NUM_PINS - FIRST_GSI) as usize;
const _: () = assert!(FIRST_GSI > layout::ports::SERIAL_COM1_IRQ);

/// Why a virtio device could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum VirtioSetupError {
    /// Too many devices.
    #[error("too many virtio devices: {0} (at most {MAX_DEVICES})")]
    TooMany(usize),
    /// The transport refused the device.
    #[error("{0}: {1}")]
    Transport(String, #[source] crate::devices::virtio::DeviceError),
    /// A KVM eventfd registration failed.
    #[error("{0}: {1} failed: {2}")]
    Kvm(String, &'static str, #[source] kvm_ioctls::Error),
    /// Eventfd creation or the device thread failed.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The MMIO bus refused the window.
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    /// A snapshot's devices do not fit the VM.
    #[error("{0}")]
    Restore(String),
}

/// One placed device, for statistics and firmware tables.
#[derive(Clone)]
pub struct VirtioSlot {
    /// Device name with its index, e.g. "virtio-blk0".
    pub name: String,
    /// MMIO window base.
    pub base: u64,
    /// IOAPIC pin.
    pub gsi: u32,
    // Read without the transport lock, so statistics never wait for a
    // device busy with (possibly slow) I/O.
    counters: Arc<VirtioCounters>,
    irq: Arc<Interrupt>,
    /// Its thread's seccomp filter.
    thread: ThreadKind,
}

impl VirtioSlot {
    /// The counters now.
    pub fn counts(&self) -> VirtioDeviceCounts {
        let c = &self.counters;
        VirtioDeviceCounts {
            device: self.name.clone(),
            base: self.base,
            eventfd_kicks: c.eventfd_kicks.load(Ordering::Relaxed),
            mmio_kicks: c.mmio_kicks.load(Ordering::Relaxed),
            interrupts: self.irq.sent(),
            needs_reset: c.needs_reset.load(Ordering::Relaxed),
            throttled: c.throttled.load(Ordering::Relaxed),
            completed: c.completed.load(Ordering::Relaxed),
        }
    }

    /// The DSDT entry.
    pub fn acpi(&self, uid: u32) -> AcpiMmioDevice {
        AcpiMmioDevice {
            hid: "LNRO0005",
            uid,
            base: self.base,
            len: MMIO_DEVICE_SLOT_SIZE as u32,
            gsi: self.gsi,
        }
    }

    /// The `virtio_mmio.device=` kernel parameter describing this device.
    pub fn cmdline(&self) -> String {
        cmdline_param(self.base, self.gsi)
    }
}

/// `virtio_mmio.device=<size>@<base>:<irq>`, the form the kernel's
/// `virtio_mmio` driver parses with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES.
pub fn cmdline_param(base: u64, gsi: u32) -> String {
    format!(
        "virtio_mmio.device={}K@{base:#x}:{gsi}",
        MMIO_DEVICE_SLOT_SIZE >> 10
    )
}

/// The VM's virtio devices and the thread that serves them.
#[derive(Default)]
pub struct VirtioDevices {
    // Dropped first, which joins the device threads: the devices are then
    // dropped here, on the main thread, whose seccomp filter lets vsock
    // remove its socket.
    threads: Vec<WorkerThread>,
    /// Placed devices, in slot order.
    pub slots: Vec<VirtioSlot>,
    transports: Vec<SharedTransport>,
    workers: Vec<DeviceWorker>,
}

impl VirtioDevices {
    /// Places `device` in the next slot: registers its queue notify address
    /// as ioeventfds (data-matched per queue), its irqfd on the next pin,
    /// and its window on the MMIO bus.
    pub fn attach(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        buses: &mut Buses,
        device: Box<dyn VirtioDevice>,
    ) -> Result<&VirtioSlot, VirtioSetupError> {
        let index = self.slots.len();
        let thread = ThreadKind::for_virtio(device.device_type());
        if index >= MAX_DEVICES {
            return Err(VirtioSetupError::TooMany(index + 1));
        }
        let same_kind = self
            .slots
            .iter()
            .filter(|s| s.name.starts_with(device.name()))
            .count();
        let name = format!("{}{}", device.name(), same_kind);
        let base = MMIO_DEVICES_START + index as u64 * MMIO_DEVICE_SLOT_SIZE;
        let gsi = FIRST_GSI + index as u32;
        let io = |e| VirtioSetupError::Io(name.clone(), e);
        let new_evt = || EventFd::new(EFD_NONBLOCK).map_err(io);
        let mut kicks = Vec::new();
        for q in 0..device.queue_max_sizes().len() {
            let evt = new_evt()?;
            vm.register_ioevent(
                &evt,
                &IoEventAddress::Mmio(base + regs::QUEUE_NOTIFY),
                q as u32,
            )
            .map_err(|e| VirtioSetupError::Kvm(name.clone(), "KVM_IOEVENTFD", e))?;
            kicks.push(evt);
        }
        let irqfd = new_evt()?;
        vm.register_irqfd(&irqfd, gsi)
            .map_err(|e| VirtioSetupError::Kvm(name.clone(), "KVM_IRQFD", e))?;
        let clones = |v: &[EventFd]| -> Result<Vec<EventFd>, VirtioSetupError> {
            v.iter().map(|k| k.try_clone().map_err(io)).collect()
        };
        let transport = MmioTransport::new(device, mem.clone(), clones(&kicks)?, irqfd)
            .map_err(|e| VirtioSetupError::Transport(name.clone(), e))?;
        let shared = transport.shared();
        let counters = shared.counters().clone();
        let irq = transport.interrupt();
        self.transports.push(shared.clone());
        self.workers.push(DeviceWorker::new(shared, kicks));
        buses.mmio.insert(
            &name,
            base,
            MMIO_DEVICE_SLOT_SIZE,
            Arc::new(std::sync::Mutex::new(transport)),
        )?;
        log::info!("{name}: MMIO {base:#x}, IRQ {gsi}");
        self.slots.push(VirtioSlot {
            name,
            base,
            gsi,
            counters,
            irq,
            thread,
        });
        Ok(self.slots.last().expect("just pushed"))
    }

    /// DSDT entries for every device.
    pub fn acpi(&self) -> Vec<AcpiMmioDevice> {
        self.slots
            .iter()
            .enumerate()
            .map(|(i, s)| s.acpi(i as u32))
            .collect()
    }

    /// Starts one thread per device, named after it, so that a device
    /// waiting on slow host I/O (a disk) does not hold up the others. Later
    /// calls start only devices attached since.
    pub fn start(&mut self) -> Result<(), VirtioSetupError> {
        self.start_with(false)
    }

    /// Like [`VirtioDevices::start`], with every thread parked until
    /// [`VirtioDevices::resume`]: a restored VM's devices must not raise an
    /// interrupt before its vCPUs have their local APICs back, or the
    /// interrupt is lost.
    pub fn start_paused(&mut self) -> Result<(), VirtioSetupError> {
        self.start_with(true)
    }

    fn start_with(&mut self, paused: bool) -> Result<(), VirtioSetupError> {
        let first = self.threads.len();
        for (slot, worker) in self.slots[first..].iter().zip(self.workers.drain(..)) {
            let thread = WorkerThread::start(&slot.name, slot.thread, worker, paused)
                .map_err(|e| VirtioSetupError::Io(slot.name.clone(), e))?;
            self.threads.push(thread);
        }
        Ok(())
    }

    /// Parks every device thread once it has finished the work in hand, so
    /// no device touches guest memory until [`VirtioDevices::resume`].
    pub fn pause(&self) -> Result<(), String> {
        for (slot, thread) in self.slots.iter().zip(&self.threads) {
            if !thread.pause() {
                return Err(format!(
                    "{} did not pause within {PAUSE_TIMEOUT:?}",
                    slot.name
                ));
            }
        }
        Ok(())
    }

    /// Lets every device thread serve again.
    pub fn resume(&self) {
        self.threads.iter().for_each(WorkerThread::resume);
    }

    /// Every device's transport and device state (devices paused).
    pub fn save(&self) -> Vec<TransportSnapshot> {
        self.transports.iter().map(SharedTransport::save).collect()
    }

    /// Puts back saved state into freshly attached devices, in slot order,
    /// before [`VirtioDevices::start`].
    pub fn restore(&self, saved: &[TransportSnapshot]) -> Result<(), VirtioSetupError> {
        if saved.len() != self.transports.len() {
            return Err(VirtioSetupError::Restore(format!(
                "the snapshot has {} virtio devices, its configuration {}",
                saved.len(),
                self.transports.len()
            )));
        }
        for ((slot, t), s) in self.slots.iter().zip(&self.transports).zip(saved) {
            t.restore(s)
                .map_err(|e| VirtioSetupError::Transport(slot.name.clone(), e))?;
        }
        Ok(())
    }

    /// Puts disk `index` (0 is /dev/vda) on the image at `path`.
    pub fn swap_disk(&self, index: usize, path: &std::path::Path) -> Result<(), String> {
        self.transport(&format!("virtio-blk{index}"))?
            .swap_backing(path)
    }

    /// Sets the rate limiter of queue `queue` of the device called `name`
    /// (e.g. "virtio-net0").
    pub fn set_rate_limiter(
        &self,
        name: &str,
        queue: usize,
        cfg: &RateLimiterConfig,
    ) -> Result<(), String> {
        self.transport(name)?
            .device()
            .device
            .set_rate_limiter(queue, cfg)
    }

    /// The transport of the device called `name`.
    fn transport(&self, name: &str) -> Result<&SharedTransport, String> {
        self.slots
            .iter()
            .zip(&self.transports)
            .find(|(s, _)| s.name == name)
            .map(|(_, t)| t)
            .ok_or_else(|| format!("the VM has no {name}"))
    }

    /// Counters of every device.
    pub fn counts(&self) -> Vec<VirtioDeviceCounts> {
        self.slots.iter().map(VirtioSlot::counts).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_form_matches_the_kernel_syntax() {
        assert_eq!(
            cmdline_param(0xd000_1000, 6),
            "virtio_mmio.device=4K@0xd0001000:6"
        );
    }
}
