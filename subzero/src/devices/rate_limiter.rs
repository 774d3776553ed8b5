//! Token buckets that bound a device's bytes and operations per second.
//!
//! A [`TokenBucket`] holds up to `size` tokens and refills at `size` per
//! `refill_time` milliseconds; `one_time_burst` tokens more are spent first
//! and never come back (Firecracker's semantics). A request is let through
//! when the bucket holds as many tokens as it costs, or is full: a request
//! larger than the bucket then takes the bucket into debt, which the refill
//! pays off before the next one passes. So every request makes progress,
//! and over time no more than the rate goes through.
//!
//! A [`RateLimiter`] pairs a bandwidth and an ops bucket with a timerfd.
//! When a request must wait, the limiter arms the timer for the moment the
//! buckets will hold enough; the device stops taking requests from that
//! queue and resumes when its event loop sees the timer, so nothing spins
//! and nothing sleeps on the device thread.
//!
//! The buckets work on a clock passed in (nanoseconds), so tests run them on
//! a made-up clock.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vmm_sys_util::timerfd::TimerFd;

/// One bucket as Firecracker's API writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Tokens the bucket holds (bytes or operations); 0 means unlimited.
    pub size: u64,
    /// Tokens granted once, on top of `size`, spent first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds for an empty bucket to refill; 0 means unlimited.
    pub refill_time: u64,
}

impl TokenBucketConfig {
    /// `rate` tokens a second, with bursts of one second's worth.
    pub fn per_second(rate: u64) -> Self {
        TokenBucketConfig {
            size: rate,
            one_time_burst: None,
            refill_time: 1000,
        }
    }

    /// Whether this bucket limits anything (Firecracker: a size or a refill
    /// time of 0 disables it).
    pub fn limits(&self) -> bool {
        self.size != 0 && self.refill_time != 0
    }
}

/// Firecracker's `rate_limiter` object: a bandwidth and an ops bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    /// Operations (block requests, network packets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

impl RateLimiterConfig {
    /// Whether either bucket limits anything.
    pub fn limits(&self) -> bool {
        self.bandwidth.is_some_and(|b| b.limits()) || self.ops.is_some_and(|b| b.limits())
    }
}

const NS_PER_MS: u128 = 1_000_000;

/// A token bucket on a caller's clock (nanoseconds).
///
/// Tokens are kept scaled by the refill time in nanoseconds, so refilling
/// (`elapsed * size`) loses no fractions however often it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    size: u128,
    refill_ns: u128,
    /// Scaled tokens; negative while in debt.
    budget: i128,
    burst: u128,
    last: u64,
}

impl TokenBucket {
    /// A full bucket at time `now`, or `None` for an unlimited one.
    pub fn new(cfg: &TokenBucketConfig, now: u64) -> Option<Self> {
        if !cfg.limits() {
            return None;
        }
        // Bounds that keep the scaled arithmetic below i128::MAX: 2^63
        // tokens, 2^32 ms (49 days) to refill.
        let size = u128::from(cfg.size.min(1 << 63));
        let refill_ns = u128::from(cfg.refill_time.min(1 << 32)) * NS_PER_MS;
        Some(TokenBucket {
            size,
            refill_ns,
            budget: (size * refill_ns) as i128,
            burst: u128::from(cfg.one_time_burst.unwrap_or(0)),
            last: now,
        })
    }

    fn refill(&mut self, now: u64) {
        let elapsed = u128::from(now.saturating_sub(self.last));
        self.last = self.last.max(now);
        let full = (self.size * self.refill_ns) as i128;
        // A take only ever follows a positive budget, so the debt is at most
        // one request: `full - budget` fits.
        let room = (full - self.budget).max(0) as u128;
        self.budget += (elapsed * self.size).min(room) as i128;
    }

    /// Scaled tokens still missing before `tokens` may pass (0: none).
    fn missing(&self, tokens: u64) -> u128 {
        let tokens = u128::from(tokens);
        if tokens <= self.burst {
            return 0;
        }
        let need = ((tokens - self.burst).min(self.size) * self.refill_ns) as i128;
        need.saturating_sub(self.budget).max(0) as u128
    }

    /// Nanoseconds from `now` until `tokens` may pass; 0 if they may now.
    pub fn wait(&mut self, tokens: u64, now: u64) -> u64 {
        self.refill(now);
        let missing = self.missing(tokens);
        u64::try_from(missing.div_ceil(self.size)).unwrap_or(u64::MAX)
    }

