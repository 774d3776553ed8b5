//! The harness behind Subzero's fuzz targets (`fuzz_targets/`).
//!
//! Each virtio target builds a device exactly as a VM does, puts it on the
//! real [`MmioTransport`] and [`DeviceWorker`], and reads the fuzzer's
//! input as a program for a hostile guest driver: register reads and writes,
//! descriptors written anywhere in the descriptor table, chains of buffers
//! (direct or indirect) anywhere in guest memory or outside it, available
//! ring entries and indices, kicks through the ioeventfd or through the
//! `QueueNotify` register, and events from the host side of the device. The
//! guest memory has a hole between its two regions, so buffers that straddle
//! a region's end are tried too.
//!
//! The input format is in [`Driver::step`]; [`Program`] writes it, for the
//! seeds ([`seeds`]). A target fails on a panic (an index out of bounds, an
//! arithmetic overflow: the targets are built with overflow checks and debug
//! assertions) and libFuzzer's timeout catches a hang.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use subzero::bus::BusDevice;
use subzero::devices::virtio::mmio::{regs, status, MmioTransport};
use subzero::devices::virtio::worker::DeviceWorker;
use subzero::devices::virtio::VirtioDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest RAM: two 1 MiB regions with a 1 MiB hole between them.
pub const RAM: [(u64, usize); 2] = [(0, 0x10_0000), (0x20_0000, 0x10_0000)];
/// Queue `q`'s rings: descriptor table at `ring_base(q)`, available ring
/// 0x1000 above, used ring 0x2000 above (room for 256 entries each).
pub fn ring_base(q: usize) -> u64 {
    0x1_0000 * (q as u64 + 1)
}
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
/// Indirect descriptor tables the chain operation writes.
const INDIRECT: u64 = 0x6_0000;
/// Buffers: an address code `v < 2^30` means `DATA + (v & 0x7_ffff)`.
pub const DATA: u64 = 0x8_0000;
/// Operations per input: an input runs in bounded time unless Subzero hangs.
const MAX_STEPS: usize = 512;

/// VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT.
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// The fuzzer's input, read front to back; past its end every read is 0.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Reads `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }
    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }
    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
    /// A guest address: mostly inside RAM, sometimes anywhere.
    pub fn addr(&mut self) -> u64 {
        let v = self.u32();
        match v >> 30 {
            0 | 1 => DATA + u64::from(v & 0x7_ffff),
            2 => RAM[1].0 + u64::from(v & 0xf_ffff),
            _ => self.u64(),
        }
    }
    /// A buffer length: mostly up to 128 KiB, sometimes up to 2 GiB.
    pub fn len(&mut self) -> u32 {
        let v = self.u32();
        if v >> 31 == 0 {
            v & 0x1_ffff
        } else {
            v & 0x7fff_ffff
        }
    }
}

/// Operation codes of [`Driver::step`].
pub mod op {
    /// Register write: offset u16 (mod 0x200), width code u8 (1/2/4/8
    /// bytes), value u64.
    pub const WRITE_REG: u8 = 0;
    /// Register read: offset u16, width code u8.
    pub const READ_REG: u8 = 1;
    /// Linux's setup sequence: feature mask u64, then per queue a size
    /// code u8 (below 0x80: a power of two; else a raw u16 follows), then
    /// u8 whose bit 0 sets DRIVER_OK.
    pub const SETUP: u8 = 2;
    /// Raw descriptor: queue u8, index u8, address, length, flags u16, next u16.
    pub const DESC: u8 = 3;
    /// A chain, published: queue u8, count-and-indirect u8 (bit 7:
    /// indirect, low 3 bits + 1: descriptors), then per descriptor an
    /// address, a length, a flag u8 (bit 0: device-writable) and for a
    /// readable one a fill count u8 and that many bytes written at its address.
    pub const CHAIN: u8 = 4;
    /// Available ring entry: queue u8, head u16.
    pub const PUBLISH: u8 = 5;
    /// Guest memory write: address, count u8, bytes.
    pub const POKE: u8 = 6;
    /// Kick through the ioeventfd: queue u8.
    pub const KICK: u8 = 7;
    /// Kick through the QueueNotify register: value u32.
    pub const NOTIFY: u8 = 8;
    /// A host-side event, device-specific ([`super::Host`]).
    pub const HOST: u8 = 9;
    /// The device thread's DRIVER_OK event.
    pub const ACTIVATED: u8 = 10;
    /// Ring field: queue u8, field u8 (avail flags, avail idx, used_event,
    /// used flags, used idx, avail_event), value u16.
    pub const RING: u8 = 11;
    /// Number of operations.
    pub const COUNT: u8 = 12;
}

