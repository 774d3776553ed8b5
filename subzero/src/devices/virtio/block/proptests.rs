//! Property tests: whatever the guest puts in its descriptors and headers,
//! the parser stays total, the device keeps serving, and the image changes
//! only where a valid write said it would. The number of cases comes from
//! `PROPTEST_CASES` (proptest's default handling).

use proptest::prelude::*;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::request::{
    FLAG_UNMAP, MAX_RANGE_SECTORS, S_IOERR, S_OK, S_UNSUPP, T_DISCARD, T_FLUSH, T_GET_ID, T_IN,
    T_OUT, T_WRITE_ZEROES,
};
use super::tests::{header, open_engine, pattern, TempImage, BUF, HDR, STATUS};
use super::*;
use crate::devices::virtio::testing::{TestDriver, D, DATA};
use crate::devices::virtio::DescChain;

/// Sectors of the images the queue-level tests use.
const CAP: u64 = 8;
/// Bytes past the last whole sector, which the guest must never reach.
const TAIL: usize = 100;

fn any_status(s: u8) -> bool {
    [S_OK, S_IOERR, S_UNSUPP].contains(&s)
}

fn kind() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => Just(T_IN),
        3 => Just(T_OUT),
        1 => Just(T_FLUSH),
        1 => Just(T_GET_ID),
        1 => Just(T_DISCARD),
        1 => Just(T_WRITE_ZEROES),
        1 => any::<u32>(),
    ]
}

/// A discard / write-zeroes segment: sector, sectors, flags.
fn segment() -> impl Strategy<Value = (u64, u32, u32)> {
    let num = prop_oneof![
        4 => 0u32..(CAP as u32 + 2),
        1 => MAX_RANGE_SECTORS..=MAX_RANGE_SECTORS + 1,
        1 => any::<u32>(),
    ];
    let flags = prop_oneof![3 => Just(0u32), 2 => Just(FLAG_UNMAP), 1 => any::<u32>()];
    (sector(), num, flags)
}

/// The 16 bytes of a segment.
fn segment_bytes((sector, num, flags): (u64, u32, u32)) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&num.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    s
}

fn sector() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..CAP + 4,
        1 => u64::MAX - 4..=u64::MAX,
        1 => any::<u64>(),
    ]
}

