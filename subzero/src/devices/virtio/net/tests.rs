//! virtio-net through the test driver, on a datagram socket pair standing
//! in for the TAP (one frame per datagram, header included, as a TAP with
//! IFF_VNET_HDR).

use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::*;
use crate::bus::BusDevice;
use crate::devices::virtio::mmio::regs;
use crate::devices::virtio::testing::{TestDriver, DATA, MEM_SIZE};

pub(super) const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// A device on a socket pair, its driver, and the device thread's view of
/// its event source.
pub(super) struct Rig {
    pub d: TestDriver,
    /// The host side of the "TAP".
    pub host: UnixDatagram,
    pub c: Arc<NetCounters>,
    /// Every offload setting the device gave its backend, in order.
    pub offloads: Arc<Mutex<Vec<u32>>>,
    /// Stands in for the device thread's epoll: watches the device's
    /// event fd level-triggered, like event-manager does.
    outer: Epoll,
    /// The receive and transmit rate limiters' timers.
    pub timers: [RawFd; 2],
}

/// Features without the offloads (and merged receive buffers): what the
/// tests written before them negotiate.
pub(super) const PLAIN: u64 = !OFFLOAD_FEATURES;

/// A backend offload setter that records the flags it is given.
pub(super) fn recorder() -> (SetOffload, Arc<Mutex<Vec<u32>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let set: SetOffload = Box::new(move |_, flags| {
        l.lock().unwrap().push(flags);
        Ok(())
    });
    (set, log)
}

/// A device with a recording offload setter.
fn with_recorder(fd: OwnedFd, name: &str, mac: Option<[u8; 6]>) -> Result<Net, NetError> {
    Net::with_backend(fd, name, mac, recorder().0)
}

impl Rig {
    /// A device brought to DRIVER_OK without offloads.
    pub fn new() -> Rig {
        Self::with(PLAIN)
    }

    /// A device brought to DRIVER_OK with every offered feature in `mask`.
    pub fn with(mask: u64) -> Rig {
        let mut r = Self::raw();
        r.d.setup_with(mask, |_, max| {
            max.min(crate::devices::virtio::testing::QSIZE)
        });
        assert!(!r.d.needs_reset());
        r
    }

    /// A device the driver has not initialized.
    pub fn raw() -> Rig {
        let (dev, host) = UnixDatagram::pair().unwrap();
        host.set_nonblocking(true).unwrap();
        let (set, offloads) = recorder();
        let net = Net::with_backend(OwnedFd::from(dev), "test", Some(MAC), set).unwrap();
        let c = net.counters();
        let fds = net.event_fds();
        assert_eq!(fds.len(), 3, "the TAP's epoll, the limiters' two timers");
        let outer = Epoll::new().unwrap();
        outer
            .ctl(
                ControlOperation::Add,
                fds[0] as RawFd,
                EpollEvent::new(EventSet::IN, 0),
            )
            .unwrap();
        Rig {
            d: TestDriver::raw(Box::new(net)),
            host,
            c,
            offloads,
            outer,
            timers: [fds[RX_TIMER], fds[TX_TIMER]],
        }
    }

    /// Runs the device thread until the device's event source is quiet and
    /// returns how many times it woke the device. Fails on a busy loop.
    pub fn run(&mut self) -> usize {
        let mut calls = 0;
        let mut ev = [EpollEvent::default(); 1];
        while self.outer.wait(0, &mut ev).unwrap() > 0 {
            self.d.source(0);
            calls += 1;
            assert!(calls < 1000, "the device thread spins on the TAP");
        }
        calls
    }

    /// Whether the device thread would wake up for this device now.
    pub fn wakes(&self) -> bool {
        let mut ev = [EpollEvent::default(); 1];
        self.outer.wait(0, &mut ev).unwrap() > 0
    }

    /// The host sends `packet` (header and frame) to the guest.
    pub fn send(&self, packet: &[u8]) {
        assert_eq!(self.host.send(packet).unwrap(), packet.len());
    }

    /// The next packet the guest sent, if any.
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MAX_PACKET + 100];
        match self.host.recv(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Some(buf)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("{e}"),
        }
    }

    pub fn guest(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.d.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    }

    pub fn poke(&self, addr: u64, bytes: &[u8]) {
        self.d.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }
}

pub(super) fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// A frame of `len` bytes: Ethernet addresses, then bytes from `seed`.
pub(super) fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// `frame` behind a clean virtio-net header.
pub(super) fn packet(frame: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; VNET_HDR_LEN];
    p.extend_from_slice(frame);
    p
}

/// The header the guest must see before every received frame.
const RX_HDR: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];

#[test]
fn a_transmitted_frame_reaches_the_tap_byte_for_byte() {
    let mut r = Rig::new();
    let f = frame(1514, 7);
    let p = packet(&f);
    // Header alone, then the frame split unevenly across two buffers.
    r.poke(DATA, &p[..12]);
    r.poke(DATA + 0x1000, &p[12..112]);
    r.poke(DATA + 0x3000, &p[112..]);
    let head = r.d.add_chain(
        TX_QUEUE,
        &[
            (DATA, 12, false),
            (DATA + 0x1000, 100, false),
            (DATA + 0x3000, 1414, false),
        ],
    );
    r.d.kick(TX_QUEUE);
    assert_eq!(r.recv().unwrap(), p);
    assert_eq!(r.recv(), None);
    assert_eq!(r.d.used(TX_QUEUE), vec![(u32::from(head), 0)]);
    assert!(r.d.interrupts() >= 1);
    assert_eq!(get(&r.c.tx_frames), 1);
    assert_eq!(get(&r.c.tx_bytes), 1514);
}

