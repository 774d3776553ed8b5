//! A minimal virtio driver for unit tests: it lays out split virtqueues in
//! guest memory, negotiates through the MMIO registers like Linux does, and
//! runs the device thread's handlers synchronously.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::mmio::{regs, status, MmioTransport, SharedTransport};
use super::worker::DeviceWorker;
use super::VirtioDevice;
use crate::bus::BusDevice;

/// Guest memory of the test driver.
pub const MEM_SIZE: usize = 16 << 20;
/// Queue size the driver uses (unless the device allows less).
pub const QSIZE: u16 = 16;
/// Queue `q`'s rings live at `RINGS + q * 0x1_0000`.
const RINGS: u64 = 0x10_0000;
/// Free memory for buffers starts here.
pub const DATA: u64 = 0x20_0000;

/// One descriptor the test wants in a chain: address, length, device-writable.
pub type D = (u64, u32, bool);

/// The test driver.
pub struct TestDriver {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The device's MMIO registers.
    pub transport: MmioTransport,
    /// Shared state (what the device thread sees).
    pub shared: SharedTransport,
    /// The device thread's handler for this device, driven by hand.
    pub worker: DeviceWorker,
    kicks: Vec<EventFd>,
    /// The irqfd.
    pub irq: EventFd,
    next_desc: Vec<u16>,
    avail_idx: Vec<u16>,
    sizes: Vec<u16>,
}

