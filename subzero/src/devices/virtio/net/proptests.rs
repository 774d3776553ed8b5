//! Property tests: arbitrary descriptor tables and guest bytes through the
//! transmit path, arbitrary frame sizes and buffer layouts through the
//! receive path, with and without offloads and mergeable buffers. The number of cases follows PROPTEST_CASES (default 64
//! here, so a plain `cargo test` stays quick).

use std::collections::VecDeque;

use proptest::prelude::*;
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

use super::tests::{get, Rig};
use super::*;
use crate::devices::virtio::testing::{DATA, MEM_SIZE, QSIZE};

fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 64;
    }
    c
}

/// Deterministic bytes from `seed` (xorshift), to fill guest memory.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A descriptor as the driver wrote it, unchecked.
#[derive(Debug, Clone)]
struct RawDesc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn raw_desc(flag_mask: u16, max_next: u16) -> impl Strategy<Value = RawDesc> {
    let addr = prop_oneof![
        8 => (0u64..0x1_0000).prop_map(|o| DATA + o),
        1 => (0u64..128).prop_map(|o| MEM_SIZE as u64 - o),
        1 => (0u64..16).prop_map(|o| u64::MAX - o),
        1 => any::<u64>(),
    ];
    // Lengths around the limits a frame must respect come up often.
    let edges = vec![0u32, 1, 2, 11, 12, 13, 14, 25, 26, 27, 1514, 1526];
    let len = prop_oneof![
        3 => prop::sample::select(edges),
        5 => 0u32..120,
        3 => 0u32..2000,
        1 => (MAX_PACKET as u32 - 40)..(MAX_PACKET as u32 + 4),
        1 => any::<u32>(),
    ];
    (addr, len, any::<u16>(), 0..max_next).prop_map(move |(addr, len, flags, next)| RawDesc {
        addr,
        len,
        flags: flags & flag_mask,
        next,
    })
}

/// A transmit queue's worth of driver input.
#[derive(Debug, Clone)]
struct TxCase {
    table: Vec<RawDesc>,
    heads: Vec<u16>,
    seed: u64,
    headers: Headers,
}

/// What the first bytes of every buffer hold, so that most headers ask
/// for no offload and frames get through.
#[derive(Debug, Clone, Copy)]
enum Headers {
    /// Flags and GSO type zero.
    Clean,
    /// Flags zero, GSO type random.
    Gso,
    /// Random.
    Noise,
}

fn tx_case(flag_mask: u16, max_index: u16) -> impl Strategy<Value = TxCase> {
    (
        prop::collection::vec(raw_desc(flag_mask, max_index), QSIZE as usize),
        prop::collection::vec(0..max_index, 1..8),
        any::<u64>(),
        prop_oneof![7 => Just(Headers::Clean), 2 => Just(Headers::Gso), 1 => Just(Headers::Noise)],
    )
        .prop_map(|(table, heads, seed, headers)| TxCase {
            table,
            heads,
            seed,
            headers,
        })
}

/// Fills guest memory for `case`.
fn fill(r: &Rig, case: &TxCase) {
    r.poke(DATA, &noise(case.seed, 0x3_0000));
    let zero: &[u8] = match case.headers {
        Headers::Clean => &[0, 0],
        Headers::Gso => &[0],
        Headers::Noise => &[],
    };
    for d in &case.table {
        let _ = r.d.mem.write_slice(zero, GuestAddress(d.addr));
    }
}

/// Writes the case's table, memory and available ring, and kicks.
fn run_tx(r: &mut Rig, case: &TxCase) {
    fill(r, case);
    for (i, d) in case.table.iter().enumerate() {
        r.d.put_desc(TX_QUEUE, i as u16, d.addr, d.len, d.flags, d.next);
    }
    for &h in &case.heads {
        r.d.publish(TX_QUEUE, h);
    }
    r.d.kick(TX_QUEUE);
}