#[test]
fn a_received_frame_lands_behind_a_12_byte_header() {
    let mut r = Rig::new();
    let head = r.d.add_chain(RX_QUEUE, &[(DATA, 1526, true)]);
    r.d.kick(RX_QUEUE);
    assert!(r.d.used(RX_QUEUE).is_empty(), "no frame yet");
    let f = frame(60, 3);
    let mut p = packet(&f);
    // The kernel may say DATA_VALID and leaves num_buffers as it was: the
    // guest must see neither.
    p[0] = 2;
    p[10] = 0xaa;
    p[11] = 0xbb;
    r.send(&p);
    assert_eq!(r.run(), 1);
    assert_eq!(r.d.used(RX_QUEUE), vec![(u32::from(head), 72)]);
    assert_eq!(r.guest(DATA, 12), RX_HDR);
    assert_eq!(r.guest(DATA + 12, 60), f);
    assert!(r.d.interrupts() >= 1);
    assert_eq!(get(&r.c.rx_frames), 1);
    assert_eq!(get(&r.c.rx_bytes), 60);
    assert!(!r.wakes());
}

#[test]
fn a_received_frame_spans_several_buffers() {
    let mut r = Rig::new();
    let head = r.d.add_chain(
        RX_QUEUE,
        &[
            (DATA, 12, true),
            (DATA + 0x1000, 10, true),
            (DATA + 0x2000, 2000, true),
        ],
    );
    r.d.kick(RX_QUEUE);
    let f = frame(1514, 9);
    r.send(&packet(&f));
    r.run();
    assert_eq!(r.d.used(RX_QUEUE), vec![(u32::from(head), 1526)]);
    assert_eq!(r.guest(DATA, 12), RX_HDR);
    let mut got = r.guest(DATA + 0x1000, 10);
    got.extend(r.guest(DATA + 0x2000, 1504));
    assert_eq!(got, f);
}

#[test]
fn a_frame_larger_than_the_buffer_is_dropped_and_the_next_one_delivered() {
    let mut r = Rig::new();
    let small = r.d.add_chain(RX_QUEUE, &[(DATA, 100, true)]);
    let big = r.d.add_chain(RX_QUEUE, &[(DATA + 0x1000, 1526, true)]);
    r.d.kick(RX_QUEUE);
    r.send(&packet(&frame(500, 1)));
    let f = frame(80, 2);
    r.send(&packet(&f));
    r.run();
    assert_eq!(
        r.d.used(RX_QUEUE),
        vec![(u32::from(small), 0), (u32::from(big), 92)]
    );
    assert_eq!(r.guest(DATA + 0x1000 + 12, 80), f);
    assert_eq!(get(&r.c.rx_too_big), 1);
    assert_eq!(get(&r.c.rx_frames), 1);
    // Exactly fitting is fine.
    let exact = r.d.add_chain(RX_QUEUE, &[(DATA, 100, true)]);
    r.d.kick(RX_QUEUE);
    r.send(&packet(&frame(88, 5)));
    r.run();
    assert_eq!(r.d.used(RX_QUEUE)[2], (u32::from(exact), 100));
    assert!(!r.d.needs_reset());
}

#[test]
fn bad_transmit_chains_are_dropped_and_the_device_goes_on() {
    let mut r = Rig::new();
    let good = packet(&frame(64, 4));
    r.poke(DATA, &good);
    let mut offload = good.clone();
    offload[0] = 1; // NEEDS_CSUM
    r.poke(DATA + 0x1000, &offload);
    let mut gso = good.clone();
    gso[1] = 1; // GSO_TCPV4
    r.poke(DATA + 0x2000, &gso);

    let mut heads = vec![
        // A device-writable buffer: wrong direction.
        r.d.add_chain(TX_QUEUE, &[(DATA, 76, false), (DATA + 0x8000, 64, true)]),
        // Only writable.
        r.d.add_chain(TX_QUEUE, &[(DATA, 76, true)]),
        // Outside guest memory.
        r.d.add_chain(TX_QUEUE, &[(MEM_SIZE as u64 - 16, 76, false)]),
        // Absurd length.
        r.d.add_chain(TX_QUEUE, &[(DATA, u32::MAX, false)]),
        // One byte over the largest frame.
        r.d.add_chain(TX_QUEUE, &[(DATA, MAX_PACKET as u32 + 1, false)]),
        // A header and no Ethernet header.
        r.d.add_chain(TX_QUEUE, &[(DATA, 12, false)]),
        // Shorter than the header.
        r.d.add_chain(TX_QUEUE, &[(DATA, 5, false)]),
        // Offloads the device did not offer.
        r.d.add_chain(TX_QUEUE, &[(DATA + 0x1000, 76, false)]),
        r.d.add_chain(TX_QUEUE, &[(DATA + 0x2000, 76, false)]),
    ];
    // A loop: descriptor 12 points to itself.
    r.d.put_desc(TX_QUEUE, 12, DATA, 76, 1, 12);
    r.d.publish(TX_QUEUE, 12);
    heads.push(12);
    // Then a good one.
    heads.push(r.d.add_chain(TX_QUEUE, &[(DATA, 76, false)]));
    r.d.kick(TX_QUEUE);

    assert_eq!(r.recv().unwrap(), good);
    assert_eq!(r.recv(), None, "only the good frame reaches the TAP");
    let used = r.d.used(TX_QUEUE);
    let want: Vec<(u32, u32)> = heads.iter().map(|&h| (u32::from(h), 0)).collect();
    assert_eq!(used, want, "every chain comes back, with nothing written");
    assert_eq!(get(&r.c.tx_invalid), 10);
    assert_eq!(get(&r.c.tx_frames), 1);
    assert!(!r.d.needs_reset());

    // And it still works.
    r.d.add_chain(TX_QUEUE, &[(DATA, 76, false)]);
    r.d.kick(TX_QUEUE);
    assert_eq!(r.recv().unwrap(), good);
}