/// The 16 header bytes.
fn header_bytes(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

/// A raw descriptor: address, length, flags, next index.
type Raw = (u64, u32, u16, u16);
const NEXT: u16 = 1;
const WRITE: u16 = 2;

/// A raw descriptor: address (mostly in `base..base + span`, sometimes
/// wild), length, flags (NEXT, WRITE, INDIRECT) and next index.
fn raw_desc(base: u64, span: u64) -> impl Strategy<Value = Raw> {
    let addr = prop_oneof![
        12 => base..base + span,
        1 => base + span - 64..base + span + 64,
        1 => any::<u64>(),
        1 => u64::MAX - 4096..=u64::MAX,
    ];
    let len = prop_oneof![
        8 => 0u32..1100,
        3 => prop::sample::select(vec![1u32, 15, 16, 17, 512, 513, 528, 529]),
        1 => any::<u32>(),
    ];
    (addr, len, 0u16..8, 0u16..20)
}

/// Descriptor lists as a queue iterator would yield them: raw; or with
/// readable buffers first and a last descriptor without NEXT; or shaped
/// like a request (split header, whole-sector data, status byte).
fn desc_list() -> impl Strategy<Value = Vec<Raw>> {
    let raw = || prop::collection::vec(raw_desc(0, 1 << 20), 1..8);
    let shaped = (
        0u32..=16,
        prop::collection::vec(0u32..3, 0..3),
        any::<bool>(),
        0u64..1 << 19,
    )
        .prop_map(|(split, pieces, w, base)| {
            let mut v = vec![(base, split, 0, 0), (base + 64, 16 - split, 0, 0)];
            let mut at = base + 0x1000;
            for k in pieces {
                v.push((at, k * 512, if w { WRITE } else { 0 }, 0));
                at += u64::from(k) * 512;
            }
            v.push((at, 1, WRITE, 0));
            v
        });
    prop_oneof![
        1 => raw(),
        3 => shaped,
        2 => raw().prop_map(|mut v| {
            v.sort_by_key(|d| d.2 & WRITE);
            if let Some(last) = v.last_mut() {
                last.2 &= !NEXT;
            }
            v
        }),
    ]
}

/// `len` pseudo-random bytes from `seed` (xorshift64*): guest memory
/// contents, cheaper than a proptest vector of that size.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Where the table test puts its plausible headers (every 0x2000 bytes).
fn header_slot(k: u64) -> u64 {
    DATA + 0x2000 * k
}

/// A chain that is almost a request (header, data, status), each of its
/// descriptors replaced by a random one now and then. The next indices
/// are filled in when the table is laid out, except in random ones.
fn near_request() -> impl Strategy<Value = Vec<(Raw, bool)>> {
    let base = (0u64..8, 0u32..3, any::<bool>(), 0u64..4).prop_map(|(h, sectors, w, off)| {
        vec![
            (header_slot(h), 16, 0, 0),
            (
                DATA + 0x1_0000 + 0x1000 * off,
                512 * sectors,
                if w { WRITE } else { 0 },
                0,
            ),
            (DATA + 0x1_f000, 1, WRITE, 0),
        ]
    });
    let noise = prop::collection::vec(prop::option::weighted(0.15, raw_desc(DATA, 0x2_0000)), 3);
    (base, noise).prop_map(|(base, noise)| {
        base.into_iter()
            .zip(noise)
            .map(|(b, n)| n.map_or((b, false), |n| (n, true)))
            .collect()
    })
}

proptest! {
    /// Arbitrary descriptor lists and headers through `from_descriptors` and
    /// `parse_request`: never a panic, and every accepted request stays
    /// inside the disk and the chain's buffers.
    #[test]
    fn parse_request_is_total_and_bounded(
        descs in desc_list(),
        kind in kind(),
        sector in sector(),
        reserved in any::<u32>(),
        capacity in prop_oneof![0u64..64, Just(u64::MAX)],
        readonly in any::<bool>(),
    ) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let descs: Vec<Descriptor> = descs
            .iter()
            .map(|&(a, l, f, n)| Descriptor::new(a, l, f, n))
            .collect();
        let Ok(chain) = DescChain::from_descriptors(&mem, 0, &descs, MAX_CHAIN) else {
            return Ok(());
        };
        // The header goes at the start of the readable buffers, wherever
        // they are split.
        let mut h = header_bytes(kind, sector);
        h[4..8].copy_from_slice(&reserved.to_le_bytes());
        let mut at = 0usize;
        for b in &chain.readable {
            let n = (b.len as usize).min(16 - at);
            mem.write_slice(&h[at..at + n], b.addr).unwrap();
            at += n;
        }
        let (r, w) = (chain.readable_len(), chain.writable_len());
        // Overlapping buffers may have mixed the header up: compare with
        // what the parser can actually read.
        let (kind, sector) = if r >= 16 {
            chain.read_at(&mem, 0, &mut h).unwrap();
            let [t0, t1, t2, t3, _, _, _, _, s @ ..] = h;
            (u32::from_le_bytes([t0, t1, t2, t3]), u64::from_le_bytes(s))
        } else {
            (kind, sector)
        };
        let in_disk = |sector: u64, len: u64| {
            len % 512 == 0
                && len <= request::MAX_DATA
                && sector.checked_add(len / 512).is_some_and(|end| end <= capacity)
        };
        match parse_request(&mem, &chain, capacity, readonly) {
            Ok(Request::In { sector: s, len }) => {
                prop_assert_eq!((kind, s), (T_IN, sector));
                prop_assert_eq!((r, len), (16, w - 1));
                prop_assert!(in_disk(s, len));
            }
            Ok(Request::Out { sector: s, len }) => {
                prop_assert!(!readonly);
                prop_assert_eq!((kind, s), (T_OUT, sector));
                prop_assert_eq!((w, len), (1, r - 16));
                prop_assert!(in_disk(s, len));
            }
            Ok(Request::Flush) => prop_assert_eq!(kind, T_FLUSH),
            Ok(Request::Discard { sector: s, sectors } | Request::WriteZeroes { sector: s, sectors, .. }) => {
                prop_assert!(!readonly);
                prop_assert!(kind == T_DISCARD || kind == T_WRITE_ZEROES);
                prop_assert_eq!(r, 32);
                prop_assert!(sectors <= u64::from(MAX_RANGE_SECTORS));
                prop_assert!(s.checked_add(sectors).is_some_and(|end| end <= capacity));
            }
            Ok(Request::GetId) => prop_assert_eq!(kind, T_GET_ID),
            Err(RequestError::NoStatus) => prop_assert_eq!(w, 0),
            Err(e) => {
                prop_assert!(w > 0);
                prop_assert!(matches!(e.status(), Some(S_IOERR | S_UNSUPP)), "{}", e);
            }
        }
    }

    /// Arbitrary descriptor tables (loops, indirect flags, wild addresses,
    /// random headers) kicked through the whole device: it never needs a
    /// reset, never touches the bytes past the disk, never changes a
    /// read-only image, and still serves a good request afterwards.
    #[test]
    fn arbitrary_tables_never_break_the_device(
        chains in prop::collection::vec(near_request(), 1..6),
        extra_heads in prop::collection::vec(0u16..20, 0..3),
        seed in any::<u64>(),
        headers in prop::collection::vec((kind(), sector()), 8),
        readonly in any::<bool>(),
        uring in any::<bool>(),
    ) {
        let img = TempImage::new("prop-table", &pattern(CAP as usize * 512 + TAIL));
        let before = img.contents();
        let blk = open_engine(&img.path, readonly, uring);
        let mut d = TestDriver::new(Box::new(blk));
        d.mem.write_slice(&noise(seed, 0x2_0000), GuestAddress(DATA)).unwrap();
        for (k, &(kind, sector)) in headers.iter().enumerate() {
            let at = GuestAddress(header_slot(k as u64));
            d.mem.write_slice(&header_bytes(kind, sector), at).unwrap();
        }
        // Lay the chains out one after the other in the 16-entry table.
        let mut heads = Vec::new();
        let mut i = 0u16;
        for chain in &chains {
            if usize::from(i) + chain.len() > 16 {
                break;
            }
            heads.push(i);
            for (k, &((addr, len, flags, next), random)) in chain.iter().enumerate() {
                let (flags, next) = if random {
                    (flags, next)
                } else if k + 1 < chain.len() {
                    (flags | NEXT, i + 1)
                } else {
                    (flags, 0)
                };
                d.put_desc(0, i, addr, len, flags, next);
                i += 1;
            }
        }
        heads.extend(&extra_heads);
        for &h in &heads {
            d.publish(0, h);
        }
        d.kick(0);
        prop_assert!(!d.needs_reset());
        prop_assert!(d.used(0).len() <= heads.len());
        let after = img.contents();
        prop_assert_eq!(after.len(), before.len());
        prop_assert_eq!(&after[CAP as usize * 512..], &before[CAP as usize * 512..]);
        if readonly {
            prop_assert!(after == before, "a read-only image changed");
        }
        header(&d, T_IN, CAP - 1);
        let n = d.used(0).len();
        d.add_chain(0, &[(HDR, 16, false), (BUF, 512, true), (STATUS, 1, true)]);
        d.kick(0);
        let used = d.used(0);
        prop_assert_eq!(used.len(), n + 1);
        prop_assert_eq!(used[n].1, 513);
        let status: u8 = d.mem.read_obj(GuestAddress(STATUS)).unwrap();
        prop_assert_eq!(status, S_OK);
    }

    /// Sequences of near-valid requests (random types, sectors, lengths,
    /// buffer splits, directions, short headers, missing status) against a
    /// model of the disk: same status, same used length, same bytes.
    #[test]
    fn requests_match_a_model_of_the_disk(
        reqs in prop::collection::vec(model_request(), 1..6),
        readonly in any::<bool>(),
        uring in any::<bool>(),
    ) {
        let img = TempImage::new("prop-model", &pattern(CAP as usize * 512 + TAIL));
        let mut model = img.contents();
        let blk = open_engine(&img.path, readonly, uring);
        let id = img.path.file_name().unwrap().as_encoded_bytes()[..20].to_vec();
        let mut d = TestDriver::new(Box::new(blk));
        for r in &reqs {
            let (descs, readable, writable) = r.layout();
            header(&d, r.kind, r.sector);
            let mut data: Vec<u8> = (0..r.len).map(|i| r.fill.wrapping_add(i as u8)).collect();
            if matches!(r.kind, T_DISCARD | T_WRITE_ZEROES) && r.len >= 16 {
                data[..16].copy_from_slice(&segment_bytes(r.segment));
            }
            d.mem.write_slice(&data, GuestAddress(BUF)).unwrap();
            d.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            let n = d.used(0).len();
            d.add_chain(0, &descs);
            d.kick(0);
            let used = d.used(0);
            prop_assert_eq!(used.len(), n + 1);
            let used_len = used[n].1;
            let status: u8 = d.mem.read_obj(GuestAddress(STATUS)).unwrap();
            prop_assert!(!d.needs_reset());

            let Some(want) = expect(r, readable, writable, readonly) else {
                prop_assert_eq!((used_len, status), (0, 0xff), "no status byte");
                continue;
            };
            prop_assert!(any_status(status));
            match want {
                Expect::Fail(s) => prop_assert_eq!((used_len, status), (1, s)),
                Expect::Read { at, len } => {
                    prop_assert_eq!((used_len, status), (len as u32 + 1, S_OK));
                    let mut got = vec![0u8; len];
                    d.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
                    prop_assert_eq!(&got[..], &model[at..at + len]);
                }
                Expect::Write { at, len } => {
                    prop_assert_eq!((used_len, status), (1, S_OK));
                    model[at..at + len].copy_from_slice(&data[..len]);
                }
                Expect::Id(len) => {
                    prop_assert_eq!((used_len, status), (len as u32 + 1, S_OK));
                    let mut got = vec![0u8; len];
                    d.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
                    prop_assert_eq!(&got[..], &id[..len]);
                }
                Expect::Ok => prop_assert_eq!((used_len, status), (1, S_OK)),
                Expect::Zeroed { at, len } => {
                    prop_assert_eq!((used_len, status), (1, S_OK));
                    model[at..at + len].fill(0);
                }
                Expect::Discarded { at, len } => {
                    // Discarded sectors may read back as anything.
                    prop_assert_eq!((used_len, status), (1, S_OK));
                    model[at..at + len].copy_from_slice(&img.contents()[at..at + len]);
                }
            }
            prop_assert!(img.contents() == model, "the image differs from the model");
        }
    }
}

