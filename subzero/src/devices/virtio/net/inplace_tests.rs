//! Frames read straight into the guest's receive buffers.

use super::tests::{frame, get, packet, Rig};
use super::*;
use crate::devices::virtio::testing::DATA;

/// Receive chains of one 8 KiB buffer each: 16 of them hold the largest
/// frame, so frames are read in place.
fn give_big_chains(r: &mut Rig, n: u64) -> Vec<u32> {
    let heads = (0..n)
        .map(|k| u32::from(r.d.add_chain(RX_QUEUE, &[(DATA + k * 0x2000, 0x2000, true)])))
        .collect();
    r.d.kick(RX_QUEUE);
    heads
}

#[test]
fn with_room_for_the_largest_frame_frames_are_read_in_place() {
    let mut r = Rig::with(u64::MAX);
    let heads = give_big_chains(&mut r, 16);
    assert!(r.d.used(RX_QUEUE).is_empty(), "no frame, no chain used");
    let small = frame(1514, 4);
    r.send(&packet(&small));
    let big = frame(9000, 5);
    r.send(&packet(&big));
    r.run();
    let used = r.d.used(RX_QUEUE);
    assert_eq!(
        used,
        vec![
            (heads[0], 1526),
            (heads[1], 0x2000),
            (heads[2], 9012 - 0x2000)
        ]
    );
    assert_eq!(r.guest(DATA + 10, 2), [1, 0], "num_buffers 1");
    assert_eq!(r.guest(DATA + 12, 1514), small);
    assert_eq!(r.guest(DATA + 0x2000 + 10, 2), [2, 0], "num_buffers 2");
    let mut got = r.guest(DATA + 0x2000 + 12, 0x2000 - 12);
    got.extend(r.guest(DATA + 0x4000, 9012 - 0x2000));
    assert_eq!(got, big);
    assert_eq!(get(&r.c.rx_frames), 2);
    assert_eq!(get(&r.c.rx_in_place), 2, "neither was copied");
}

#[test]
fn without_that_room_frames_are_copied_as_before() {
    let mut r = Rig::with(u64::MAX);
    let heads = give_big_chains(&mut r, 4);
    r.send(&packet(&frame(3000, 6)));
    r.run();
    assert_eq!(r.d.used(RX_QUEUE), vec![(heads[0], 3012)]);
    assert_eq!(r.guest(DATA + 12, 3000), frame(3000, 6));
    assert_eq!(get(&r.c.rx_in_place), 0);
    assert_eq!(get(&r.c.rx_frames), 1);
}

#[test]
fn a_frame_read_in_place_with_a_bad_header_is_dropped_and_its_chain_reused() {
    let mut r = Rig::with(u64::MAX);
    let heads = give_big_chains(&mut r, 16);
    // Segmentation the guest never negotiated (the TAP's offloads are off
    // in PLAIN mode, on here: use an unknown GSO type).
    let mut bad = packet(&frame(100, 1));
    bad[1] = 0x7;
    r.send(&bad);
    r.send(&packet(&frame(200, 2)));
    r.run();
    assert_eq!(
        r.d.used(RX_QUEUE),
        vec![(heads[0], 212)],
        "the bad frame used no chain"
    );
    assert_eq!(r.guest(DATA + 12, 200), frame(200, 2));
    assert_eq!(get(&r.c.rx_invalid), 1);
}
