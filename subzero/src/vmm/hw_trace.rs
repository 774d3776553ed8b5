//! Hardware exit tracing for one VM: starts the tracer, hands each vCPU
//! thread its attacher, and builds the hardware section of the report.

use std::sync::{Arc, Mutex};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::Machine;
use crate::arch::x86_64::layout::{APIC_START, IOAPIC_START};
use crate::bus::Buses;
use crate::devices::virtio::mmio::lock;
use crate::stats::hardware::{HwVcpu, Regions};
use crate::stats::hw_report::{HardwareReport, HwStatus};
use crate::stats::report::ReasonRow;
use crate::stats::symbols::Symbols;
use crate::trace::Tracer;

/// The hardware view of one VM's exits, or why there is none.
pub struct HwTrace {
    tracer: Option<Tracer>,
    per_vcpu: Arc<Mutex<Vec<HwVcpu>>>,
    status: HwStatus,
    note: Option<String>,
}

/// RAM, every MMIO device window of `machine` and KVM's IOAPIC and LAPIC
/// pages, for classifying nested page faults.
pub fn regions(machine: &Machine) -> Regions {
    let mut ranges: Vec<(u64, u64, String)> = machine
        .memory
        .iter()
        .map(|r| (r.start_addr().0, r.len(), "ram".to_string()))
        .collect();
    ranges.extend(
        machine
            .buses
            .mmio
            .ranges()
            .map(|(name, base, len)| (base, len, name.to_string())),
    );
    // KVM's in-kernel interrupt controllers, emulated on nested page faults.
    ranges.push((IOAPIC_START, 0x1000, "ioapic (in KVM)".into()));
    ranges.push((APIC_START, 0x1000, "lapic (in KVM)".into()));
    Regions::new(ranges)
}

impl HwTrace {
    /// Starts tracing `machine`'s vCPUs, unless `enabled` is false. When
    /// tracing is not possible, says so in one log line and carries on.
    pub fn start(machine: &mut Machine, enabled: bool) -> HwTrace {
        let regions = Arc::new(regions(machine));
        let per_vcpu = Arc::new(Mutex::new(
            (0..machine.vcpus.len())
                .map(|_| HwVcpu::new(regions.clone()))
                .collect::<Vec<_>>(),
        ));
        if !enabled {
            return HwTrace {
                tracer: None,
                per_vcpu,
                status: HwStatus::Off,
                note: Some("turned off with --no-trace".into()),
            };
        }
        let sink_stats = per_vcpu.clone();
        let sink = Box::new(move |vcpu: usize, events: &[_], lost: u64| {
            if let Some(v) = lock(&sink_stats).get_mut(vcpu) {
                v.record(events, lost);
            }
        });
        match Tracer::start(sink) {
            Ok(tracer) => {
                machine.tracer = Some(tracer.attacher());
                HwTrace {
                    tracer: Some(tracer),
                    per_vcpu,
                    status: HwStatus::Traced,
                    note: None,
                }
            }
            Err(why) => {
                log::warn!("hardware exit reasons unavailable: {why}");
                HwTrace {
                    tracer: None,
                    per_vcpu,
                    status: HwStatus::Unavailable,
                    note: Some(why.0),
                }
            }
        }
    }

    /// Whether the tracepoints are being read.
    pub fn traced(&self) -> bool {
        self.status == HwStatus::Traced
    }

    /// Drains the rings one last time and stops the reader (call once the
    /// vCPUs have stopped).
    pub fn finish(&mut self) {
        if let Some(t) = self.tracer.as_mut() {
            t.finish();
        }
        lock(&self.per_vcpu).iter_mut().for_each(HwVcpu::flush);
    }

    /// The hardware section as it stands.
    pub fn report(
        &self,
        buses: &Buses,
        userspace: &[ReasonRow],
        symbols: Option<(&Symbols, u64)>,
    ) -> HardwareReport {
        if self.status != HwStatus::Traced {
            return HardwareReport::without(self.status, self.note.clone().unwrap_or_default());
        }
        let mut note = self.note.clone();
        if let Some(t) = &self.tracer {
            note = note.or(t.failure());
        }
        let per_vcpu = lock(&self.per_vcpu).clone();
        HardwareReport::build(&per_vcpu, note, buses, userspace, symbols)
    }
}