/// A request as the model test builds it.
#[derive(Debug, Clone)]
struct ModelRequest {
    kind: u32,
    sector: u64,
    /// Data bytes, in `pieces` buffers at BUF.
    len: usize,
    pieces: usize,
    /// Data buffers in the direction the type does not expect.
    flip: bool,
    /// Header length: 16, or shorter (then the chain has no data).
    header_len: u32,
    /// Whether a writable status buffer ends the chain.
    status: bool,
    fill: u8,
    /// The segment a discard or write-zeroes carries (first 16 data bytes).
    segment: (u64, u32, u32),
}

fn model_request() -> impl Strategy<Value = ModelRequest> {
    (
        kind(),
        sector(),
        prop_oneof![3 => (0usize..5).prop_map(|k| k * 512), 1 => Just(16), 1 => 0usize..2100],
        1usize..4,
        prop::bool::weighted(0.15),
        prop_oneof![6 => Just(16u32), 1 => 0u32..16],
        prop::bool::weighted(0.9),
        any::<u8>(),
        segment(),
    )
        .prop_map(
            |(kind, sector, len, pieces, flip, header_len, status, fill, segment)| ModelRequest {
                kind,
                sector,
                len,
                pieces,
                flip,
                header_len,
                status,
                fill,
                segment,
            },
        )
}