/// What the host side of a device does in [`op::HOST`].
pub trait Host {
    /// Reads its arguments from `inp` and acts on `d`.
    fn event(&mut self, d: &mut Driver, inp: &mut Input);
}

/// A device without a host side.
pub struct NoHost;

impl Host for NoHost {
    fn event(&mut self, _: &mut Driver, _: &mut Input) {}
}

/// A hostile guest driver of one device.
pub struct Driver {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The device's registers, as vCPUs reach them.
    pub transport: MmioTransport,
    /// The device thread's handlers, run synchronously.
    pub worker: DeviceWorker,
    kicks: Vec<EventFd>,
    irq: EventFd,
    sizes: Vec<u16>,
    avail_idx: Vec<u16>,
    next_desc: Vec<u16>,
}

fn clone_all(fds: &[EventFd]) -> Vec<EventFd> {
    fds.iter()
        .map(|k| k.try_clone().expect("eventfd clone"))
        .collect()
}

impl Driver {
    /// Puts `device` on a fresh transport and guest memory.
    pub fn new(device: Box<dyn VirtioDevice>) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(RAM[0].0), RAM[0].1),
            (GuestAddress(RAM[1].0), RAM[1].1),
        ])
        .expect("guest memory");
        let n = device.queue_max_sizes().len();
        let kicks: Vec<EventFd> = (0..n)
            .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
            .collect();
        let irq = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let transport = MmioTransport::new(
            device,
            mem.clone(),
            clone_all(&kicks),
            irq.try_clone().expect("eventfd clone"),
        )
        .expect("transport");
        let worker = DeviceWorker::new(transport.shared(), clone_all(&kicks));
        Driver {
            mem,
            transport,
            worker,
            kicks,
            irq,
            sizes: vec![0; n],
            avail_idx: vec![0; n],
            next_desc: vec![0; n],
        }
    }

    fn queues(&self) -> usize {
        self.kicks.len()
    }

    /// Reads a register of `width` bytes.
    pub fn read(&mut self, off: u64, width: usize) -> u64 {
        let mut b = [0u8; 8];
        self.transport.read(off, &mut b[..width]);
        u64::from_le_bytes(b)
    }

    /// Writes a register of `width` bytes.
    pub fn write(&mut self, off: u64, width: usize, v: u64) {
        let _ = self.transport.write(off, &v.to_le_bytes()[..width]);
    }

    fn write32(&mut self, off: u64, v: u32) {
        self.write(off, 4, u64::from(v));
    }

    /// Negotiates the offered features within `mask` and sets up every
    /// queue with the size its code in `inp` gives, as Linux does; then
    /// DRIVER_OK if `driver_ok`.
    pub fn setup(&mut self, mask: u64, inp: &mut Input, driver_ok: bool) {
        self.write32(regs::STATUS, 0);
        self.write32(regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        for sel in 0..2u32 {
            self.write32(regs::DEVICE_FEATURES_SEL, sel);
            let f = self.read(regs::DEVICE_FEATURES, 4) as u32 & (mask >> (32 * sel)) as u32;
            self.write32(regs::DRIVER_FEATURES_SEL, sel);
            self.write32(regs::DRIVER_FEATURES, f);
        }
        self.write32(
            regs::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        for q in 0..self.queues() {
            self.write32(regs::QUEUE_SEL, q as u32);
            let max = self.read(regs::QUEUE_NUM_MAX, 4) as u16;
            let code = inp.u8();
            let size = if code < 0x80 {
                max.min(1 << (code % 9))
            } else {
                inp.u16()
            };
            self.sizes[q] = size;
            self.avail_idx[q] = 0;
            self.next_desc[q] = 0;
            self.write32(regs::QUEUE_NUM, u32::from(size));
            let base = ring_base(q);
            for (reg, addr) in [
                (regs::QUEUE_DESC_LOW, base),
                (regs::QUEUE_AVAIL_LOW, base + AVAIL),
                (regs::QUEUE_USED_LOW, base + USED),
            ] {
                self.write32(reg, addr as u32);
                self.write32(reg + 4, (addr >> 32) as u32);
            }
            self.write32(regs::QUEUE_READY, 1);
        }
        if driver_ok {
            self.write32(
                regs::STATUS,
                status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
            );
        }
    }

    /// Writes descriptor `i` at `table`.
    fn put_desc(&self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        let _ = self
            .mem
            .write_slice(&b, GuestAddress(table + u64::from(i) * 16));
    }

    /// Puts `head` on queue `q`'s available ring and publishes it.
    fn publish(&mut self, q: usize, head: u16) {
        let avail = ring_base(q) + AVAIL;
        let idx = self.avail_idx[q];
        let slot = u64::from(idx % self.sizes[q].clamp(1, 256));
        let _ = self.mem.write_obj(head, GuestAddress(avail + 4 + 2 * slot));
        self.avail_idx[q] = idx.wrapping_add(1);
        let _ = self
            .mem
            .write_obj(self.avail_idx[q], GuestAddress(avail + 2));
    }

    fn queue(&self, inp: &mut Input) -> usize {
        usize::from(inp.u8()) % self.queues().max(1)
    }

    /// Runs the device thread's kick handler of queue `q`, then lets the
    /// device finish what it has in flight (a disk's io_uring requests).
    fn serve(&mut self, q: usize) {
        if q < self.queues() {
            self.worker.handle_kick(q);
            self.worker.quiesce();
        }
    }

    /// One operation read from `inp` (see [`op`]).
    pub fn step(&mut self, inp: &mut Input, host: &mut dyn Host) {
        match inp.u8() % op::COUNT {
            op::WRITE_REG => {
                let off = u64::from(inp.u16() & 0x1ff);
                let width = 1 << (inp.u8() % 4);
                let v = inp.u64();
                self.write(off, width, v);
            }
            op::READ_REG => {
                let off = u64::from(inp.u16() & 0x1ff);
                let width = 1 << (inp.u8() % 4);
                self.read(off, width);
            }
            op::SETUP => {
                let mask = inp.u64();
                let ok = inp.u8() & 1 != 0;
                self.setup(mask, inp, ok);
            }
            op::DESC => {
                let q = self.queue(inp);
                let i = u16::from(inp.u8());
                let (addr, len, flags, next) = (inp.addr(), inp.len(), inp.u16(), inp.u16());
                self.put_desc(ring_base(q), i, addr, len, flags, next);
            }
            op::CHAIN => self.chain(inp),
            op::PUBLISH => {
                let q = self.queue(inp);
                let head = inp.u16();
                self.publish(q, head);
            }
            op::POKE => {
                let addr = inp.addr();
                let n = usize::from(inp.u8());
                let _ = self.mem.write_slice(inp.bytes(n), GuestAddress(addr));
            }
            op::KICK => {
                let q = self.queue(inp);
                if let Some(k) = self.kicks.get(q) {
                    let _ = k.write(1);
                }
                self.serve(q);
            }
            op::NOTIFY => {
                let v = inp.u32();
                self.write32(regs::QUEUE_NOTIFY, v);
                self.serve(v as usize & 0xffff);
            }
            op::HOST => host.event(self, inp),
            op::ACTIVATED => self.worker.handle_activated(),
            op::RING => {
                let q = self.queue(inp);
                let field = inp.u8() % 6;
                let v = inp.u16();
                let size = u64::from(self.sizes[q].clamp(1, 256));
                let base = ring_base(q);
                let at = match field {
                    0 => base + AVAIL,
                    1 => {
                        self.avail_idx[q] = v;
                        base + AVAIL + 2
                    }
                    2 => base + AVAIL + 4 + 2 * size,
                    3 => base + USED,
                    4 => base + USED + 2,
                    _ => base + USED + 4 + 8 * size,
                };
                let _ = self.mem.write_obj(v, GuestAddress(at));
            }
            _ => unreachable!("op codes are taken mod op::COUNT"),
        }
    }

    /// [`op::CHAIN`].
    fn chain(&mut self, inp: &mut Input) {
        let q = self.queue(inp);
        let code = inp.u8();
        let n = usize::from(code & 7) + 1;
        let indirect = code & 0x80 != 0;
        let size = self.sizes[q].clamp(1, 256);
        let head = self.next_desc[q] % size;
        let (table, first) = if indirect {
            (INDIRECT + q as u64 * 0x1000, 0)
        } else {
            (ring_base(q), head)
        };
        let ring = if indirect { n as u16 } else { size };
        for k in 0..n {
            let (addr, len) = (inp.addr(), inp.len());
            let write = inp.u8() & 1 != 0;
            if !write {
                let fill = usize::from(inp.u8()).min(len as usize);
                let _ = self.mem.write_slice(inp.bytes(fill), GuestAddress(addr));
            }
            let i = (first + k as u16) % ring;
            let last = k + 1 == n;
            let flags = if write { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.put_desc(table, i, addr, len, flags, (i + 1) % ring);
        }
        if indirect {
            self.put_desc(ring_base(q), head, table, 16 * n as u32, F_INDIRECT, 0);
            self.next_desc[q] = (head + 1) % size;
        } else {
            self.next_desc[q] = (head + n as u16) % size;
        }
        self.publish(q, head);
    }

    /// Runs the operations in `inp` until it ends (or [`MAX_STEPS`]).
    pub fn run(&mut self, inp: &mut Input, host: &mut dyn Host) {
        for _ in 0..MAX_STEPS {
            if inp.is_empty() {
                break;
            }
            self.step(inp, host);
        }
        // Interrupts are counted on the irqfd; reading it keeps the counter
        // far from its limit whatever the input.
        let irqs = self.irq.read().unwrap_or(0);
        if trace() {
            let used: Vec<u16> = (0..self.queues())
                .map(|q| {
                    let at = GuestAddress(ring_base(q) + USED + 2);
                    self.mem.read_obj(at).unwrap_or(0)
                })
                .collect();
            let status = self.read(regs::STATUS, 4);
            eprintln!("status {status:#x}, used ring indices {used:?}, {irqs} interrupts");
        }
    }
}

/// Whether `$SUBZERO_FUZZ_TRACE` is set: then each run prints the device
/// status, the used ring indices and the interrupt count at its end (to see
/// what a seed or a crashing input did, with the input as the argument).
fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("SUBZERO_FUZZ_TRACE").is_some())
}