#[test]
fn bad_receive_chains_come_back_empty_and_the_frame_waits_for_a_good_one() {
    let mut r = Rig::new();
    let readable = r.d.add_chain(RX_QUEUE, &[(DATA, 1526, false)]);
    let mixed =
        r.d.add_chain(RX_QUEUE, &[(DATA, 12, false), (DATA + 0x1000, 1526, true)]);
    let outside =
        r.d.add_chain(RX_QUEUE, &[(MEM_SIZE as u64 - 100, 1526, true)]);
    r.d.put_desc(RX_QUEUE, 9, DATA, 1526, 1 | 2, 9);
    r.d.publish(RX_QUEUE, 9);
    let good = r.d.add_chain(RX_QUEUE, &[(DATA + 0x4000, 1526, true)]);
    r.d.kick(RX_QUEUE);
    let f = frame(100, 8);
    r.send(&packet(&f));
    r.run();
    assert_eq!(
        r.d.used(RX_QUEUE),
        vec![
            (u32::from(readable), 0),
            (u32::from(mixed), 0),
            (u32::from(outside), 0),
            (9, 0),
            (u32::from(good), 112)
        ]
    );
    assert_eq!(r.guest(DATA + 0x4000 + 12, 100), f);
    assert_eq!(r.guest(DATA, 12), vec![0; 12], "read-only buffer untouched");
    assert_eq!(get(&r.c.rx_bad_chains), 4);
    assert!(!r.d.needs_reset());
}

#[test]
fn frames_the_host_should_not_send_are_dropped() {
    let mut r = Rig::new();
    let head = r.d.add_chain(RX_QUEUE, &[(DATA, 0x1_0000 + 100, true)]);
    r.d.kick(RX_QUEUE);
    r.send(&[0u8; 5]); // shorter than the header
    r.send(&packet(&frame(13, 0))); // no full Ethernet header
    let mut p = packet(&frame(60, 0));
    p[0] = 1; // NEEDS_CSUM
    r.send(&p);
    p[0] = 0;
    p[1] = 4; // GSO_TCPV6
    r.send(&p);
    r.send(&packet(&frame(MAX_FRAME + 1, 0)));
    let f = frame(MAX_FRAME, 6);
    r.send(&packet(&f));
    r.run();
    assert_eq!(
        r.d.used(RX_QUEUE),
        vec![(u32::from(head), MAX_PACKET as u32)]
    );
    assert_eq!(r.guest(DATA + 12, MAX_FRAME), f);
    assert_eq!(get(&r.c.rx_invalid), 5);
}

#[test]
fn without_receive_buffers_the_device_thread_sleeps() {
    let mut r = Rig::new();
    for i in 0..5 {
        r.send(&packet(&frame(60, i)));
    }
    // One wake-up: the device reads one frame, finds no buffer, and stops
    // watching the TAP although four more frames wait there.
    assert_eq!(r.run(), 1);
    assert!(!r.wakes());
    assert_eq!(get(&r.c.rx_parked), 1);
    // More frames arriving change nothing.
    r.send(&packet(&frame(60, 5)));
    assert!(!r.wakes());

    // The guest gives two buffers: the held frame and the next go in, in order.
    let a = r.d.add_chain(RX_QUEUE, &[(DATA, 1526, true)]);
    let b = r.d.add_chain(RX_QUEUE, &[(DATA + 0x1000, 1526, true)]);
    r.d.kick(RX_QUEUE);
    assert_eq!(
        r.d.used(RX_QUEUE),
        vec![(u32::from(a), 72), (u32::from(b), 72)]
    );
    assert_eq!(r.guest(DATA + 12, 60), frame(60, 0));
    assert_eq!(r.guest(DATA + 0x1000 + 12, 60), frame(60, 1));
    assert!(!r.wakes(), "out of buffers again: still asleep");
    assert_eq!(get(&r.c.rx_parked), 2);

    // Enough buffers for the rest: everything arrives, and the TAP is
    // watched again.
    for k in 0..6 {
        r.d.add_chain(RX_QUEUE, &[(DATA + 0x2000 + k * 0x1000, 1526, true)]);
    }
    r.d.kick(RX_QUEUE);
    assert_eq!(r.d.used(RX_QUEUE).len(), 6);
    for (k, seed) in (2..6).enumerate() {
        assert_eq!(
            r.guest(DATA + 0x2000 + k as u64 * 0x1000 + 12, 60),
            frame(60, seed)
        );
    }
    assert!(!r.wakes());
    r.send(&packet(&frame(60, 9)));
    assert_eq!(r.run(), 1);
    assert_eq!(r.d.used(RX_QUEUE).len(), 7);
    assert_eq!(get(&r.c.rx_frames), 7);
    assert!(!r.d.needs_reset());
}

#[test]
fn frames_before_driver_ok_are_dropped_not_delivered_later() {
    let mut r = Rig::raw();
    r.send(&packet(&frame(60, 1)));
    r.send(&packet(&frame(60, 2)));
    assert_eq!(r.run(), 1, "drained in one go");
    assert!(!r.wakes());
    assert_eq!(get(&r.c.rx_not_ready), 2);

    r.d.setup(|_, max| max.min(16));
    let head = r.d.add_chain(RX_QUEUE, &[(DATA, 1526, true)]);
    r.d.kick(RX_QUEUE);
    assert!(r.d.used(RX_QUEUE).is_empty());
    r.send(&packet(&frame(60, 3)));
    r.run();
    assert_eq!(r.d.used(RX_QUEUE), vec![(u32::from(head), 72)]);
    assert_eq!(r.guest(DATA + 12, 60), frame(60, 3));
}