impl ModelRequest {
    /// Whether the data buffers are device-writable.
    fn data_writable(&self) -> bool {
        let natural = matches!(self.kind, T_IN | T_GET_ID);
        // Without a status buffer, make the chain all-readable: there is
        // then no writable byte at all.
        self.status && (natural != self.flip)
    }

    /// The chain, and its readable and writable byte counts.
    fn layout(&self) -> (Vec<D>, u64, u64) {
        let mut descs: Vec<D> = vec![(HDR, self.header_len, false)];
        let data_len = if self.header_len < 16 { 0 } else { self.len };
        if data_len > 0 {
            let w = self.data_writable();
            let piece = data_len / self.pieces;
            let mut at = 0;
            for i in 0..self.pieces {
                let n = if i + 1 == self.pieces {
                    data_len - at
                } else {
                    piece
                };
                descs.push((BUF + at as u64, n as u32, w));
                at += n;
            }
        }
        if self.status {
            descs.push((STATUS, 1, true));
        }
        let mut readable = 0;
        let mut writable = 0;
        for &(_, l, w) in &descs {
            if w {
                writable += u64::from(l);
            } else {
                readable += u64::from(l);
            }
        }
        (descs, readable, writable)
    }
}

/// What the device must answer.
enum Expect {
    Fail(u8),
    Read { at: usize, len: usize },
    Write { at: usize, len: usize },
    Id(usize),
    Ok,
    Zeroed { at: usize, len: usize },
    Discarded { at: usize, len: usize },
}

