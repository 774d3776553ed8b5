//! A test device: counts accesses, remembers the last value written, and
//! answers reads with a fixed value. The demo and the KVM tests put it on
//! the port-I/O and MMIO buses to prove round trips.

use crate::bus::{BusDevice, DeviceAction};

/// Access counters of one probe.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProbeCounts {
    /// Number of reads.
    pub reads: u64,
    /// Number of writes.
    pub writes: u64,
    /// The last value written (little endian, up to 8 bytes).
    pub last_written: u64,
}

/// The device.
pub struct Probe {
    read_value: u64,
    counts: ProbeCounts,
}

impl Probe {
    /// A probe whose reads return `read_value`.
    pub fn new(read_value: u64) -> Self {
        Self {
            read_value,
            counts: ProbeCounts::default(),
        }
    }

    /// What the guest has done so far.
    pub fn counts(&self) -> ProbeCounts {
        self.counts
    }
}

impl BusDevice for Probe {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        self.counts.reads += 1;
        let bytes = self.read_value.to_le_bytes();
        for (d, s) in data
            .iter_mut()
            .zip(bytes.iter().chain(std::iter::repeat(&0)))
        {
            *d = *s;
        }
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> DeviceAction {
        self.counts.writes += 1;
        let mut bytes = [0u8; 8];
        let n = data.len().min(8);
        bytes[..n].copy_from_slice(&data[..n]);
        self.counts.last_written = u64::from_le_bytes(bytes);
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_round_trips() {
        let mut p = Probe::new(0x1122_3344_5566_7788);
        let mut d = [0u8; 4];
        p.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x5566_7788);
        p.write(0, &[0xcd, 0xab]);
        assert_eq!(
            p.counts(),
            ProbeCounts {
                reads: 1,
                writes: 1,
                last_written: 0xabcd
            }
        );
    }
}
