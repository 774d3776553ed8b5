//! A log-linear latency histogram: O(1) record, fixed size, mergeable.
//!
//! Values (nanoseconds) fall into power-of-two ranges, each split into
//! [`SUB_BUCKETS`] equal sub-buckets, so a reported percentile is within
//! 1/SUB_BUCKETS (6.25%) of the true value. Count, sum, min and max are exact.

/// Sub-buckets per power of two.
pub const SUB_BUCKETS: usize = 16;
const SUB_BITS: u32 = SUB_BUCKETS.trailing_zeros();
/// Values below this are exact (one bucket each).
const LINEAR_LIMIT: u64 = SUB_BUCKETS as u64;
/// Buckets: the linear range, then SUB_BUCKETS per power of two up to 2^64.
const NUM_BUCKETS: usize = SUB_BUCKETS + (64 - SUB_BITS as usize) * SUB_BUCKETS;

/// The histogram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    buckets: Box<[u64; NUM_BUCKETS]>,
    count: u64,
    sum: u64,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: Box::new([0; NUM_BUCKETS]),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < LINEAR_LIMIT {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS
    let sub = (v >> (exp - SUB_BITS)) as usize & (SUB_BUCKETS - 1);
    SUB_BUCKETS + (exp - SUB_BITS) as usize * SUB_BUCKETS + sub
}

/// The smallest and largest value that land in bucket `i`.
fn bucket_range(i: usize) -> (u64, u64) {
    if i < SUB_BUCKETS {
        return (i as u64, i as u64);
    }
    let exp = ((i - SUB_BUCKETS) / SUB_BUCKETS) as u32 + SUB_BITS;
    let sub = ((i - SUB_BUCKETS) % SUB_BUCKETS) as u64;
    let width = 1u64 << (exp - SUB_BITS);
    let low = (1u64 << exp) + sub * width;
    (low, low.saturating_add(width - 1))
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, v: u64) {
        self.buckets[bucket_of(v)] += 1;
        self.count += 1;
        self.sum = self.sum.saturating_add(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Adds another histogram's values to this one.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum = self.sum.saturating_add(other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of all values.
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// Smallest value (0 when empty).
    pub fn min(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            self.min
        }
    }

    /// Largest value.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// The value at quantile `q` (0.0..=1.0): the upper bound of the bucket
    /// holding it, clamped to the exact min and max.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_range(i).1.clamp(self.min, self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for v in (0..5000u64).chain([1 << 40, u64::MAX - 1, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b < NUM_BUCKETS);
            assert!(b >= last || v >= 1 << 40, "monotonic");
            let (lo, hi) = bucket_range(b);
            assert!(lo <= v && v <= hi, "{v} in [{lo}, {hi}]");
            last = b;
        }
    }

    #[test]
    fn exact_fields_and_percentiles() {
        let mut h = Histogram::default();
        assert_eq!((h.count(), h.min(), h.max(), h.quantile(0.5)), (0, 0, 0, 0));
        for v in 1..=1000u64 {
            h.record(v);
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.sum(), 500_500);
        assert_eq!((h.min(), h.max()), (1, 1000));
        assert!((h.mean() - 500.5).abs() < 1e-9);
        let p50 = h.quantile(0.5);
        assert!(
            (500..=500 + 500 / SUB_BUCKETS as u64).contains(&p50),
            "p50 {p50}"
        );
        let p99 = h.quantile(0.99);
        assert!((990..=1000).contains(&p99), "p99 {p99}");
        assert_eq!(h.quantile(1.0), 1000);
    }

    #[test]
    fn an_outlier_shows_in_max_not_p50() {
        let mut h = Histogram::default();
        for _ in 0..999 {
            h.record(2_000);
        }
        h.record(5_000_000);
        let p50 = h.quantile(0.5);
        assert!((2_000..2_000 + 2_000 / SUB_BUCKETS as u64 + 1).contains(&p50));
        assert_eq!(h.max(), 5_000_000);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = (
            Histogram::default(),
            Histogram::default(),
            Histogram::default(),
        );
        for v in 0..300u64 {
            let h: &mut Histogram = if v % 3 == 0 { &mut a } else { &mut b };
            h.record(v * 37);
            all.record(v * 37);
        }
        a.merge(&b);
        assert_eq!(a, all);
    }
}