#[test]
fn a_reset_drops_the_held_frame_and_watches_the_tap_again() {
    let mut r = Rig::new();
    r.send(&packet(&frame(60, 1)));
    r.run();
    assert!(!r.wakes());
    r.d.write(regs::STATUS, 0);
    // Reset: frames are dropped until the driver is ready again.
    r.send(&packet(&frame(60, 2)));
    assert_eq!(r.run(), 1);
    assert_eq!(get(&r.c.rx_not_ready), 2, "the held frame and the new one");
    r.d.setup(|_, max| max.min(16));
    let head = r.d.add_chain(RX_QUEUE, &[(DATA, 1526, true)]);
    r.d.kick(RX_QUEUE);
    r.send(&packet(&frame(60, 3)));
    r.run();
    assert_eq!(r.d.used(RX_QUEUE), vec![(u32::from(head), 72)]);
    assert_eq!(r.guest(DATA + 12, 60), frame(60, 3));
}

#[test]
fn a_full_tap_drops_transmitted_frames_instead_of_blocking() {
    let mut r = Rig::new();
    let p = packet(&frame(60_000, 1));
    r.poke(DATA, &p);
    // The host never reads: the socket fills up after a few frames.
    let mut sent = 0;
    while get(&r.c.tx_backend_drops) == 0 {
        for _ in 0..8 {
            r.d.add_chain(TX_QUEUE, &[(DATA, p.len() as u32, false)]);
        }
        r.d.kick(TX_QUEUE);
        sent += 8;
        assert!(sent < 1000, "the socket never filled");
    }
    assert_eq!(get(&r.c.tx_frames) + get(&r.c.tx_backend_drops), sent);
    assert_eq!(
        r.d.used(TX_QUEUE).len() as u64,
        sent,
        "every chain came back"
    );
    assert!(!r.d.needs_reset());
    // Once the host reads, frames flow again.
    while r.recv().is_some() {}
    let before = get(&r.c.tx_frames);
    r.d.add_chain(TX_QUEUE, &[(DATA, p.len() as u32, false)]);
    r.d.kick(TX_QUEUE);
    assert_eq!(get(&r.c.tx_frames), before + 1);
    assert_eq!(r.recv().unwrap(), p);
}

/// Sets the available index of queue `q` (the test driver's rings start at
/// 0x10_0000, 0x1_0000 apart; avail at +0x4000).
fn set_avail_idx(r: &Rig, q: usize, idx: u16) {
    let at = 0x10_0000 + q as u64 * 0x1_0000 + 0x4000 + 2;
    r.d.mem.write_obj(idx, GuestAddress(at)).unwrap();
}

#[test]
fn an_available_index_out_of_range_needs_reset_instead_of_hanging() {
    let mut r = Rig::new();
    set_avail_idx(&r, TX_QUEUE, 1000);
    r.d.kick(TX_QUEUE);
    assert!(r.d.needs_reset());

    let mut r = Rig::new();
    set_avail_idx(&r, RX_QUEUE, 1000);
    r.d.kick(RX_QUEUE);
    r.send(&packet(&frame(60, 0)));
    r.run();
    assert!(r.d.needs_reset());
    // Broken: frames are drained, not spun on.
    r.send(&packet(&frame(60, 0)));
    assert_eq!(r.run(), 1);
}

#[test]
fn config_space_holds_the_mac_and_link_up() {
    let mut r = Rig::raw();
    assert_eq!(r.d.read(regs::DEVICE_ID), types::NET);
    r.d.write(regs::DEVICE_FEATURES_SEL, 0);
    let low = r.d.read(regs::DEVICE_FEATURES);
    let transport = (1 << 28) | (1 << 29);
    // CSUM, GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN, HOST_TSO4/6, HOST_ECN,
    // MRG_RXBUF, MAC, STATUS; nothing else (no UFO, no control queue).
    let offloads = 0b1011_1011_1000_0011;
    assert_eq!(u64::from(offloads), OFFLOAD_FEATURES);
    assert_eq!(low & !transport, offloads | (1 << 5) | (1 << 16));
    r.d.write(regs::DEVICE_FEATURES_SEL, 1);
    assert_eq!(r.d.read(regs::DEVICE_FEATURES), 1, "VERSION_1 only");
    for q in 0..2 {
        r.d.write(regs::QUEUE_SEL, q);
        assert_eq!(r.d.read(regs::QUEUE_NUM_MAX), 256);
    }
    r.d.write(regs::QUEUE_SEL, 2);
    assert_eq!(r.d.read(regs::QUEUE_NUM_MAX), 0);

    let cfg = |r: &mut Rig, off: u64, len: usize| {
        let mut b = vec![0xeeu8; len];
        r.d.transport.read(regs::CONFIG + off, &mut b);
        b
    };
    assert_eq!(cfg(&mut r, 0, 6), MAC);
    assert_eq!(cfg(&mut r, 6, 2), [1, 0], "VIRTIO_NET_S_LINK_UP");
    assert_eq!(cfg(&mut r, 4, 4), [0x34, 0x56, 1, 0]);
    assert_eq!(cfg(&mut r, 7, 8), [0; 8]);
    assert_eq!(cfg(&mut r, 100, 4), [0; 4]);
    let mut b = [0xeeu8; 4];
    r.d.with_device(|dev| dev.read_config(u64::MAX, &mut b));
    assert_eq!(b, [0; 4]);
    r.d.with_device(|dev| dev.read_config(u64::MAX - 2, &mut b));
    assert_eq!(b, [0; 4]);
    // The driver cannot change the MAC.
    r.d.transport.write(regs::CONFIG, &[0xff; 4]);
    assert_eq!(cfg(&mut r, 0, 6), MAC);
}

