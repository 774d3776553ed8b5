//! The receive and transmit rate limiters.

use super::tests::{frame, get, packet, Rig};
use super::*;
use crate::devices::rate_limiter::TokenBucketConfig;
use crate::devices::virtio::testing::{readable, DATA};

/// One frame per 200 ms.
fn one_frame() -> RateLimiterConfig {
    RateLimiterConfig {
        bandwidth: None,
        ops: Some(TokenBucketConfig {
            size: 1,
            one_time_burst: None,
            refill_time: 200,
        }),
    }
}

#[test]
fn transmitted_frames_over_the_limit_wait_on_the_ring() {
    let mut r = Rig::new();
    r.d.with_device(|d| d.set_rate_limiter(TX_QUEUE, &one_frame()))
        .unwrap();
    let p = packet(&frame(60, 1));
    r.poke(DATA, &p);
    r.d.add_chain(TX_QUEUE, &[(DATA, p.len() as u32, false)]);
    r.d.add_chain(TX_QUEUE, &[(DATA, p.len() as u32, false)]);
    r.d.kick(TX_QUEUE);
    assert_eq!(r.recv().as_deref(), Some(&p[..]));
    assert_eq!(r.recv(), None, "the second frame waits");
    assert_eq!(r.d.used(TX_QUEUE).len(), 1);
    assert_eq!(get(&r.c.tx_throttled), 1);
    assert!(readable(r.timers[1]), "the transmit timer fires");
    r.d.source(TX_TIMER);
    assert_eq!(r.recv().as_deref(), Some(&p[..]));
    assert_eq!(r.d.used(TX_QUEUE).len(), 2);
}

#[test]
fn received_frames_over_the_limit_wait_in_the_tap() {
    let mut r = Rig::new();
    r.d.with_device(|d| d.set_rate_limiter(RX_QUEUE, &one_frame()))
        .unwrap();
    r.d.add_chain(RX_QUEUE, &[(DATA, 1526, true)]);
    r.d.add_chain(RX_QUEUE, &[(DATA + 0x1000, 1526, true)]);
    r.d.kick(RX_QUEUE);
    r.send(&packet(&frame(60, 1)));
    r.send(&packet(&frame(60, 2)));
    r.run();
    assert_eq!(r.d.used(RX_QUEUE).len(), 1, "the second frame waits");
    assert_eq!(get(&r.c.rx_throttled), 1);
    assert!(!r.wakes(), "the TAP is not watched meanwhile: no busy loop");
    assert!(readable(r.timers[0]), "the receive timer fires");
    r.d.source(RX_TIMER);
    assert_eq!(r.d.used(RX_QUEUE).len(), 2);
    assert_eq!(r.guest(DATA + 0x1000 + 12, 60), frame(60, 2));
    assert_eq!(get(&r.c.rx_frames), 2);
}
