use super::*;

const MS: u64 = 1_000_000;

fn bucket(size: u64, burst: Option<u64>, refill_time: u64) -> TokenBucket {
    let cfg = TokenBucketConfig {
        size,
        one_time_burst: burst,
        refill_time,
    };
    TokenBucket::new(&cfg, 0).expect("limited")
}

#[test]
fn a_size_or_refill_time_of_zero_is_unlimited() {
    let cfg = |size, refill_time| TokenBucketConfig {
        size,
        one_time_burst: None,
        refill_time,
    };
    assert!(TokenBucket::new(&cfg(0, 100), 0).is_none());
    assert!(TokenBucket::new(&cfg(100, 0), 0).is_none());
    let none = RateLimiterConfig {
        bandwidth: Some(cfg(0, 100)),
        ops: None,
    };
    assert!(!none.limits());
    assert!(RateLimiterConfig {
        ops: Some(cfg(1, 1)),
        ..none
    }
    .limits());
}

#[test]
fn a_full_bucket_empties_then_refills_at_its_rate() {
    // 1000 tokens per 100 ms.
    let mut b = bucket(1000, None, 100);
    assert_eq!(b.wait(1000, 0), 0, "starts full");
    b.take(1000);
    assert_eq!(b.tokens(0), 0);
    assert_eq!(b.wait(1, 0), 100_000, "one token takes 100 us");
    assert_eq!(b.wait(500, 0), 50 * MS);
    assert_eq!(b.tokens(50 * MS), 500);
    assert_eq!(b.wait(500, 50 * MS), 0);
    b.take(500);
    assert_eq!(b.tokens(50 * MS), 0);
    // Never more than full, however long it rests.
    assert_eq!(b.tokens(10_000 * MS), 1000);
}

#[test]
fn refills_in_small_steps_lose_no_fractions() {
    // 3 tokens per 10 ms: a third of a token per 1.11 ms step.
    let mut b = bucket(3, None, 10);
    b.take(3);
    for step in 1..=9u64 {
        b.tokens(step * 10 * MS / 9);
    }
    assert_eq!(b.tokens(10 * MS), 3);
}

#[test]
fn a_request_larger_than_the_bucket_passes_when_full_and_leaves_debt() {
    let mut b = bucket(100, None, 1000);
    assert_eq!(b.wait(250, 0), 0, "a full bucket lets it through");
    b.take(250);
    assert_eq!(b.tokens(0), -150, "in debt");
    // The next request waits until the debt is paid and its cost is back.
    assert_eq!(b.wait(10, 0), 1600 * MS);
    assert_eq!(b.wait(10, 1600 * MS), 0);
    // Another oversized one waits for a full bucket, not for 250 tokens.
    b.take(10);
    assert_eq!(b.wait(250, 1600 * MS), 100 * 10 * MS);
}

#[test]
fn the_one_time_burst_is_spent_first_and_never_refills() {
    let mut b = bucket(100, Some(1000), 1000);
    assert_eq!(b.wait(1000, 0), 0);
    b.take(1000);
    assert_eq!(b.tokens(0), 100, "the bucket is untouched");
    b.take(100);
    assert_eq!(b.wait(100, 0), 1000 * MS);
    assert_eq!(b.tokens(5000 * MS), 100, "the burst does not come back");
    assert_eq!(b.wait(101, 5000 * MS), 0, "only the bucket, full");
}

#[test]
fn a_clock_going_backwards_adds_nothing() {
    let mut b = bucket(100, None, 1000);
    b.take(100);
    assert_eq!(b.tokens(500 * MS), 50);
    assert_eq!(b.tokens(100 * MS), 50);
}

#[test]
fn the_largest_settings_do_not_overflow() {
    let mut b = bucket(u64::MAX, Some(u64::MAX), u64::MAX);
    b.take(u64::MAX);
    b.take(u64::MAX);
    assert!(b.wait(u64::MAX, 1) > 0);
    assert!(b.tokens(1) < 0);
    assert_eq!(b.wait(1, u64::MAX), 0, "paid off in the end");
}

#[test]
fn a_limiter_waits_for_the_slower_bucket_and_arms_its_timer() {
    let cfg = RateLimiterConfig {
        bandwidth: Some(TokenBucketConfig::per_second(1 << 20)),
        ops: Some(TokenBucketConfig::per_second(2)),
    };
    let mut l = RateLimiter::new(&cfg).unwrap();
    assert_eq!(l.wait_at(4096, 1, 0), 0);
    l.take(4096, 1);
    l.take(4096, 1);
    // Bytes are plenty; the third op waits half a second.
    assert_eq!(l.wait_at(4096, 1, 0), 500 * MS);
    assert!(!l.blocked());
    l.take(1 << 20, 0);
    assert!(!l.consume(1, 1), "both buckets are empty now");
    assert!(l.blocked() && l.throttled() == 1);
    assert!(!l.consume(0, 0), "a blocked queue waits for its timer");
}

#[test]
fn an_update_replaces_the_buckets_and_wakes_a_waiting_queue() {
    let one = RateLimiterConfig {
        bandwidth: None,
        ops: Some(TokenBucketConfig {
            size: 1,
            one_time_burst: None,
            refill_time: 3_600_000,
        }),
    };
    let mut l = RateLimiter::new(&one).unwrap();
    assert!(l.consume(0, 1));
    assert!(!l.consume(0, 1));
    l.update(&RateLimiterConfig::default());
    assert!(!l.limits());
    // The timer fires at once, so the device tries again.
    let mut fds = [libc::pollfd {
        fd: l.timer_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: `fds` is a valid array of one pollfd for the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 5000) };
    assert_eq!(n, 1, "the timer fired");
    l.timer_fired();
    assert!(l.consume(u64::MAX, u64::MAX), "unlimited now");
}