#[test]
fn parse_mac_accepts_unicast_and_refuses_the_rest() {
    assert_eq!(parse_mac("52:54:00:12:34:56").unwrap(), MAC);
    assert_eq!(
        parse_mac("AA:bb:0C:dd:EE:ff").unwrap(),
        [0xaa, 0xbb, 0x0c, 0xdd, 0xee, 0xff]
    );
    for bad in [
        "",
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "52:54:00:12:34:5",
        "52:54:00:12:34:567",
        "52-54-00-12-34-56",
        "52:54:00:12:34:5g",
        "52:54:00:12:34:+5",
        " 52:54:00:12:34:56",
        "52:54:00:12:34:56:",
        "00:00:00:00:00:00",
        "01:00:5e:00:00:01", // multicast
        "ff:ff:ff:ff:ff:ff", // broadcast
        "53:54:00:12:34:56", // multicast bit
    ] {
        assert!(parse_mac(bad).is_err(), "{bad:?} accepted");
    }
    let e = parse_mac("01:00:5e:00:00:01").unwrap_err().to_string();
    assert!(e.contains("multicast"), "{e}");
    assert_eq!(format_mac(&MAC), "52:54:00:12:34:56");
}

#[test]
fn the_default_mac_is_random_locally_administered_unicast() {
    let (a, _h1) = UnixDatagram::pair().unwrap();
    let (b, _h2) = UnixDatagram::pair().unwrap();
    let a = with_recorder(OwnedFd::from(a), "a", None).unwrap().mac();
    let b = with_recorder(OwnedFd::from(b), "b", None).unwrap().mac();
    for m in [a, b] {
        assert_eq!(m[0] & 0x03, 0x02, "{}", format_mac(&m));
    }
    assert_ne!(a, b);
    let (c, _h3) = UnixDatagram::pair().unwrap();
    let e = with_recorder(OwnedFd::from(c), "c", Some([1, 2, 3, 4, 5, 6])).unwrap_err();
    assert!(matches!(e, NetError::InvalidMac { .. }), "{e}");
}

/// A raw packet socket on interface `ifindex` for EtherType `proto`,
/// non-blocking: the host side of a real TAP.
fn packet_socket(ifindex: u32, proto: u16) -> std::io::Result<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: socket(2) takes no pointers.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            i32::from(proto.to_be()),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: proto.to_be(),
        sll_ifindex: ifindex as i32,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    };
    // SAFETY: bind(2) reads `size_of::<sockaddr_ll>()` bytes at `addr`,
    // which lives across the call.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(std::fs::File::from(fd))
}