/// Writes inputs in the format [`Driver::step`] reads, for seeds.
#[derive(Default)]
pub struct Program(pub Vec<u8>);

/// One descriptor of a [`Program::chain`]: address code, length,
/// device-writable, bytes written at the address.
pub type Buf<'a> = (u32, u32, bool, &'a [u8]);

impl Program {
    /// Raw bytes.
    pub fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// The per-device targets' prologue: feature mask, then a power-of-two
    /// size code per queue.
    pub fn prologue(mask: u64, queues: usize, size_log2: u8) -> Self {
        let mut p = Program::default().raw(&mask.to_le_bytes());
        for _ in 0..queues {
            p = p.raw(&[size_log2]);
        }
        p
    }
    /// [`op::WRITE_REG`] of 4 bytes.
    pub fn write_reg(self, off: u64, v: u32) -> Self {
        self.raw(&[op::WRITE_REG])
            .raw(&(off as u16).to_le_bytes())
            .raw(&[2])
            .raw(&u64::from(v).to_le_bytes())
    }
    /// [`op::READ_REG`] of 4 bytes.
    pub fn read_reg(self, off: u64) -> Self {
        self.raw(&[op::READ_REG])
            .raw(&(off as u16).to_le_bytes())
            .raw(&[2])
    }
    /// [`op::CHAIN`], direct or indirect.
    pub fn chain(mut self, q: u8, indirect: bool, bufs: &[Buf]) -> Self {
        assert!((1..=8).contains(&bufs.len()));
        let code = (bufs.len() as u8 - 1) | if indirect { 0x80 } else { 0 };
        self = self.raw(&[op::CHAIN, q, code]);
        for &(addr, len, write, fill) in bufs {
            self = self
                .raw(&addr.to_le_bytes())
                .raw(&len.to_le_bytes())
                .raw(&[u8::from(write)]);
            if !write {
                self = self.raw(&[fill.len() as u8]).raw(fill);
            }
        }
        self
    }
    /// [`op::KICK`].
    pub fn kick(self, q: u8) -> Self {
        self.raw(&[op::KICK, q])
    }
    /// [`op::NOTIFY`].
    pub fn notify(self, v: u32) -> Self {
        self.raw(&[op::NOTIFY]).raw(&v.to_le_bytes())
    }
    /// [`op::HOST`] with its arguments.
    pub fn host(self, args: &[u8]) -> Self {
        self.raw(&[op::HOST]).raw(args)
    }
}

