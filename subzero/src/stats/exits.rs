//! Per-vCPU exit accounting: counts and handling-time histograms by exit
//! kind and by target, guest time against VMM time, and sampled guest RIPs.
//! Times are in TSC ticks (see [`super::clock`]); reports convert them.

use std::collections::HashMap;

use super::clock::FnvBuild;
use super::histogram::Histogram;
use crate::exits::{ExitKind, Target};

/// One row of accounting: how many exits and how long the VMM took.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timed {
    /// Handling time per exit, TSC ticks.
    pub latency: Histogram,
}

impl Timed {
    /// Number of exits.
    pub fn count(&self) -> u64 {
        self.latency.count()
    }
}

/// Everything one vCPU saw.
#[derive(Clone, Debug, Default)]
pub struct VcpuStats {
    by_kind: [Timed; ExitKind::ALL.len()],
    /// Port-I/O and MMIO exits by target.
    pub by_target: HashMap<Target, Timed, FnvBuild>,
    /// Ticks inside KVM_RUN: the guest running, plus exits KVM handled itself.
    pub guest_ticks: u64,
    /// Ticks outside KVM_RUN: Subzero handling exits and accounting.
    pub vmm_ticks: u64,
    /// Sampled guest RIPs and how often each was seen.
    pub rips: HashMap<u64, u64, FnvBuild>,
    /// Exits between two RIP samples.
    pub rip_sample_period: u64,
    /// The guest's MSR_LSTAR when the vCPU stopped (locates a KASLR kernel).
    pub lstar: Option<u64>,
}

fn slot(kind: ExitKind) -> usize {
    ExitKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

impl VcpuStats {
    /// Records one exit handled in `handling` (nanoseconds).
    pub fn record(&mut self, kind: ExitKind, target: Option<Target>, handling_ns: u64) {
        self.by_kind[slot(kind)].latency.record(handling_ns);
        if let Some(t) = target {
            self.by_target
                .entry(t)
                .or_default()
                .latency
                .record(handling_ns);
        }
    }

    /// Records a sampled guest RIP.
    pub fn sample_rip(&mut self, rip: u64) {
        *self.rips.entry(rip).or_default() += 1;
    }

    /// The accounting for one exit kind.
    pub fn kind(&self, kind: ExitKind) -> &Timed {
        &self.by_kind[slot(kind)]
    }

    /// Exits of `kind`.
    pub fn get(&self, kind: ExitKind) -> u64 {
        self.kind(kind).count()
    }

    /// All exits.
    pub fn total(&self) -> u64 {
        self.by_kind.iter().map(Timed::count).sum()
    }

    /// Total VMM handling time over all exits, ticks.
    pub fn handling_ticks(&self) -> u64 {
        self.by_kind.iter().map(|t| t.latency.sum()).sum()
    }

    /// Adds another vCPU's accounting to this one.
    pub fn merge(&mut self, other: &VcpuStats) {
        for (a, b) in self.by_kind.iter_mut().zip(other.by_kind.iter()) {
            a.latency.merge(&b.latency);
        }
        for (t, timed) in &other.by_target {
            self.by_target
                .entry(*t)
                .or_default()
                .latency
                .merge(&timed.latency);
        }
        for (rip, n) in &other.rips {
            *self.rips.entry(*rip).or_default() += n;
        }
        self.guest_ticks += other.guest_ticks;
        self.vmm_ticks += other.vmm_ticks;
        self.rip_sample_period = self.rip_sample_period.max(other.rip_sample_period);
        self.lstar = self.lstar.or(other.lstar);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exits::Space;

    fn serial_write() -> Target {
        Target {
            space: Space::Pio,
            addr: 0x3f8,
            claimed: true,
            write: true,
        }
    }

    #[test]
    fn counts_by_kind_and_target() {
        let mut s = VcpuStats::default();
        for i in 0..10 {
            s.record(ExitKind::IoOut, Some(serial_write()), 1000 + i);
        }
        s.record(ExitKind::Hlt, None, 50);
        assert_eq!(s.get(ExitKind::IoOut), 10);
        assert_eq!(s.get(ExitKind::Hlt), 1);
        assert_eq!(s.total(), 11);
        assert_eq!(s.by_target[&serial_write()].count(), 10);
        assert_eq!(s.handling_ticks(), 10_045 + 50);
    }

    #[test]
    fn merge_adds_everything() {
        let mut a = VcpuStats::default();
        let mut b = VcpuStats::default();
        a.record(ExitKind::IoOut, Some(serial_write()), 10);
        b.record(ExitKind::IoOut, Some(serial_write()), 20);
        b.record(ExitKind::MmioRead, None, 30);
        a.sample_rip(0xffff_1000);
        b.sample_rip(0xffff_1000);
        a.guest_ticks = 5;
        b.guest_ticks = 7;
        a.merge(&b);
        assert_eq!(a.get(ExitKind::IoOut), 2);
        assert_eq!(a.total(), 3);
        assert_eq!(a.by_target[&serial_write()].latency.sum(), 30);
        assert_eq!(a.rips[&0xffff_1000], 2);
        assert_eq!(a.guest_ticks, 12);
    }
}