/// A real TAP, brought up, with a guest on one side and a packet socket on
/// the other: checks the header size and contents the kernel really uses.
/// Skipped (with the reason printed) where TAP devices cannot be made.
#[test]
fn a_real_tap_carries_frames_both_ways() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    const ETHERTYPE: u16 = 0x88b5; // IEEE local experimental
    let name = format!("sbzn{}", std::process::id() % 10_000_000);
    let net = match Net::open(&name, Some(MAC)) {
        Ok(n) => n,
        Err(e @ (NetError::NoTunDevice | NetError::Permission(_))) => {
            return eprintln!("skipped: cannot open a TAP device here: {e}");
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!((net.mac(), net.tap_name()), (MAC, name.as_str()));
    let c = net.counters();
    let source = net.event_fds()[0];
    let mut d = TestDriver::new(Box::new(net));
    // Less noise from the host: no IPv6 on this interface (best effort).
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    match std::process::Command::new("ip")
        .args(["link", "set", "dev", &name, "up"])
        .status()
    {
        Ok(s) if s.success() => {}
        other => return eprintln!("skipped: cannot bring {name} up: {other:?}"),
    }
    let ifindex = {
        let cname = std::ffi::CString::new(name.clone()).unwrap();
        // SAFETY: `cname` is a NUL-terminated string alive across the call.
        unsafe { libc::if_nametoindex(cname.as_ptr()) }
    };
    assert_ne!(ifindex, 0);
    let mut host = packet_socket(ifindex, ETHERTYPE).unwrap();
    let deadline = || Instant::now() + Duration::from_secs(2);

    // Guest to host.
    let mut eth = vec![0xff; 6];
    eth.extend_from_slice(&MAC);
    eth.extend_from_slice(&ETHERTYPE.to_be_bytes());
    let mut out = eth.clone();
    out.extend(frame(100, 1));
    d.mem
        .write_slice(&packet(&out), GuestAddress(DATA))
        .unwrap();
    d.add_chain(TX_QUEUE, &[(DATA, (12 + out.len()) as u32, false)]);
    d.kick(TX_QUEUE);
    assert_eq!(
        get(&c.tx_frames),
        1,
        "errors: {}",
        get(&c.tx_backend_errors)
    );
    let mut buf = vec![0u8; 4096];
    let end = deadline();
    let n = loop {
        match host.read(&mut buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("the host never saw the guest's frame: {e}"),
        }
    };
    assert_eq!(
        &buf[..n],
        &out[..],
        "the host sees the frame without header"
    );

    // Host to guest.
    for k in 0..8 {
        d.add_chain(RX_QUEUE, &[(DATA + 0x1_0000 * (k + 1), 1526, true)]);
    }
    d.kick(RX_QUEUE);
    let mut back = MAC.to_vec();
    back.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    back.extend_from_slice(&ETHERTYPE.to_be_bytes());
    back.extend(frame(200, 2));
    assert_eq!(host.write(&back).unwrap(), back.len());
    let outer = Epoll::new().unwrap();
    outer
        .ctl(
            ControlOperation::Add,
            source,
            EpollEvent::new(EventSet::IN, 0),
        )
        .unwrap();
    let end = deadline();
    let mut ev = [EpollEvent::default(); 1];
    let found = loop {
        if outer.wait(100, &mut ev).unwrap() > 0 {
            d.source(0);
        }
        // Other traffic from the host may come first: look for ours.
        let hit = d.used(RX_QUEUE).into_iter().find(|&(head, len)| {
            let at = DATA + 0x1_0000 * (u64::from(head) + 1);
            let mut ty = [0u8; 2];
            d.mem
                .read_slice(&mut ty, GuestAddress(at + 12 + 12))
                .unwrap();
            len as usize == 12 + back.len() && ty == ETHERTYPE.to_be_bytes()
        });
        if let Some(h) = hit {
            break h;
        }
        assert!(Instant::now() < end, "the guest never got the host's frame");
    };
    let at = DATA + 0x1_0000 * (u64::from(found.0) + 1);
    let mut got = vec![0u8; 12 + back.len()];
    d.mem.read_slice(&mut got, GuestAddress(at)).unwrap();
    assert_eq!(got[..12], RX_HDR, "clean header, num_buffers 1");
    assert_eq!(&got[12..], &back[..]);
    assert!(!d.needs_reset());
}

// --- Offloads and mergeable receive buffers ---

/// Every feature the device offers.
const ALL: u64 = u64::MAX;

/// A header as the guest or the kernel writes it: flags, GSO type,
/// hdr_len, gso_size, csum_start, csum_offset, num_buffers.
fn hdr(flags: u8, gso: u8, hdr_len: u16, gso_size: u16, start: u16, off: u16, nb: u16) -> Vec<u8> {
    let mut h = vec![flags, gso];
    for v in [hdr_len, gso_size, start, off, nb] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h
}

/// `frame` behind header `h`.
fn with_hdr(h: &[u8], frame: &[u8]) -> Vec<u8> {
    let mut p = h.to_vec();
    p.extend_from_slice(frame);
    p
}

fn feature(b: u32) -> u64 {
    1 << b
}

#[test]
fn activation_sets_the_tap_offloads_the_driver_accepted_and_reset_clears_them() {
    use virtio_bindings::bindings::virtio_net as vn;
    let all = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
    // The driver resets the device first (0), then activates it.
    let mut r = Rig::with(ALL);
    assert_eq!(*r.offloads.lock().unwrap(), vec![0, all]);
    r.d.write(regs::STATUS, 0);
    assert_eq!(
        *r.offloads.lock().unwrap(),
        vec![0, all, 0],
        "reset clears them"
    );

    let r = Rig::new();
    assert_eq!(
        *r.offloads.lock().unwrap(),
        vec![0, 0],
        "no GUEST_* feature"
    );

    let csum = feature(vn::VIRTIO_NET_F_GUEST_CSUM);
    let r = Rig::with(PLAIN | csum);
    assert_eq!(*r.offloads.lock().unwrap(), vec![0, libc::TUN_F_CSUM]);
    let tso4 = feature(vn::VIRTIO_NET_F_GUEST_TSO4);
    let ecn = feature(vn::VIRTIO_NET_F_GUEST_ECN);
    // TSO without GUEST_CSUM, ECN without TSO: the prerequisites are missing.
    assert_eq!(tun_offloads(tso4 | ecn), 0);
    assert_eq!(tun_offloads(csum | ecn), libc::TUN_F_CSUM);
    assert_eq!(
        tun_offloads(csum | tso4 | ecn),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO_ECN
    );
}

#[test]
fn a_failing_offload_setting_is_counted_and_offloaded_frames_are_dropped() {
    let (dev, host) = UnixDatagram::pair().unwrap();
    host.set_nonblocking(true).unwrap();
    let set: SetOffload = Box::new(|_, _| Err(std::io::Error::from_raw_os_error(libc::EINVAL)));
    let net = Net::with_backend(OwnedFd::from(dev), "test", Some(MAC), set).unwrap();
    let c = net.counters();
    let mut d = TestDriver::new(Box::new(net));
    assert!(!d.needs_reset(), "the device works without offloads");
    assert_eq!(get(&c.offload_errors), 2, "at the reset and the activation");
    let head = d.add_chain(RX_QUEUE, &[(DATA, 4096, true)]);
    d.kick(RX_QUEUE);
    let f = frame(100, 1);
    host.send(&with_hdr(&hdr(1, 0, 0, 0, 34, 16, 0), &f))
        .unwrap();
    host.send(&with_hdr(&hdr(2, 0, 0, 0, 0, 0, 0), &f)).unwrap();
    d.source(0);
    assert_eq!(get(&c.rx_invalid), 1, "NEEDS_CSUM: the TAP may not send it");
    assert_eq!(d.used(RX_QUEUE), vec![(u32::from(head), 112)]);
    let mut h = [0u8; 12];
    d.mem.read_slice(&mut h, GuestAddress(DATA)).unwrap();
    assert_eq!(h, RX_HDR, "DATA_VALID cleared: flags as without GUEST_CSUM");
}

#[test]
fn a_segmentation_header_goes_to_the_tap_byte_for_byte() {
    let mut r = Rig::with(ALL);
    let f = frame(9000, 3);
    let packets = [
        // TCPv4 with ECN, csum at 34+16; num_buffers as the guest left it.
        with_hdr(&hdr(1, 0x81, 66, 1448, 34, 16, 0x1234), &f),
        with_hdr(&hdr(1, 4, 86, 1428, 54, 16, 0), &f),
        with_hdr(&hdr(1, 0, 0, 0, 34, 6, 0), &f[..1514]),
        // Nonsense for the kernel (no gso_size), fine for the device: the
        // TAP judges it.
        with_hdr(&hdr(0, 1, 0xffff, 0, 0xffff, 0xffff, 0xffff), &f),
        with_hdr(&hdr(1, 1, 66, 1448, 34, 16, 0), &frame(MAX_FRAME, 4)),
    ];
    for (k, p) in packets.iter().enumerate() {
        let at = DATA + k as u64 * 0x2_0000;
        r.poke(at, p);
        // Header and frame in separate buffers, as Linux sends them.
        r.d.add_chain(
            TX_QUEUE,
            &[(at, 12, false), (at + 12, (p.len() - 12) as u32, false)],
        );
    }
    r.d.kick(TX_QUEUE);
    for p in &packets {
        assert_eq!(&r.recv().unwrap(), p);
    }
    assert_eq!(get(&r.c.tx_frames), packets.len() as u64);
    assert_eq!(get(&r.c.tx_invalid), 0);
}

#[test]
fn transmit_offloads_the_driver_did_not_negotiate_are_dropped() {
    use virtio_bindings::bindings::virtio_net as vn;
    let f = frame(2000, 5);
    let csum = feature(vn::VIRTIO_NET_F_CSUM);
    let tso4 = feature(vn::VIRTIO_NET_F_HOST_TSO4);
    // (features, flags, gso type, allowed)
    let cases = [
        (PLAIN, 1, 0, false),
        (PLAIN | csum, 1, 0, true),
        (PLAIN | csum, 1, 1, false),
        (PLAIN | tso4, 1, 1, false), // HOST_TSO4 needs CSUM
        (PLAIN | csum | tso4, 1, 1, true),
        (PLAIN | csum | tso4, 1, 4, false),
        (PLAIN | csum | tso4, 1, 0x81, false), // no HOST_ECN
        (ALL, 1, 0x81, true),
        (ALL, 1, 3, false), // UDP: not offered
        (ALL, 1, 5, false), // UDP_L4: not offered
        (ALL, 0, 0x80, false),
        (ALL, 2, 0, false), // DATA_VALID is not for transmit
        (ALL, 4, 0, false),
    ];
    for (i, &(features, flags, gso, ok)) in cases.iter().enumerate() {
        let mut r = Rig::with(features);
        let p = with_hdr(&hdr(flags, gso, 54, 1448, 34, 16, 0), &f);
        r.poke(DATA, &p);
        let head = r.d.add_chain(TX_QUEUE, &[(DATA, p.len() as u32, false)]);
        r.d.kick(TX_QUEUE);
        assert_eq!(r.recv().is_some(), ok, "case {i}");
        assert_eq!(get(&r.c.tx_invalid), u64::from(!ok), "case {i}");
        assert_eq!(r.d.used(TX_QUEUE), vec![(u32::from(head), 0)], "case {i}");
        assert!(!r.d.needs_reset());
    }
}

#[test]
fn received_offload_headers_are_kept_if_negotiated() {
    use virtio_bindings::bindings::virtio_net as vn;
    let mut r = Rig::with(ALL);
    for k in 0..4 {
        r.d.add_chain(RX_QUEUE, &[(DATA + k * 0x1_0000, 0x1_0000, true)]);
    }
    r.d.kick(RX_QUEUE);
    let f = frame(30_000, 2);
    let gso = hdr(1 | 2 | 4, 1, 66, 1448, 34, 16, 0xbeef);
    r.send(&with_hdr(&gso, &f));
    r.send(&with_hdr(&hdr(0, 3, 0, 0, 0, 0, 0), &f)); // UDP: dropped
    r.run();
    assert_eq!(get(&r.c.rx_invalid), 1);
    assert_eq!(r.d.used(RX_QUEUE), vec![(0, 30_012)]);
    // RSC_INFO (4) cleared, num_buffers 1, the rest as the kernel wrote it.
    assert_eq!(r.guest(DATA, 12), hdr(3, 1, 66, 1448, 34, 16, 1));
    assert_eq!(r.guest(DATA + 12, 30_000), f);

    // GUEST_CSUM without TSO: a segment batch is refused.
    let mut r = Rig::with(PLAIN | feature(vn::VIRTIO_NET_F_GUEST_CSUM));
    r.d.add_chain(RX_QUEUE, &[(DATA, 0x1_0000, true)]);
    r.d.kick(RX_QUEUE);
    r.send(&with_hdr(&hdr(1, 4, 66, 1448, 54, 16, 0), &f));
    r.send(&with_hdr(&hdr(1, 0, 0, 0, 34, 16, 0), &f[..1514]));
    r.run();
    assert_eq!(get(&r.c.rx_invalid), 1);
    assert_eq!(r.d.used(RX_QUEUE), vec![(0, 1526)]);
    assert_eq!(r.guest(DATA, 12), hdr(1, 0, 0, 0, 34, 16, 1));
}

#[test]
fn a_frame_spreads_over_three_merged_buffers() {
    let mut r = Rig::with(ALL);
    let heads: Vec<u16> = (0..4)
        .map(|k| r.d.add_chain(RX_QUEUE, &[(DATA + k * 0x1000, 1000, true)]))
        .collect();
    r.d.kick(RX_QUEUE);
    let f = frame(2500, 6);
    r.send(&packet(&f));
    r.run();
    let h = |k: usize| u32::from(heads[k]);
    assert_eq!(
        r.d.used(RX_QUEUE),
        vec![(h(0), 1000), (h(1), 1000), (h(2), 512)]
    );
    assert_eq!(r.guest(DATA, 12), hdr(0, 0, 0, 0, 0, 0, 3), "num_buffers 3");
    let mut got = r.guest(DATA + 12, 988);
    got.extend(r.guest(DATA + 0x1000, 1000));
    got.extend(r.guest(DATA + 0x2000, 512));
    assert_eq!(got, f);
    // The fourth chain takes the next frame alone.
    r.send(&packet(&frame(60, 1)));
    r.run();
    assert_eq!(r.d.used(RX_QUEUE)[3], (h(3), 72));
    assert_eq!(r.guest(DATA + 0x3000, 12), RX_HDR);
    assert_eq!(get(&r.c.rx_frames), 2);
}

#[test]
fn a_frame_waits_without_consuming_buffers_until_enough_arrive() {
    let mut r = Rig::with(ALL);
    let a = r.d.add_chain(RX_QUEUE, &[(DATA, 1000, true)]);
    let b = r.d.add_chain(RX_QUEUE, &[(DATA + 0x1000, 1000, true)]);
    r.d.kick(RX_QUEUE);
    let f = frame(2500, 7);
    r.send(&packet(&f));
    r.send(&packet(&frame(60, 8)));
    assert_eq!(r.run(), 1);
    assert!(r.d.used(RX_QUEUE).is_empty(), "nothing consumed");
    assert_eq!(get(&r.c.rx_parked), 1);
    assert!(!r.wakes(), "asleep until the driver kicks");
    // A chain smaller than the header is refused, then one that is enough.
    let tiny = r.d.add_chain(RX_QUEUE, &[(DATA + 0x2000, 11, true)]);
    let c = r.d.add_chain(
        RX_QUEUE,
        &[(DATA + 0x3000, 200, true), (DATA + 0x4000, 400, true)],
    );
    r.d.kick(RX_QUEUE);
    assert_eq!(
        r.d.used(RX_QUEUE),
        vec![
            (u32::from(tiny), 0),
            (u32::from(a), 1000),
            (u32::from(b), 1000),
            (u32::from(c), 512)
        ]
    );
    assert_eq!(get(&r.c.rx_bad_chains), 1);
    let mut got = r.guest(DATA + 12, 988);
    got.extend(r.guest(DATA + 0x1000, 1000));
    got.extend(r.guest(DATA + 0x3000, 200));
    got.extend(r.guest(DATA + 0x4000, 312));
    assert_eq!(got, f);
    assert_eq!(r.guest(DATA, 12), hdr(0, 0, 0, 0, 0, 0, 3));
    // The 60-byte frame waits for the next buffer.
    assert_eq!(get(&r.c.rx_parked), 2);
    let d = r.d.add_chain(RX_QUEUE, &[(DATA + 0x5000, 1000, true)]);
    r.d.kick(RX_QUEUE);
    assert_eq!(r.d.used(RX_QUEUE)[4], (u32::from(d), 72));
    assert_eq!(r.guest(DATA + 0x5000 + 12, 60), frame(60, 8));
    assert!(!r.d.needs_reset());
}

#[test]
fn a_frame_larger_than_a_queue_of_merged_buffers_is_dropped() {
    let mut r = Rig::with(ALL);
    let qsize = crate::devices::virtio::testing::QSIZE;
    let heads: Vec<u16> = (0..qsize)
        .map(|k| {
            r.d.add_chain(RX_QUEUE, &[(DATA + u64::from(k) * 0x1000, 100, true)])
        })
        .collect();
    r.d.kick(RX_QUEUE);
    r.send(&packet(&frame(1600, 1))); // 1612 bytes > 16 * 100
    r.send(&packet(&frame(150, 2)));
    r.run();
    assert_eq!(get(&r.c.rx_too_big), 1);
    assert_eq!(
        r.d.used(RX_QUEUE),
        vec![(u32::from(heads[0]), 100), (u32::from(heads[1]), 62)],
        "the chains serve the next frame"
    );
    assert_eq!(r.guest(DATA, 12), hdr(0, 0, 0, 0, 0, 0, 2));
    assert!(!r.wakes());
    assert!(!r.d.needs_reset());
}

#[test]
fn a_reset_forgets_the_gathered_buffers() {
    let mut r = Rig::with(ALL);
    r.d.add_chain(RX_QUEUE, &[(DATA, 1000, true)]);
    r.d.kick(RX_QUEUE);
    r.send(&packet(&frame(2500, 1)));
    r.run();
    assert!(
        r.d.used(RX_QUEUE).is_empty(),
        "one chain gathered, the frame waits"
    );
    r.d.write(regs::STATUS, 0);
    assert_eq!(get(&r.c.rx_not_ready), 1);
    // Same rings again: the device starts over at available entry 0,
    // which still names descriptor 0; a second chain follows.
    r.d.setup_with(ALL, |_, max| {
        max.min(crate::devices::virtio::testing::QSIZE)
    });
    r.d.add_chain(RX_QUEUE, &[(DATA + 0x1000, 1000, true)]);
    r.d.kick(RX_QUEUE);
    r.send(&packet(&frame(1500, 2)));
    r.run();
    assert_eq!(r.d.used(RX_QUEUE), vec![(0, 1000), (1, 512)]);
    assert!(!r.d.needs_reset());
}