/// The descriptors a conforming device sees from `head` (virtio 1.x 2.7.5.2:
/// at most a queue's worth, a chain no longer than 4 GiB).
fn walk(table: &[RawDesc], head: u16) -> Vec<Descriptor> {
    let size = table.len() as u16;
    let (mut out, mut i, mut total) = (Vec::new(), head, 0u32);
    while out.len() < size as usize && i < size {
        let d = &table[i as usize];
        let Some(t) = total.checked_add(d.len) else {
            break;
        };
        total = t;
        out.push(Descriptor::new(d.addr, d.len, d.flags, d.next));
        if d.flags & VRING_DESC_F_NEXT as u16 == 0 {
            break;
        }
        i = d.next;
    }
    out
}

/// What must reach the TAP for the chain at `head`: exactly the guest's
/// readable bytes, if the chain is valid and carries a plain frame.
fn expected_tx(r: &Rig, table: &[RawDesc], head: u16) -> Option<Vec<u8>> {
    let descs = walk(table, head);
    let chain = DescChain::from_descriptors(&r.d.mem, head, &descs, MAX_PACKET as u64).ok()?;
    if !chain.writable.is_empty() {
        return None;
    }
    let mut bytes = Vec::new();
    for d in &descs {
        bytes.extend(r.guest(d.addr().0, d.len() as usize));
    }
    let plain = bytes.len() >= 26 && bytes.len() <= MAX_PACKET && bytes[0] == 0 && bytes[1] == 0;
    plain.then_some(bytes)
}

/// The frames the TAP received.
fn received(r: &Rig) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| r.recv()).collect()
}

#[derive(Debug, Clone, Copy)]
enum Hdr {
    /// All zero, as the kernel sends without offloads.
    Clean,
    /// DATA_VALID and a stray num_buffers: delivered with a clean header.
    DataValid,
    /// NEEDS_CSUM or a GSO type: dropped.
    Offload,
}

#[derive(Debug, Clone)]
struct RxChain {
    /// Sizes of the device-writable buffers.
    bufs: Vec<u32>,
    /// A device-readable buffer first: the wrong direction.
    readable: bool,
    /// Instead of `bufs`, one buffer this many bytes longer than the frame
    /// the chain will receive (-1: one byte short).
    fit: Option<i8>,
}

#[derive(Debug, Clone)]
enum Op {
    /// The host sends a packet of `len` bytes, header included.
    Send { len: usize, hdr: Hdr, seed: u8 },
    /// The guest adds receive chains and kicks the receive queue.
    Give(Vec<RxChain>),
    /// Nothing new: the device thread runs.
    Idle,
}

fn op() -> impl Strategy<Value = Op> {
    let edges = vec![1usize, 11, 12, 13, 25, 26, 27, 100, 1526, 2012];
    let len = prop_oneof![
        3 => prop::sample::select(edges),
        3 => 1usize..100,
        4 => 26usize..1600,
        1 => 1600usize..MAX_PACKET + 40,
        1 => Just(MAX_PACKET),
        1 => Just(MAX_PACKET + 1),
    ];
    let hdr =
        prop_oneof![8 => Just(Hdr::Clean), 2 => Just(Hdr::DataValid), 1 => Just(Hdr::Offload)];
    let buf = prop_oneof![
        2 => prop::sample::select(vec![0u32, 12, 26, 100, 1526, 2000]),
        4 => 0u32..200,
        4 => 1000u32..2000,
        1 => 60_000u32..0x1_0800,
    ];
    let fit = prop_oneof![2 => Just(None), 1 => (-1i8..=1).prop_map(Some)];
    let chain = (
        prop::collection::vec(buf, 1..4),
        prop::bool::weighted(0.1),
        fit,
    )
        .prop_map(|(bufs, readable, fit)| RxChain {
            bufs,
            readable,
            fit,
        });
    prop_oneof![
        5 => (len, hdr, any::<u8>()).prop_map(|(len, hdr, seed)| Op::Send { len, hdr, seed }),
        4 => prop::collection::vec(chain, 1..4).prop_map(Op::Give),
        1 => Just(Op::Idle),
    ]
}

/// Bytes each receive descriptor slot may hold: slot `i` lives at
/// `DATA + i * SLOT`.
const SLOT: u64 = 0x2_0000;