/// A directory of this process's for the files and sockets the targets use:
/// under `$SUBZERO_FUZZ_SCRATCH` if set (`.ci/fuzz` sets it, and removes it
/// after), else in /dev/shm when there is one (a tmpfs is cheaper per
/// iteration).
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = match std::env::var_os("SUBZERO_FUZZ_SCRATCH") {
            Some(dir) => PathBuf::from(dir),
            None if shm.is_dir() => shm.to_path_buf(),
            None => std::env::temp_dir(),
        };
        let dir = base.join(format!("subzero-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    })
}

/// Writes `seeds` into the directory `$SUBZERO_FUZZ_SEEDS` names, if set
/// (`.ci/fuzz` sets it to the target's corpus before the run).
pub fn write_seeds(seeds: &[Vec<u8>]) {
    let Some(dir) = std::env::var_os("SUBZERO_FUZZ_SEEDS") else {
        return;
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("seed directory");
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i}")), s).expect("seed");
    }
}

/// The virtio-net device's host side: a datagram socket standing in for
/// the TAP. [`op::HOST`]: a frame length u32 (mod 70000, past the largest
/// frame), a count u8 and that many bytes of the frame (virtio-net header
/// first; the rest is zeros), sent as one datagram; then the device's event
/// runs.
pub struct NetHost {
    /// The peer end of the backend.
    pub peer: UnixDatagram,
}

