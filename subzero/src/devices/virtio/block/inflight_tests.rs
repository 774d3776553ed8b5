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

/// A queue served while requests are still in flight on io_uring is left
/// with notifications off (`poll`): what the driver adds meanwhile, with no
/// kick, is served at the next completion, and once nothing is in flight
/// notifications are on again. A flush always goes to io_uring's workers,
/// but one may finish before the device looks, so a few devices are tried.
#[test]
fn a_polled_queue_serves_what_came_without_a_kick_at_a_completion() {
    use crate::devices::virtio::testing::{readable, RINGS};
    let mut exercised = 0;
    for attempt in 0..20 {
        let img = TempImage::new("polled", &pattern(SECTORS as usize * 512));
        let mut blk = open_engine(&img.path, false, true);
        blk.poll = true;
        let mut d = TestDriver::raw(Box::new(blk));
        d.setup(|_, max| max);
        let ops = [
            Op::Write {
                sector: 3,
                n: 2,
                fill: 0x5a,
            },
            Op::Flush,
            Op::Read { sector: 3, n: 2 },
        ];
        let chain = lay_out(&d, 0, ops[0]);
        d.add_chain(0, &chain);
        let chain = lay_out(&d, 1, ops[1]);
        d.add_chain(0, &chain);
        d.worker.handle_kick(0);
        // With EVENT_IDX, turning notifications on writes avail_event (the
        // used ring's last field): left polled, it is not the avail index.
        let avail_event = |d: &TestDriver| -> u16 {
            d.mem
                .read_obj(GuestAddress(RINGS + 0x8000 + 4 + 8 * 256))
                .unwrap()
        };
        let polled = avail_event(&d) != 2;
        // Added without a kick.
        let chain = lay_out(&d, 2, ops[2]);
        d.add_chain(0, &chain);
        let ring = d.with_device(|dev| dev.event_fds()[1]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while d.used(0).len() < 3 && std::time::Instant::now() < deadline {
            if readable(ring) {
                d.worker.handle_source(1);
            }
        }
        if !polled {
            // The flush finished inside the submission: the read needs a
            // kick, as it always did.
            d.kick(0);
            assert_eq!(d.used(0).len(), 3, "attempt {attempt}");
            continue;
        }
        exercised += 1;
        assert_eq!(
            d.used(0).len(),
            3,
            "attempt {attempt}: the un-kicked read was served"
        );
        let (_, buf, status) = slots(2);
        let s: u8 = d.mem.read_obj(GuestAddress(status)).unwrap();
        assert_eq!(s, S_OK);
        let mut got = vec![0u8; 1024];
        d.mem.read_slice(&mut got, GuestAddress(buf)).unwrap();
        assert!(
            got.iter().all(|&b| b == 0x5a),
            "attempt {attempt}: the read saw the write"
        );
        // Notifications are on again: avail_event is the next avail index.
        assert_eq!(avail_event(&d), 3, "attempt {attempt}");
        if exercised >= 3 {
            return;
        }
    }
    assert!(
        exercised > 0,
        "no flush was ever still in flight after its kick"
    );
}
