//! Many requests in flight at once, on both engines: overlapping reads,
//! writes and write-zeroes in batches separated by flushes, all on the ring
//! before one kick, must leave the image as a sequential model of the same
//! requests says, and every read must see what the batches before it wrote.
//!
//! Within a batch the guest gets no ordering (requests in flight complete
//! in any order), so no two requests of one batch overlap a write of it;
//! across batches they overlap freely, and only the flush between them
//! orders them.

use vm_memory::{Bytes, GuestAddress};

use super::request::{S_OK, T_FLUSH, T_IN, T_OUT, T_WRITE_ZEROES};
use super::tests::{open_engine, pattern, TempImage};
use crate::devices::virtio::testing::{TestDriver, D, DATA};

/// Sectors of the image.
const SECTORS: u64 = 64;
/// Batches, and requests of each kind per batch.
const BATCHES: usize = 6;
const WRITES: usize = 5;
const READS: usize = 4;

/// One request of the test.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Read { sector: u64, n: u64 },
    Write { sector: u64, n: u64, fill: u8 },
    Zero { sector: u64, n: u64 },
    Flush,
}

/// xorshift64: the test's requests, reproducible from a seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

/// A range of 1 to 8 sectors inside the disk that overlaps none of `taken`.
fn free_range(rng: &mut Rng, taken: &[(u64, u64)]) -> (u64, u64) {
    loop {
        let n = 1 + rng.below(8);
        let sector = rng.below(SECTORS - n + 1);
        if !taken.iter().any(|t| overlaps(*t, (sector, n))) {
            return (sector, n);
        }
    }
}

/// The batches for `seed`, each ending with a flush.
fn requests(seed: u64) -> Vec<Op> {
    let mut rng = Rng(seed | 1);
    let mut ops = Vec::new();
    for batch in 0..BATCHES {
        let mut written = Vec::new();
        for w in 0..WRITES {
            let (sector, n) = free_range(&mut rng, &written);
            written.push((sector, n));
            // A write-zeroes waits for everything in flight; only every
            // other batch has one, so the others rely on the flush alone.
            ops.push(if w == 0 && batch % 2 == 0 {
                Op::Zero { sector, n }
            } else {
                Op::Write {
                    sector,
                    n,
                    fill: rng.below(256) as u8,
                }
            });
        }
        for _ in 0..READS {
            let (sector, n) = free_range(&mut rng, &written);
            ops.push(Op::Read { sector, n });
        }
        ops.push(Op::Flush);
    }
    ops
}

/// Guest address of request `k`'s header, data and status byte.
fn slots(k: usize) -> (u64, u64, u64) {
    let k = k as u64;
    (
        DATA + 0x100 * k,
        DATA + 0x10_0000 + 0x1000 * k,
        DATA + 0x8_0000 + k,
    )
}

/// Lays request `k` out in guest memory and returns its chain.
fn lay_out(d: &TestDriver, k: usize, op: Op) -> Vec<D> {
    let (hdr, buf, status) = slots(k);
    let mut h = [0u8; 16];
    let (kind, sector) = match op {
        Op::Read { sector, .. } => (T_IN, sector),
        Op::Write { sector, .. } => (T_OUT, sector),
        Op::Zero { .. } => (T_WRITE_ZEROES, 0),
        Op::Flush => (T_FLUSH, 0),
    };
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    d.mem.write_slice(&h, GuestAddress(hdr)).unwrap();
    d.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
    let data = match op {
        Op::Read { n, .. } => Some((n as u32 * 512, true)),
        Op::Write { n, fill, .. } => {
            let bytes = vec![fill; n as usize * 512];
            d.mem.write_slice(&bytes, GuestAddress(buf)).unwrap();
            Some((n as u32 * 512, false))
        }
        Op::Zero { sector, n } => {
            let mut seg = [0u8; 16];
            seg[0..8].copy_from_slice(&sector.to_le_bytes());
            seg[8..12].copy_from_slice(&(n as u32).to_le_bytes());
            d.mem.write_slice(&seg, GuestAddress(buf)).unwrap();
            Some((16, false))
        }
        Op::Flush => None,
    };
    let mut chain = vec![(hdr, 16, false)];
    if let Some((len, w)) = data {
        chain.push((buf, len, w));
    }
    chain.push((status, 1, true));
    chain
}

#[test]
fn overlapping_requests_in_flight_with_flushes_match_a_sequential_model() {
    for uring in [false, true] {
        for seed in 1..=12u64 {
            let img = TempImage::new("inflight", &pattern(SECTORS as usize * 512));
            let mut model = img.contents();
            let blk = open_engine(&img.path, false, uring);
            let stats = blk.stats();
            let mut d = TestDriver::raw(Box::new(blk));
            d.setup(|_, max| max);
            let ops = requests(seed);
            for (k, op) in ops.iter().enumerate() {
                let chain = lay_out(&d, k, *op);
                d.add_chain(0, &chain);
            }
            // One kick: every request is taken, and on io_uring all of
            // them are in flight before the first completes.
            d.kick(0);
            let what = format!("seed {seed}, {}", if uring { "io_uring" } else { "sync" });
            assert_eq!(
                d.used(0).len(),
                ops.len(),
                "{what}: every request came back"
            );
            for (k, op) in ops.iter().enumerate() {
                let (_, buf, status) = slots(k);
                let s: u8 = d.mem.read_obj(GuestAddress(status)).unwrap();
                assert_eq!(s, S_OK, "{what}: request {k} {op:?}");
                match *op {
                    Op::Read { sector, n } => {
                        let (at, len) = (sector as usize * 512, n as usize * 512);
                        let mut got = vec![0u8; len];
                        d.mem.read_slice(&mut got, GuestAddress(buf)).unwrap();
                        assert!(got == model[at..at + len], "{what}: read {k} {op:?}");
                    }
                    Op::Write { sector, n, fill } => {
                        let at = sector as usize * 512;
                        model[at..at + n as usize * 512].fill(fill);
                    }
                    Op::Zero { sector, n } => {
                        let at = sector as usize * 512;
                        model[at..at + n as usize * 512].fill(0);
                    }
                    Op::Flush => {}
                }
            }
            assert!(
                img.contents() == model,
                "{what}: the image differs from the model"
            );
            let peak = stats
                .in_flight_peak
                .load(std::sync::atomic::Ordering::Relaxed);
            if uring {
                assert!(
                    peak > 1,
                    "{what}: only {peak} request(s) were ever in flight"
                );
            }
        }
    }
}