impl NetHost {
    /// A device and its host side.
    pub fn device() -> (Box<dyn VirtioDevice>, NetHost) {
        let (a, b) = UnixDatagram::pair().expect("socketpair");
        b.set_nonblocking(true).expect("nonblocking");
        let net = subzero::fuzzing::net_on_backend(OwnedFd::from(a), [0x02, 0, 0, 0, 0, 1])
            .expect("net device");
        (Box::new(net), NetHost { peer: b })
    }
}

impl Host for NetHost {
    fn event(&mut self, d: &mut Driver, inp: &mut Input) {
        let len = inp.u32() as usize % 70_000;
        let n = usize::from(inp.u8());
        let mut frame = inp.bytes(n).to_vec();
        frame.resize(len, 0);
        let _ = self.peer.send(&frame);
        // Drain what the device sent, so the socket never fills.
        let mut buf = vec![0u8; 70_000];
        while self.peer.recv(&mut buf).is_ok() {}
        d.worker.handle_source(0);
    }
}

/// The vsock host port the guest can connect to (a listener in
/// [`scratch_dir`]); other ports have nobody listening.
pub const VSOCK_PORT: u32 = 1024;
/// The guest's CID.
pub const VSOCK_CID: u64 = 3;

/// The vsock device's host side: programs that connect to its socket, and
/// the host end of guest connections to [`VSOCK_PORT`]. [`op::HOST`]: an
/// action u8 and its arguments, then the device's event runs.
pub struct VsockHost {
    streams: Vec<UnixStream>,
    path: PathBuf,
}

fn vsock_paths() -> &'static (PathBuf, UnixListener) {
    static PATHS: OnceLock<(PathBuf, UnixListener)> = OnceLock::new();
    PATHS.get_or_init(|| {
        let path = scratch_dir().join("v");
        let port = PathBuf::from(format!("{}_{VSOCK_PORT}", path.display()));
        let _ = std::fs::remove_file(&port);
        let l = UnixListener::bind(&port).expect("vsock port listener");
        l.set_nonblocking(true).expect("nonblocking");
        (path, l)
    })
}

impl VsockHost {
    /// A device and its host side.
    pub fn device() -> (Box<dyn VirtioDevice>, VsockHost) {
        let (path, _) = vsock_paths();
        let v = subzero::devices::virtio::vsock::Vsock::new(VSOCK_CID, path).expect("vsock");
        (
            Box::new(v),
            VsockHost {
                streams: Vec::new(),
                path: path.clone(),
            },
        )
    }