impl TestDriver {
    /// Wraps `device` without initializing it.
    pub fn raw(device: Box<dyn VirtioDevice>) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let n = device.queue_max_sizes().len();
        let kicks: Vec<EventFd> = (0..n)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let transport = MmioTransport::new(
            device,
            mem.clone(),
            kicks.iter().map(|k| k.try_clone().unwrap()).collect(),
            irq.try_clone().unwrap(),
        )
        .unwrap();
        let shared = transport.shared();
        let worker = DeviceWorker::new(
            shared.clone(),
            kicks.iter().map(|k| k.try_clone().unwrap()).collect(),
        );
        TestDriver {
            mem,
            transport,
            shared,
            worker,
            kicks,
            irq,
            next_desc: vec![0; n],
            avail_idx: vec![0; n],
            sizes: vec![0; n],
        }
    }

    /// Puts a new transport for `device` in place of the current one, on the
    /// same guest memory and eventfds, as a restored VM does; the driver's
    /// own bookkeeping (rings, indices) carries on.
    pub fn replace_transport(&mut self, device: Box<dyn VirtioDevice>) {
        let clone = |v: &[EventFd]| v.iter().map(|k| k.try_clone().unwrap()).collect();
        self.transport = MmioTransport::new(
            device,
            self.mem.clone(),
            clone(&self.kicks),
            self.irq.try_clone().unwrap(),
        )
        .unwrap();
        self.shared = self.transport.shared();
        self.worker = DeviceWorker::new(self.shared.clone(), clone(&self.kicks));
    }

    /// Wraps `device` and brings it to DRIVER_OK with every offered feature
    /// and all queues at [`QSIZE`].
    pub fn new(device: Box<dyn VirtioDevice>) -> Self {
        let mut d = Self::raw(device);
        d.setup(|_, max| max.min(QSIZE));
        assert_eq!(
            d.status() & (status::DRIVER_OK | status::DEVICE_NEEDS_RESET),
            status::DRIVER_OK
        );
        d
    }

    /// Negotiates all features and sets up each queue with the size `size(q, max)` gives.
    pub fn setup(&mut self, size: impl Fn(usize, u16) -> u16) {
        self.setup_with(u64::MAX, size)
    }

    /// Like [`TestDriver::setup`], accepting only the offered features in `mask`.
    pub fn setup_with(&mut self, mask: u64, size: impl Fn(usize, u16) -> u16) {
        self.setup_before_ok(mask, size);
        self.write(
            regs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
    }

    /// Everything up to (not including) DRIVER_OK.
    pub fn setup_before_ok(&mut self, mask: u64, size: impl Fn(usize, u16) -> u16) {
        self.write(regs::STATUS, 0);
        self.write(regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        for sel in 0..2 {
            self.write(regs::DEVICE_FEATURES_SEL, sel);
            let f = self.read(regs::DEVICE_FEATURES) & (mask >> (32 * sel)) as u32;
            self.write(regs::DRIVER_FEATURES_SEL, sel);
            self.write(regs::DRIVER_FEATURES, f);
        }
        self.write(
            regs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        for q in 0..self.sizes.len() {
            self.write(regs::QUEUE_SEL, q as u32);
            let max = self.read(regs::QUEUE_NUM_MAX) as u16;
            let s = size(q, max);
            self.sizes[q] = s;
            self.write(regs::QUEUE_NUM, u32::from(s));
            let base = RINGS + q as u64 * 0x1_0000;
            let (desc, avail, used) = (base, base + 0x4000, base + 0x8000);
            self.write(regs::QUEUE_DESC_LOW, desc as u32);
            self.write(regs::QUEUE_DESC_HIGH, 0);
            self.write(regs::QUEUE_AVAIL_LOW, avail as u32);
            self.write(regs::QUEUE_AVAIL_HIGH, 0);
            self.write(regs::QUEUE_USED_LOW, used as u32);
            self.write(regs::QUEUE_USED_HIGH, 0);
            self.write(regs::QUEUE_READY, 1);
        }
    }

    /// Reads a 32-bit register.
    pub fn read(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    /// Writes a 32-bit register.
    pub fn write(&mut self, off: u64, v: u32) {
        self.transport.write(off, &v.to_le_bytes());
    }

    /// The status register.
    pub fn status(&mut self) -> u32 {
        self.read(regs::STATUS)
    }

    /// Whether the device asked for a reset.
    pub fn needs_reset(&mut self) -> bool {
        self.status() & status::DEVICE_NEEDS_RESET != 0
    }

    /// Writes raw descriptor `i` of queue `q`.
    pub fn put_desc(&self, q: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(RINGS + q as u64 * 0x1_0000 + u64::from(i) * 16);
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&b, at).unwrap();
    }

    /// Makes descriptor `head` available on queue `q`.
    pub fn publish(&mut self, q: usize, head: u16) {
        let avail = RINGS + q as u64 * 0x1_0000 + 0x4000;
        let idx = self.avail_idx[q];
        let slot = avail + 4 + 2 * u64::from(idx % self.sizes[q]);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx[q] = idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx[q], GuestAddress(avail + 2))
            .unwrap();
    }

    /// Writes a chain of `descs` to queue `q`, makes it available, and
    /// returns its head index.
    pub fn add_chain(&mut self, q: usize, descs: &[D]) -> u16 {
        let size = self.sizes[q];
        let head = self.next_desc[q];
        for (k, &(addr, len, write)) in descs.iter().enumerate() {
            let i = (head + k as u16) % size;
            let last = k + 1 == descs.len();
            let flags = if write { 2 } else { 0 } | if last { 0 } else { 1 };
            self.put_desc(q, i, addr, len, flags, (i + 1) % size);
        }
        self.next_desc[q] = (head + descs.len() as u16) % size;
        self.publish(q, head);
        head
    }

    /// Kicks queue `q` and runs the device thread's handler for it, then
    /// lets the device finish what it has in flight.
    pub fn kick(&mut self, q: usize) {
        self.kicks[q].write(1).unwrap();
        self.worker.handle_kick(q);
        self.worker.quiesce();
    }

    /// Runs the handler of host-side source `token`.
    pub fn source(&mut self, token: usize) {
        self.worker.handle_source(token);
        self.worker.quiesce();
    }

    /// Used-ring entries of queue `q`: (head, length written), in order.
    pub fn used(&self, q: usize) -> Vec<(u32, u32)> {
        let used = RINGS + q as u64 * 0x1_0000 + 0x8000;
        let n: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        (0..n)
            .map(|k| {
                let e = used + 4 + 8 * u64::from(k % self.sizes[q]);
                (
                    self.mem.read_obj(GuestAddress(e)).unwrap(),
                    self.mem.read_obj(GuestAddress(e + 4)).unwrap(),
                )
            })
            .collect()
    }

    /// Interrupts raised (and clears the irqfd).
    pub fn interrupts(&self) -> u64 {
        self.irq.read().unwrap_or(0)
    }

    /// Runs `f` on the device, downcast by the caller.
    pub fn with_device<R>(&self, f: impl FnOnce(&mut dyn VirtioDevice) -> R) -> R {
        f(self.shared.device().device.as_mut())
    }
}

/// Waits (at most 5 s) for `fd` (a rate limiter's timerfd, say) to be
/// readable.
pub fn readable(fd: std::os::fd::RawFd) -> bool {
    let mut fds = [libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: `fds` is a valid array of one pollfd for the call.
    unsafe { libc::poll(fds.as_mut_ptr(), 1, 5000) == 1 }
}
