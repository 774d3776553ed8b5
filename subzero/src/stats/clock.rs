//! The accounting clock: the CPU's time-stamp counter. Reading it costs a
//! few dozen cycles and never enters the kernel, unlike a clock_gettime
//! that falls back to a system call when the TSC is not the clocksource.
//! Ticks are converted to nanoseconds once, at report time, by comparing
//! the TSC with the monotonic clock over the whole run.

use std::time::Instant;

/// Reads the time-stamp counter.
#[inline]
pub fn ticks() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter; it touches no memory.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// A (TSC, monotonic clock) pair taken at the start of a run.
#[derive(Debug, Clone, Copy)]
pub struct TickClock {
    ticks: u64,
    at: Instant,
}

impl Default for TickClock {
    fn default() -> Self {
        Self::start()
    }
}

impl TickClock {
    /// Takes the pair now.
    pub fn start() -> Self {
        TickClock {
            ticks: ticks(),
            at: Instant::now(),
        }
    }

    /// Nanoseconds per tick, measured from the start until now. Falls back to
    /// 1.0 (ticks reported as nanoseconds) if the counter did not advance.
    pub fn ns_per_tick(&self) -> f64 {
        let ns = self.at.elapsed().as_nanos() as f64;
        let dt = ticks().wrapping_sub(self.ticks) as f64;
        if dt > 0.0 && ns > 0.0 {
            ns / dt
        } else {
            1.0
        }
    }
}

/// FNV-1a: a fast hasher for the small keys of the per-target map, where
/// SipHash would be a visible share of an exit's accounting cost.
#[derive(Default, Clone, Copy)]
pub struct FnvHasher(u64);

impl std::hash::Hasher for FnvHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// Builds [`FnvHasher`]s.
pub type FnvBuild = std::hash::BuildHasherDefault<FnvHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_advance_and_convert() {
        let clock = TickClock::start();
        let a = ticks();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(ticks() > a);
        let rate = clock.ns_per_tick();
        // Any real TSC runs between 100 MHz and 10 GHz.
        assert!((0.1..10.0).contains(&rate), "{rate} ns per tick");
    }
}