    fn accept(&mut self) {
        let (_, l) = vsock_paths();
        while let Ok((s, _)) = l.accept() {
            let _ = s.set_nonblocking(true);
            self.streams.push(s);
        }
    }
}

impl Drop for VsockHost {
    fn drop(&mut self) {
        // Guest connections the device made after the last event.
        self.accept();
    }
}

impl Host for VsockHost {
    fn event(&mut self, d: &mut Driver, inp: &mut Input) {
        self.accept();
        let action = inp.u8();
        let k = usize::from(inp.u8()) % self.streams.len().max(1);
        match action % 4 {
            // A host program connects and sends its first bytes (the
            // CONNECT line).
            0 if self.streams.len() < 16 => {
                let n = usize::from(inp.u8());
                let line = inp.bytes(n);
                if let Ok(mut s) = UnixStream::connect(&self.path) {
                    let _ = s.set_nonblocking(true);
                    let _ = s.write_all(line);
                    self.streams.push(s);
                }
            }
            // A host end writes: a length u16, a count u8 and that many
            // bytes (the rest is zeros).
            1 => {
                let len = usize::from(inp.u16());
                let n = usize::from(inp.u8());
                let mut data = inp.bytes(n).to_vec();
                data.resize(len, 0);
                if let Some(s) = self.streams.get_mut(k) {
                    let _ = s.write(&data);
                }
            }
            // A host end reads what it has.
            2 => {
                if let Some(s) = self.streams.get_mut(k) {
                    let mut buf = [0u8; 4096];
                    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                }
            }
            // A host end closes.
            _ => {
                if k < self.streams.len() {
                    self.streams.swap_remove(k);
                }
            }
        }
        d.worker.handle_source(0);
    }
}

/// The block device's disk image: 64 KiB and 100 bytes (a partial last
/// sector), made once per process.
pub fn disk_image() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let p = scratch_dir().join("disk.img");
        std::fs::write(&p, vec![0xa5u8; (64 << 10) + 100]).expect("disk image");
        p
    })
}

/// The host side of any of the devices, for the transport target.
pub enum AnyHost {
    /// Entropy, or a disk image: nothing happens on the host side.
    None(NoHost),
    /// virtio-net's backend.
    Net(NetHost),
    /// virtio-vsock's sockets.
    Vsock(VsockHost),
}

impl Host for AnyHost {
    fn event(&mut self, d: &mut Driver, inp: &mut Input) {
        match self {
            AnyHost::None(h) => h.event(d, inp),
            AnyHost::Net(h) => h.event(d, inp),
            AnyHost::Vsock(h) => h.event(d, inp),
        }
    }
}

/// Device kinds, in the order [`device`] numbers them.
pub const DEVICES: [&str; 5] = ["rng", "block", "block-ro", "net", "vsock"];

/// Device `kind % DEVICES.len()` and its host side, built as a VM builds it.
pub fn device(kind: u8) -> (Box<dyn VirtioDevice>, AnyHost) {
    use subzero::devices::virtio::{block::Block, rng::Rng};
    match usize::from(kind) % DEVICES.len() {
        0 => (Box::new(Rng::default()), AnyHost::None(NoHost)),
        k @ (1 | 2) => {
            let b = Block::open(disk_image(), k == 2, None).expect("block device");
            (Box::new(b), AnyHost::None(NoHost))
        }
        3 => {
            let (d, h) = NetHost::device();
            (d, AnyHost::Net(h))
        }
        _ => {
            let (d, h) = VsockHost::device();
            (d, AnyHost::Vsock(h))
        }
    }
}

/// A per-device target: the input's first 8 bytes are the feature mask the
/// driver accepts (VERSION_1 always), then a size code per queue (as in
/// [`op::SETUP`]); DRIVER_OK follows, and the rest is operations.
pub fn run_device(device: Box<dyn VirtioDevice>, host: &mut dyn Host, data: &[u8]) {
    let mut inp = Input::new(data);
    let mut d = Driver::new(device);
    let mask = inp.u64() | subzero::devices::virtio::features::VERSION_1;
    d.setup(mask, &mut inp, true);
    d.run(&mut inp, host);
}
