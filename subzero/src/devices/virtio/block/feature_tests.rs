//! Discard, write-zeroes, several queues and the engine choice, as a
//! driver sees them.

use std::sync::atomic::Ordering;

use vm_memory::{Bytes, GuestAddress};

use super::request::{FLAG_UNMAP, S_IOERR, S_OK, S_UNSUPP, T_DISCARD, T_IN, T_WRITE_ZEROES};
use super::tests::{header, open_engine, pattern, submit, TempImage, BUF, HDR, STATUS};
use super::*;
use crate::devices::virtio::mmio::regs;
use crate::devices::virtio::testing::TestDriver;

/// A discard or write-zeroes of `num` sectors from `sector`.
fn range_req(d: &mut TestDriver, kind: u32, sector: u64, num: u32, flags: u32) -> (u32, u8) {
    header(d, kind, 0);
    let mut seg = [0u8; 16];
    seg[0..8].copy_from_slice(&sector.to_le_bytes());
    seg[8..12].copy_from_slice(&num.to_le_bytes());
    seg[12..16].copy_from_slice(&flags.to_le_bytes());
    d.mem.write_slice(&seg, GuestAddress(BUF)).unwrap();
    submit(d, &[(HDR, 16, false), (BUF, 16, false), (STATUS, 1, true)])
}

fn features(d: &mut TestDriver) -> u64 {
    d.write(regs::DEVICE_FEATURES_SEL, 0);
    u64::from(d.read(regs::DEVICE_FEATURES))
}

#[test]
fn write_zeroes_and_discard_change_only_their_range_on_both_engines() {
    for uring in [false, true] {
        let img = TempImage::new("zeroes", &pattern(32 * 512));
        let mut want = img.contents();
        let blk = open_engine(&img.path, false, uring);
        let stats = blk.stats();
        let mut d = TestDriver::new(Box::new(blk));
        let f = features(&mut d);
        assert_ne!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
        assert_ne!(f & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
        assert_eq!(range_req(&mut d, T_WRITE_ZEROES, 2, 3, 0), (1, S_OK));
        want[2 * 512..5 * 512].fill(0);
        assert!(img.contents() == want, "zero range");
        assert_eq!(
            range_req(&mut d, T_WRITE_ZEROES, 8, 8, FLAG_UNMAP),
            (1, S_OK)
        );
        want[8 * 512..16 * 512].fill(0);
        assert!(img.contents() == want, "zeroes with unmap");
        assert_eq!(range_req(&mut d, T_WRITE_ZEROES, 20, 0, 0), (1, S_OK));
        // Discarded sectors may read as anything; the rest must not move.
        assert_eq!(range_req(&mut d, T_DISCARD, 24, 8, 0), (1, S_OK));
        assert!(img.contents()[..24 * 512] == want[..24 * 512]);
        assert_eq!(img.contents().len(), want.len(), "the size is kept");
        // Refused: past the end, a flag discard does not have, unknown
        // flags, two segments.
        assert_eq!(range_req(&mut d, T_DISCARD, 30, 3, 0), (1, S_IOERR));
        assert_eq!(
            range_req(&mut d, T_DISCARD, 0, 1, FLAG_UNMAP),
            (1, S_UNSUPP)
        );
        assert_eq!(range_req(&mut d, T_WRITE_ZEROES, 0, 1, 4), (1, S_UNSUPP));
        header(&d, T_WRITE_ZEROES, 0);
        let two = [(HDR, 16, false), (BUF, 32, false), (STATUS, 1, true)];
        assert_eq!(submit(&mut d, &two), (1, S_IOERR));
        assert!(img.contents()[..24 * 512] == want[..24 * 512]);
        assert_eq!(stats.write_zeroes.load(Ordering::Relaxed), 3);
        assert_eq!(stats.discards.load(Ordering::Relaxed), 1);
        assert!(!d.needs_reset());
    }
}

#[test]
fn a_read_only_disk_offers_neither_and_refuses_both() {
    let img = TempImage::new("ro-zeroes", &pattern(8 * 512));
    let before = img.contents();
    let mut d = TestDriver::new(Box::new(open_engine(&img.path, true, true)));
    let f = features(&mut d);
    assert_eq!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
    assert_eq!(range_req(&mut d, T_WRITE_ZEROES, 0, 8, 0), (1, S_IOERR));
    assert_eq!(range_req(&mut d, T_DISCARD, 0, 8, 0), (1, S_IOERR));
    assert_eq!(img.contents(), before);
}

#[test]
fn several_queues_are_offered_announced_and_each_served() {
    let img = TempImage::new("mq", &pattern(8 * 512));
    let opts = BlockOptions {
        queues: 4,
        ..BlockOptions::default()
    };
    let blk = Block::open_with(&img.path, &opts).unwrap();
    assert_eq!(blk.queue_max_sizes(), [256; 4]);
    let mut d = TestDriver::new(Box::new(blk));
    assert_ne!(features(&mut d) & (1 << VIRTIO_BLK_F_MQ), 0);
    assert_eq!(d.read(regs::CONFIG + 32) >> 16, 4, "num_queues");
    assert_eq!(d.read(regs::CONFIG + 40), 1, "max_discard_seg");
    assert_eq!(d.read(regs::CONFIG + 44), 8, "discard_sector_alignment");
    for q in 0..4usize {
        header(&d, T_IN, q as u64);
        d.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        d.add_chain(q, &[(HDR, 16, false), (BUF, 512, true), (STATUS, 1, true)]);
        d.kick(q);
        assert_eq!(d.used(q), [(0, 513)], "queue {q}");
        let mut got = vec![0u8; 512];
        d.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
        assert!(got == img.contents()[q * 512..(q + 1) * 512], "queue {q}");
    }
    drop(d);
    // One queue: no MQ feature.
    let one = Block::open(&img.path, true, None).unwrap();
    assert_eq!(one.features() & (1 << VIRTIO_BLK_F_MQ), 0);
    let err = Block::open_with(
        &img.path,
        &BlockOptions {
            queues: 17,
            ..BlockOptions::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("17 queues; give between 1 and 16"), "{err}");
}

#[test]
fn the_engine_asked_for_is_the_one_used() {
    let img = TempImage::new("engine", &pattern(512));
    let sync = BlockOptions {
        engine: EngineChoice::Sync,
        readonly: true,
        ..BlockOptions::default()
    };
    let blk = Block::open_with(&img.path, &sync).unwrap();
    assert_eq!(blk.engine(), "sync");
    assert_eq!(blk.event_fds().len(), 1, "only the limiter's timer");
    let auto = Block::open(&img.path, true, None).unwrap();
    assert_eq!(auto.engine(), "io_uring", "this host allows io_uring");
    assert_eq!(auto.event_fds().len(), 2, "the timer and the completions");
}