/// A receive chain the model knows: head, writable buffers, readable flag.
#[derive(Debug)]
struct Posted {
    head: u16,
    bufs: Vec<(u64, u32)>,
    readable: bool,
    descs: usize,
}

/// A packet delivered into buffers (address, length), and the bytes they
/// must hold (header as the guest must see it).
type Delivery = (Vec<(u64, u32)>, Vec<u8>);

/// What the device must do, frame by frame.
#[derive(Default)]
struct Model {
    /// Offloads and mergeable receive buffers negotiated.
    merge: bool,
    /// Sent by the host and not yet delivered or dropped.
    frames: VecDeque<Vec<u8>>,
    /// Posted by the guest and not yet used.
    chains: VecDeque<Posted>,
    used: Vec<(u32, u32)>,
    next_desc: u16,
    rx_frames: u64,
    too_big: u64,
    invalid: u64,
    bad_chains: u64,
}

impl Model {
    fn outstanding(&self) -> usize {
        self.chains.iter().map(|c| c.descs).sum()
    }

    /// Moves frames to chains as the device must; returns what was
    /// delivered.
    fn settle(&mut self) -> Vec<Delivery> {
        if self.merge {
            return self.settle_merged();
        }
        let mut out = Vec::new();
        while let Some(p) = self.frames.front() {
            if !plain(p) {
                self.frames.pop_front();
                self.invalid += 1;
                continue;
            }
            let Some(c) = self.chains.pop_front() else {
                break;
            };
            let head = u32::from(c.head);
            if c.readable {
                self.used.push((head, 0));
                self.bad_chains += 1;
                continue;
            }
            let cap: u64 = c.bufs.iter().map(|&(_, l)| u64::from(l)).sum();
            let p = self.frames.pop_front().unwrap();
            if p.len() as u64 > cap {
                self.used.push((head, 0));
                self.too_big += 1;
                continue;
            }
            self.used.push((head, p.len() as u32));
            self.rx_frames += 1;
            let mut want = p;
            want[..VNET_HDR_LEN].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
            out.push((c.bufs, want));
        }
        out
    }

    /// [`Model::settle`] with offloads and mergeable receive buffers: a
    /// frame takes chains in order until they hold it, or waits for more
    /// with none used, or is dropped once a queue's worth of descriptors
    /// cannot hold it. A chain smaller than the header, or with a
    /// device-readable buffer, comes back empty when its turn comes.
    fn settle_merged(&mut self) -> Vec<Delivery> {
        let mut out = Vec::new();
        'frames: while let Some(p) = self.frames.front() {
            if !valid_merged(p) {
                self.frames.pop_front();
                self.invalid += 1;
                continue;
            }
            let n = p.len() as u64;
            let (mut k, mut cap, mut descs) = (0, 0u64, 0usize);
            while cap < n {
                if descs >= QSIZE as usize {
                    self.frames.pop_front();
                    self.too_big += 1;
                    continue 'frames;
                }
                let Some(c) = self.chains.get(k) else {
                    break 'frames;
                };
                let ccap: u64 = c.bufs.iter().map(|&(_, l)| u64::from(l)).sum();
                if c.readable || ccap < VNET_HDR_LEN as u64 {
                    let c = self.chains.remove(k).unwrap();
                    self.used.push((u32::from(c.head), 0));
                    self.bad_chains += 1;
                    continue;
                }
                cap += ccap;
                descs += c.bufs.len();
                k += 1;
            }
            let mut want = self.frames.pop_front().unwrap();
            want[0] &= 3;
            want[10..12].copy_from_slice(&(k as u16).to_le_bytes());
            let mut left = n;
            let mut bufs = Vec::new();
            for c in self.chains.drain(..k) {
                let ccap: u64 = c.bufs.iter().map(|&(_, l)| u64::from(l)).sum();
                let fill = ccap.min(left);
                self.used.push((u32::from(c.head), fill as u32));
                let mut f = fill;
                for (addr, len) in c.bufs {
                    let take = u64::from(len).min(f);
                    bufs.push((addr, take as u32));
                    f -= take;
                }
                left -= fill;
            }
            self.rx_frames += 1;
            out.push((bufs, want));
        }
        out
    }
}