    /// Takes `tokens` (the burst first), into debt if need be. Call after
    /// [`TokenBucket::wait`] said 0.
    pub fn take(&mut self, tokens: u64) {
        let tokens = u128::from(tokens);
        let from_burst = tokens.min(self.burst);
        self.burst -= from_burst;
        let rest = (tokens - from_burst) * self.refill_ns;
        self.budget = self
            .budget
            .saturating_sub(rest.min(i128::MAX as u128) as i128);
    }

    /// Whole tokens in the bucket now (negative in debt), burst excluded.
    pub fn tokens(&mut self, now: u64) -> i64 {
        self.refill(now);
        let t = self.budget / self.refill_ns as i128;
        t.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }
}

/// The buckets of one queue and the timer that wakes its device.
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    /// The timer is set: the queue waits for it.
    blocked: bool,
    /// Requests that had to wait.
    throttled: u64,
    /// The timer could not be armed once (said once in the log).
    arm_failed: bool,
    start: Instant,
}

impl RateLimiter {
    /// A limiter with `cfg`'s buckets (none: unlimited, but ready for
    /// [`RateLimiter::update`]). Creates the timerfd.
    pub fn new(cfg: &RateLimiterConfig) -> io::Result<Self> {
        let mut l = RateLimiter {
            bandwidth: None,
            ops: None,
            timer: TimerFd::new()?,
            blocked: false,
            throttled: 0,
            arm_failed: false,
            start: Instant::now(),
        };
        l.update(cfg);
        Ok(l)
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// New buckets (full) from `cfg`. A queue waiting for the timer is
    /// woken at once, to try again under the new limits.
    pub fn update(&mut self, cfg: &RateLimiterConfig) {
        let now = self.now();
        self.bandwidth = cfg.bandwidth.and_then(|b| TokenBucket::new(&b, now));
        self.ops = cfg.ops.and_then(|b| TokenBucket::new(&b, now));
        if self.blocked {
            self.arm(1);
        }
    }

    /// Whether any bucket limits.
    pub fn limits(&self) -> bool {
        self.bandwidth.is_some() || self.ops.is_some()
    }

    /// Lets a request of `bytes` and `ops` through, or arms the timer and
    /// says no: the device must put the request back and wait for
    /// [`RateLimiter::timer_fd`].
    pub fn consume(&mut self, bytes: u64, ops: u64) -> bool {
        if self.blocked {
            return false;
        }
        let now = self.now();
        match self.wait_at(bytes, ops, now) {
            0 => {
                self.take(bytes, ops);
                true
            }
            ns if self.arm(ns) => {
                self.throttled += 1;
                false
            }
            // Without a timer to wake the queue, let the request through
            // rather than stall the device.
            _ => {
                self.take(bytes, ops);
                true
            }
        }
    }

    /// Nanoseconds until `bytes` and `ops` may pass at time `now`.
    fn wait_at(&mut self, bytes: u64, ops: u64, now: u64) -> u64 {
        let bw = self.bandwidth.as_mut().map_or(0, |b| b.wait(bytes, now));
        let op = self.ops.as_mut().map_or(0, |b| b.wait(ops, now));
        bw.max(op)
    }

    fn take(&mut self, bytes: u64, ops: u64) {
        if let Some(b) = &mut self.bandwidth {
            b.take(bytes);
        }
        if let Some(b) = &mut self.ops {
            b.take(ops);
        }
    }

    /// Sets the timer to fire in `ns`; false if it cannot be set.
    fn arm(&mut self, ns: u64) -> bool {
        // A zero duration would disarm the timer.
        match self.timer.reset(Duration::from_nanos(ns.max(1)), None) {
            Ok(()) => self.blocked = true,
            Err(e) if !self.arm_failed => {
                self.arm_failed = true;
                log::warn!("rate limiter: cannot arm its timer ({e}); not limiting meanwhile");
            }
            Err(_) => {}
        }
        self.blocked
    }

    /// Whether the queue waits for the timer.
    pub fn blocked(&self) -> bool {
        self.blocked
    }

    /// Requests that had to wait so far.
    pub fn throttled(&self) -> u64 {
        self.throttled
    }

    /// The timer, for the device's event loop: readable when the queue may
    /// go on.
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// The timer fired: the queue may go on.
    pub fn timer_fired(&mut self) {
        // Readable, so this read does not block; it clears the expiry.
        if self.blocked {
            let _ = self.timer.wait();
        }
        self.blocked = false;
    }
}

#[cfg(test)]
mod tests;