/// The model: `None` when the chain has no status byte.
fn expect(r: &ModelRequest, readable: u64, writable: u64, readonly: bool) -> Option<Expect> {
    if writable == 0 {
        return None;
    }
    if readable < 16 {
        return Some(Expect::Fail(S_IOERR));
    }
    // The byte offset of `len` bytes from the request's sector, if they
    // are whole sectors inside the disk.
    let range = |len: u64| {
        let end = r.sector.checked_add(len / 512)?;
        (len % 512 == 0 && end <= CAP).then(|| r.sector as usize * 512)
    };
    Some(match r.kind {
        T_IN if readable > 16 => Expect::Fail(S_IOERR),
        T_IN => match range(writable - 1) {
            Some(at) => Expect::Read {
                at,
                len: writable as usize - 1,
            },
            None => Expect::Fail(S_IOERR),
        },
        T_OUT if readonly || writable > 1 => Expect::Fail(S_IOERR),
        T_OUT => match range(readable - 16) {
            Some(at) => Expect::Write {
                at,
                len: readable as usize - 16,
            },
            None => Expect::Fail(S_IOERR),
        },
        T_FLUSH => Expect::Ok,
        T_GET_ID => Expect::Id((writable as usize - 1).min(20)),
        T_DISCARD | T_WRITE_ZEROES => expect_segment(r, readable, readonly),
        _ => Expect::Fail(S_UNSUPP),
    })
}

/// The model of a discard or write-zeroes request.
fn expect_segment(r: &ModelRequest, readable: u64, readonly: bool) -> Expect {
    let (sector, num, flags) = r.segment;
    let allowed = if r.kind == T_WRITE_ZEROES {
        FLAG_UNMAP
    } else {
        0
    };
    if readonly || readable != 32 {
        return Expect::Fail(S_IOERR);
    }
    if flags & !allowed != 0 {
        return Expect::Fail(S_UNSUPP);
    }
    let fits = sector
        .checked_add(u64::from(num))
        .is_some_and(|end| end <= CAP);
    if num > MAX_RANGE_SECTORS || !fits {
        return Expect::Fail(S_IOERR);
    }
    let (at, len) = (sector as usize * 512, num as usize * 512);
    if r.kind == T_WRITE_ZEROES {
        Expect::Zeroed { at, len }
    } else {
        Expect::Discarded { at, len }
    }
}