/// Whether the device must pass packet `p` on with every offload
/// negotiated: TCP segmentation and checksum flags are fine, UDP is not.
fn valid_merged(p: &[u8]) -> bool {
    p.len() >= 26 && p.len() <= MAX_PACKET && matches!(p[1], 0 | 1 | 4)
}

/// Whether the device must pass packet `p` (header and frame) on.
fn plain(p: &[u8]) -> bool {
    p.len() >= 26 && p.len() <= MAX_PACKET && p[0] & 1 == 0 && p[1] == 0
}

fn make_packet(len: usize, hdr: Hdr, seed: u8) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect();
    let h = len.min(VNET_HDR_LEN);
    p[..h].fill(0);
    match hdr {
        Hdr::Clean => {}
        Hdr::DataValid => {
            p[0] = 2;
            if len >= VNET_HDR_LEN {
                p[10] = seed;
                p[11] = 0x7f;
            }
        }
        Hdr::Offload => {
            if seed % 2 == 0 {
                p[0] = 1;
            } else if len > 1 {
                p[1] = 1 + seed % 4;
            } else {
                p[0] = 1;
            }
        }
    }
    p
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary descriptor tables (no indirect descriptors) and guest
    /// bytes: exactly the readable bytes of each valid chain reach the
    /// TAP, in order; every chain comes back with length 0; no reset.
    #[test]
    fn tx_sends_exactly_the_valid_chains(case in tx_case(0x3, 20)) {
        let mut r = Rig::new();
        let heads: Vec<u16> = case.heads.iter().map(|h| h % QSIZE).collect();
        let case = TxCase { heads, ..case };
        // The model reads the memory the device will read.
        fill(&r, &case);
        let want: Vec<Vec<u8>> = case
            .heads
            .iter()
            .filter_map(|&h| expected_tx(&r, &case.table, h))
            .collect();
        run_tx(&mut r, &case);
        let got = received(&r);
        prop_assert!(!r.d.needs_reset());
        // A full socket drops the tail: what arrived is a prefix, the rest counted.
        prop_assert!(got.len() <= want.len());
        prop_assert_eq!(&got[..], &want[..got.len()]);
        prop_assert_eq!(get(&r.c.tx_frames), got.len() as u64);
        prop_assert_eq!(get(&r.c.tx_backend_drops), (want.len() - got.len()) as u64);
        prop_assert_eq!(get(&r.c.tx_invalid), (case.heads.len() - want.len()) as u64);
        prop_assert_eq!(get(&r.c.tx_backend_errors), 0);
        let used: Vec<(u32, u32)> = case.heads.iter().map(|&h| (u32::from(h), 0)).collect();
        prop_assert_eq!(r.d.used(TX_QUEUE), used);
    }

    /// Anything at all in the table, indirect descriptors and out-of-range
    /// indices included: no panic, no reset, every chain with a valid head
    /// comes back, and only plain frames reach the TAP.
    #[test]
    fn tx_survives_any_table(case in tx_case(0xffff, 24)) {
        let mut r = Rig::new();
        run_tx(&mut r, &case);
        prop_assert!(!r.d.needs_reset());
        for p in received(&r) {
            prop_assert!(p.len() >= 26 && p.len() <= MAX_PACKET, "{} bytes", p.len());
            prop_assert_eq!(&p[..2], &[0, 0]);
        }
        let used: Vec<(u32, u32)> = case
            .heads
            .iter()
            .filter(|&&h| h < QSIZE)
            .map(|&h| (u32::from(h), 0))
            .collect();
        prop_assert_eq!(r.d.used(TX_QUEUE), used);
    }

    /// Arbitrary frame sizes and headers from the host, arbitrary receive
    /// buffers from the guest, in any order: frames land whole behind a
    /// clean header or are dropped and counted, buffers come back in
    /// order, and the device thread never spins.
    #[test]
    fn rx_delivers_or_drops_every_frame(ops in prop::collection::vec(op(), 1..30)) {
        run_rx(ops, false)?;
    }

    /// The same with offloads and mergeable receive buffers: a frame
    /// spreads over as many chains as it needs, behind the kernel's header
    /// with the right `num_buffers`, or waits without using any.
    #[test]
    fn rx_merges_or_drops_every_frame(ops in prop::collection::vec(op(), 1..30)) {
        run_rx(ops, true)?;
    }
}

/// Runs `ops` on a device with (`merge`) or without offloads and
/// mergeable receive buffers, checking it against [`Model`].
fn run_rx(ops: Vec<Op>, merge: bool) -> Result<(), TestCaseError> {
    let mut r = if merge {
        Rig::with(u64::MAX)
    } else {
        Rig::new()
    };
    let mut m = Model {
        merge,
        ..Model::default()
    };
    for op in ops {
        match op {
            Op::Send { len, hdr, seed } => {
                let p = make_packet(len, hdr, seed);
                // A full socket refuses the packet: the host never sent it.
                if r.host.send(&p).is_ok() {
                    m.frames.push_back(p);
                }
            }
            Op::Give(chains) => {
                for mut c in chains {
                    if let Some(delta) = c.fit {
                        let k = m.chains.iter().filter(|c| !c.readable).count();
                        let next = m.frames.iter().filter(|p| plain(p)).nth(k);
                        let len = next.map_or(1526, |p| p.len() as i64) + i64::from(delta);
                        c.bufs = vec![len.max(0) as u32];
                    }
                    let descs = c.bufs.len() + usize::from(c.readable);
                    // Descriptors are handed out in ring order; with merged
                    // buffers chains may come back out of order, so the
                    // next ones may still be in use.
                    let busy = |i: u16| {
                        m.chains
                            .iter()
                            .any(|c| (i + QSIZE - c.head) % QSIZE < c.descs as u16)
                    };
                    if m.outstanding() + descs > QSIZE as usize
                        || (0..descs as u16).any(|k| busy((m.next_desc + k) % QSIZE))
                    {
                        continue;
                    }
                    let slot = |k: usize| DATA + u64::from((m.next_desc + k as u16) % QSIZE) * SLOT;
                    let mut spec = Vec::new();
                    if c.readable {
                        spec.push((slot(0), 64, false));
                    }
                    for &len in &c.bufs {
                        spec.push((slot(spec.len()), len, true));
                    }
                    let head = r.d.add_chain(RX_QUEUE, &spec);
                    prop_assert_eq!(head, m.next_desc);
                    m.next_desc = (m.next_desc + descs as u16) % QSIZE;
                    let bufs = spec.iter().filter(|s| s.2).map(|s| (s.0, s.1)).collect();
                    m.chains.push_back(Posted {
                        head,
                        bufs,
                        readable: c.readable,
                        descs,
                    });
                }
                r.d.kick(RX_QUEUE);
            }
            Op::Idle => {}
        }
        let seen = m.used.len();
        let calls = r.run();
        prop_assert!(calls <= 2, "{} wake-ups for one event", calls);
        let delivered = m.settle();
        prop_assert!(!r.d.needs_reset());
        prop_assert_eq!(&r.d.used(RX_QUEUE)[seen..], &m.used[seen..]);
        for (bufs, p) in delivered {
            let mut got = Vec::new();
            for (addr, len) in bufs {
                got.extend(r.guest(addr, len as usize));
            }
            got.truncate(p.len());
            prop_assert_eq!(&got[..VNET_HDR_LEN], &p[..VNET_HDR_LEN]);
            prop_assert!(
                got[VNET_HDR_LEN..] == p[VNET_HDR_LEN..],
                "frame bytes differ"
            );
        }
        prop_assert_eq!(get(&r.c.rx_frames), m.rx_frames);
        prop_assert_eq!(get(&r.c.rx_too_big), m.too_big);
        prop_assert_eq!(get(&r.c.rx_invalid), m.invalid);
        prop_assert_eq!(get(&r.c.rx_bad_chains), m.bad_chains);
        prop_assert_eq!(get(&r.c.rx_backend_errors), 0);
        // Quiet unless frames wait without buffers (then the TAP is not watched).
        prop_assert!(!r.wakes());
    }
    Ok(())
}
