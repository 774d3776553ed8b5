//! The stats report: built once from a run's accounting, then rendered as a
//! table for people, JSON for scripts (schema in docs/stats.md) or the
//! Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::hw_report::HardwareReport;
use super::symbols::Symbols;
use super::VcpuStats;
use crate::bus::Buses;
use crate::devices::virtio::VirtioDeviceCounts;
use crate::exits::{ExitKind, Space, Target};
use crate::logger::LogCount;

/// Schema id of the JSON form.
pub const SCHEMA: &str = "subzero.stats/v1";
/// Rows shown in the "top" lists of the table.
const TOP: usize = 12;

/// Counters KVM keeps itself (KVM_GET_STATS_FD), by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KvmCounters {
    /// VM-wide counters.
    pub vm: BTreeMap<String, u64>,
    /// One map per vCPU.
    pub vcpus: Vec<BTreeMap<String, u64>>,
}

/// One exit reason.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReasonRow {
    /// Exit reason, e.g. "io-out".
    pub reason: String,
    /// Exits.
    pub count: u64,
    /// Share of all userspace exits, 0..1.
    pub share: f64,
    /// Total VMM handling time, ns.
    pub total_ns: u64,
    /// Mean handling time, ns.
    pub mean_ns: f64,
    /// Median handling time, ns.
    pub p50_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// Longest, ns.
    pub max_ns: u64,
}

/// Exits to one device range (or one unclaimed address), one direction.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TargetRow {
    /// "pio" or "mmio".
    pub space: String,
    /// Range base (or the address, when unclaimed).
    pub addr: u64,
    /// Owning device, or null when no device claims the address.
    pub device: Option<String>,
    /// "read" or "write".
    pub access: String,
    /// Exits.
    pub count: u64,
    /// Total VMM handling time, ns.
    pub total_ns: u64,
    /// Mean handling time, ns.
    pub mean_ns: f64,
}

/// Where one vCPU's time went.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VcpuRow {
    /// vCPU index.
    pub id: usize,
    /// Userspace exits.
    pub exits: u64,
    /// Seconds inside KVM_RUN (guest, and exits KVM handled itself).
    pub guest_s: f64,
    /// Seconds in Subzero between runs.
    pub vmm_s: f64,
}

/// A sampled guest instruction address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RipRow {
    /// Guest RIP.
    pub rip: u64,
    /// "function+0xoffset" when symbols were given and cover it.
    pub symbol: Option<String>,
    /// Samples at this RIP.
    pub samples: u64,
}

/// Sampled RIPs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RipSamples {
    /// One sample every this many exits per vCPU.
    pub sample_period: u64,
    /// Most sampled first.
    pub top: Vec<RipRow>,
    /// The KASLR shift the symbols were read with (0: none, or no symbols).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub kaslr_slide: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Queue notifications and interrupts of one virtio device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioRow {
    /// Device name, e.g. "virtio-blk0".
    pub device: String,
    /// MMIO window base.
    pub base: u64,
    /// Queue notifications that KVM delivered through an ioeventfd: no
    /// exit to userspace, so they are not in `exits`.
    pub eventfd_kicks: u64,
    /// Queue notifications that exited to userspace as MMIO writes.
    pub mmio_kicks: u64,
    /// Interrupts raised through the irqfd.
    pub interrupts: u64,
    /// Times the device entered DEVICE_NEEDS_RESET.
    pub needs_reset: u64,
    /// Requests and frames its rate limiter held back until tokens
    /// refilled (absent in reports from before rate limiters).
    #[serde(default)]
    pub throttled: u64,
    /// Chains the device completed (put on its used rings): requests for
    /// a disk, frames for a network card. Kicks and interrupts per
    /// completed chain say how well notifications were batched (absent in
    /// reports from before this count).
    #[serde(default)]
    pub completed: u64,
}

impl From<&VirtioDeviceCounts> for VirtioRow {
    fn from(c: &VirtioDeviceCounts) -> Self {
        VirtioRow {
            device: c.device.clone(),
            base: c.base,
            eventfd_kicks: c.eventfd_kicks,
            mmio_kicks: c.mmio_kicks,
            interrupts: c.interrupts,
            needs_reset: c.needs_reset,
            throttled: c.throttled,
            completed: c.completed,
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatsReport {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Wall time of the run, seconds.
    pub elapsed_s: f64,
    /// All userspace exits.
    pub total_exits: u64,
    /// By reason, most frequent first.
    pub exits: Vec<ReasonRow>,
    /// By target, most frequent first.
    pub targets: Vec<TargetRow>,
    /// Per vCPU.
    pub vcpus: Vec<VcpuRow>,
    /// KVM's own counters, when the host has KVM_GET_STATS_FD.
    pub kvm: Option<KvmCounters>,
    /// Sampled guest RIPs.
    pub rips: RipSamples,
    /// Virtio devices' notifications (set by the caller; empty without devices).
    #[serde(default)]
    pub virtio: Vec<VirtioRow>,
    /// PCI passthrough devices (set by the caller; empty without them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passthrough: Vec<super::passthrough::PassthroughRow>,
    /// How often each place in Subzero logged, and how many of those lines
    /// the rate limit let through (set by the caller; see `logger`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<LogCount>,
    /// Hardware exits from KVM's tracepoints (set by the caller; absent
    /// when not asked for, and in reports from before tracing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware: Option<HardwareReport>,
}

fn space_name(space: Space) -> &'static str {
    match space {
        Space::Pio => "pio",
        Space::Mmio => "mmio",
    }
}

fn target_row(t: &Target, timed: &super::exits::Timed, buses: &Buses, ns: f64) -> TargetRow {
    let bus = match t.space {
        Space::Pio => &buses.pio,
        Space::Mmio => &buses.mmio,
    };
    TargetRow {
        space: space_name(t.space).into(),
        addr: t.addr,
        device: t
            .claimed
            .then(|| bus.name_at(t.addr).unwrap_or("?").to_string()),
        access: if t.write { "write" } else { "read" }.into(),
        count: timed.count(),
        total_ns: (timed.latency.sum() as f64 * ns) as u64,
        mean_ns: timed.latency.mean() * ns,
    }
}

impl StatsReport {
    /// Builds the report from per-vCPU accounting, whose times are TSC ticks
    /// of `ns_per_tick` nanoseconds each.
    pub fn build(
        per_vcpu: &[VcpuStats],
        elapsed: Duration,
        ns_per_tick: f64,
        buses: &Buses,
        kvm: Option<KvmCounters>,
        symbols: Option<&Symbols>,
    ) -> StatsReport {
        let mut all = VcpuStats::default();
        per_vcpu.iter().for_each(|v| all.merge(v));
        let total = all.total();
        let mut exits: Vec<ReasonRow> = ExitKind::ALL
            .iter()
            .map(|&k| (k, &all.kind(k).latency))
            .filter(|(_, h)| h.count() > 0)
            .map(|(k, h)| {
                let ns = |ticks: u64| (ticks as f64 * ns_per_tick) as u64;
                ReasonRow {
                    reason: k.name().into(),
                    count: h.count(),
                    share: h.count() as f64 / total.max(1) as f64,
                    total_ns: ns(h.sum()),
                    mean_ns: h.mean() * ns_per_tick,
                    p50_ns: ns(h.quantile(0.5)),
                    p99_ns: ns(h.quantile(0.99)),
                    max_ns: ns(h.max()),
                }
            })
            .collect();
        exits.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
        let mut targets: Vec<TargetRow> = all
            .by_target
            .iter()
            .map(|(t, timed)| target_row(t, timed, buses, ns_per_tick))
            .collect();
        targets.sort_by(|a, b| {
            (b.count, &a.space, a.addr, &a.access).cmp(&(a.count, &b.space, b.addr, &b.access))
        });
        let vcpus = per_vcpu
            .iter()
            .enumerate()
            .map(|(id, v)| VcpuRow {
                id,
                exits: v.total(),
                guest_s: v.guest_ticks as f64 * ns_per_tick / 1e9,
                vmm_s: v.vmm_ticks as f64 * ns_per_tick / 1e9,
            })
            .collect();
        // The KASLR shift; an unshifted kernel (or no LSTAR yet) slides by 0.
        let slide = symbols
            .zip(all.lstar)
            .and_then(|(s, lstar)| s.slide_for_lstar(lstar))
            .unwrap_or(0);
        let mut top: Vec<RipRow> = all
            .rips
            .iter()
            .map(|(&rip, &samples)| RipRow {
                rip,
                symbol: symbols.and_then(|s| s.name(rip, slide)),
                samples,
            })
            .collect();
        top.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.rip.cmp(&b.rip)));
        top.truncate(50);
        StatsReport {
            schema: SCHEMA.into(),
            elapsed_s: elapsed.as_secs_f64(),
            total_exits: total,
            exits,
            targets,
            vcpus,
            kvm,
            rips: RipSamples {
                sample_period: all.rip_sample_period,
                top,
                kaslr_slide: slide,
            },
            virtio: Vec::new(),
            passthrough: Vec::new(),
            log: Vec::new(),
            hardware: None,
        }
    }

    /// JSON, one object (schema [`SCHEMA`]).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Prometheus text exposition format.
    pub fn to_prometheus(&self) -> String {
        let mut o = String::new();
        let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in rows {
                let _ = writeln!(o, "{name}{{{labels}}} {value}");
            }
        };
        family(
            "subzero_exits_total",
            "counter",
            "VM exits handled by Subzero in userspace, by reason.",
            self.exits
                .iter()
                .map(|r| (format!("reason=\"{}\"", r.reason), r.count.to_string()))
                .collect(),
        );
        family(
            "subzero_exit_handling_seconds_total",
            "counter",
            "Time Subzero spent handling exits, by reason.",
            self.exits
                .iter()
                .map(|r| (format!("reason=\"{}\"", r.reason), secs(r.total_ns)))
                .collect(),
        );
        family(
            "subzero_target_exits_total",
            "counter",
            "Port-I/O and MMIO exits by device range and direction.",
            self.targets
                .iter()
                .map(|t| {
                    let device = t.device.as_deref().unwrap_or("unclaimed");
                    (
                        format!(
                            "space=\"{}\",addr=\"{:#x}\",device=\"{device}\",access=\"{}\"",
                            t.space, t.addr, t.access
                        ),
                        t.count.to_string(),
                    )
                })
                .collect(),
        );
        for (name, help, pick) in [
            (
                "subzero_vcpu_guest_seconds_total",
                "Time inside KVM_RUN.",
                0,
            ),
            (
                "subzero_vcpu_vmm_seconds_total",
                "Time in Subzero between runs.",
                1,
            ),
        ] {
            family(
                name,
                "counter",
                help,
                self.vcpus
                    .iter()
                    .map(|v| {
                        let s = if pick == 0 { v.guest_s } else { v.vmm_s };
                        (format!("vcpu=\"{}\"", v.id), format!("{s}"))
                    })
                    .collect(),
            );
        }
        let virtio = |pick: fn(&VirtioRow) -> u64| -> Vec<(String, String)> {
            self.virtio
                .iter()
                .map(|v| (format!("device=\"{}\"", v.device), pick(v).to_string()))
                .collect()
        };
        let (eventfd, mmio, irqs, throttled, completed) = (
            virtio(|v| v.eventfd_kicks),
            virtio(|v| v.mmio_kicks),
            virtio(|v| v.interrupts),
            virtio(|v| v.throttled),
            virtio(|v| v.completed),
        );
        if !self.virtio.is_empty() {
            family(
                "subzero_virtio_eventfd_kicks_total",
                "counter",
                "Virtio queue notifications delivered by KVM through an ioeventfd (no userspace exit).",
                eventfd,
            );
            family(
                "subzero_virtio_mmio_kicks_total",
                "counter",
                "Virtio queue notifications that exited to userspace as MMIO writes.",
                mmio,
            );
            family(
                "subzero_virtio_interrupts_total",
                "counter",
                "Interrupts raised by virtio devices through irqfds.",
                irqs,
            );
            family(
                "subzero_virtio_throttled_total",
                "counter",
                "Virtio requests and frames a rate limiter held back until its buckets refilled.",
                throttled,
            );
            family(
                "subzero_virtio_completed_total",
                "counter",
                "Virtio descriptor chains a device completed (put on its used rings): disk requests, network frames.",
                completed,
            );
        }
        if !self.log.is_empty() {
            family(
                "subzero_log_lines_total",
                "counter",
                "Log lines Subzero was asked to write, per place in its code (the rate limit writes at most one per 10 s).",
                self.log
                    .iter()
                    .map(|l| {
                        (
                            format!("site=\"{}\",level=\"{}\"", l.site, l.level),
                            l.count.to_string(),
                        )
                    })
                    .collect(),
            );
        }
        if let Some(hw) = self.hardware.as_ref().filter(|h| h.status == "traced") {
            for (name, help, rows) in hw.prometheus() {
                family(name, "counter", help, rows);
            }
        }
        if let Some(kvm) = &self.kvm {
            let mut rows: Vec<(String, String)> = Vec::new();
            for (id, map) in kvm.vcpus.iter().enumerate() {
                for (name, v) in map {
                    rows.push((format!("vcpu=\"{id}\",stat=\"{name}\""), v.to_string()));
                }
            }
            family(
                "subzero_kvm_vcpu_stat",
                "untyped",
                "KVM's own per-vCPU statistics (KVM_GET_STATS_FD).",
                rows,
            );
            family(
                "subzero_kvm_vm_stat",
                "untyped",
                "KVM's own VM statistics (KVM_GET_STATS_FD).",
                kvm.vm
                    .iter()
                    .map(|(n, v)| (format!("stat=\"{n}\""), v.to_string()))
                    .collect(),
            );
        }
        o
    }

    /// The human-readable table.
    pub fn to_table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "\n== subzero stats: {} userspace exits in {:.3} s on {} vCPU(s) ==\n",
            self.total_exits,
            self.elapsed_s,
            self.vcpus.len()
        );
        let _ = writeln!(
            o,
            "{:<15} {:>10} {:>6} {:>10} {:>9} {:>9} {:>9} {:>10}",
            "exit reason", "count", "share", "total ms", "mean us", "p50 us", "p99 us", "max us"
        );
        for r in &self.exits {
            let _ = writeln!(
                o,
                "{:<15} {:>10} {:>5.1}% {:>10.3} {:>9.2} {:>9.2} {:>9.2} {:>10.2}",
                r.reason,
                r.count,
                r.share * 100.0,
                r.total_ns as f64 / 1e6,
                r.mean_ns / 1e3,
                r.p50_ns as f64 / 1e3,
                r.p99_ns as f64 / 1e3,
                r.max_ns as f64 / 1e3
            );
        }
        let _ = writeln!(
            o,
            "\n{:<32} {:<6} {:>10} {:>10} {:>9}",
            "target", "access", "count", "total ms", "mean us"
        );
        for t in self.targets.iter().take(TOP) {
            let name = match &t.device {
                Some(d) => format!("{d} {}", addr(t)),
                None => format!("{} (unclaimed)", addr(t)),
            };
            let _ = writeln!(
                o,
                "{:<32} {:<6} {:>10} {:>10.3} {:>9.2}",
                name,
                t.access,
                t.count,
                t.total_ns as f64 / 1e6,
                t.mean_ns / 1e3
            );
        }
        if self.targets.len() > TOP {
            let _ = writeln!(
                o,
                "  ... {} more targets (see --stats-format json)",
                self.targets.len() - TOP
            );
        }
        let _ = writeln!(
            o,
            "\n{:<6} {:>10} {:>10} {:>10} {:>7}",
            "vcpu", "exits", "guest s", "vmm s", "guest%"
        );
        for v in &self.vcpus {
            let total = (v.guest_s + v.vmm_s).max(f64::MIN_POSITIVE);
            let _ = writeln!(
                o,
                "{:<6} {:>10} {:>10.3} {:>10.3} {:>6.1}%",
                v.id,
                v.exits,
                v.guest_s,
                v.vmm_s,
                v.guest_s / total * 100.0
            );
        }
        self.virtio_table(&mut o);
        super::passthrough::table(&self.passthrough, &mut o);
        self.log_table(&mut o);
        self.kvm_table(&mut o);
        if let Some(hw) = &self.hardware {
            hw.to_table(&mut o);
        }
        if !self.rips.top.is_empty() {
            let _ = writeln!(
                o,
                "\ntop guest RIPs at exits (1 sample every {} exits per vCPU)",
                self.rips.sample_period
            );
            for r in self.rips.top.iter().take(TOP) {
                let sym = r.symbol.as_deref().unwrap_or("");
                let _ = writeln!(o, "  {:#018x} {:>8}  {sym}", r.rip, r.samples);
            }
        }
        o
    }

    fn virtio_table(&self, o: &mut String) {
        if self.virtio.is_empty() {
            return;
        }
        let _ = writeln!(
            o,
            "\nvirtio queue notifications (eventfd kicks never exit to userspace)\n\
             {:<14} {:<12} {:>14} {:>14} {:>12} {:>11} {:>10} {:>10} {:>8} {:>8}",
            "device",
            "mmio base",
            "eventfd kicks",
            "mmio kicks",
            "interrupts",
            "needs reset",
            "throttled",
            "completed",
            "kicks/c",
            "irqs/c"
        );
        for v in &self.virtio {
            let _ = writeln!(
                o,
                "{:<14} {:<12} {:>14} {:>14} {:>12} {:>11} {:>10} {:>10} {:>8} {:>8}",
                v.device,
                format!("{:#x}", v.base),
                v.eventfd_kicks,
                v.mmio_kicks,
                v.interrupts,
                v.needs_reset,
                v.throttled,
                v.completed,
                per(v.eventfd_kicks + v.mmio_kicks, v.completed),
                per(v.interrupts, v.completed)
            );
        }
    }

    fn log_table(&self, o: &mut String) {
        let limited: Vec<&LogCount> = self.log.iter().filter(|l| l.count > l.written).collect();
        if limited.is_empty() {
            return;
        }
        let _ = writeln!(
            o,
            "\nlog lines left out by the rate limit (one per 10 s per place)\n\
             {:>10} {:>8}  {:<7} first message",
            "asked", "written", "level"
        );
        for l in limited.iter().take(TOP) {
            let _ = writeln!(
                o,
                "{:>10} {:>8}  {:<7} {}",
                l.count, l.written, l.level, l.first
            );
        }
    }

    fn kvm_table(&self, o: &mut String) {
        let Some(kvm) = &self.kvm else {
            let _ = writeln!(
                o,
                "\nKVM counters: unavailable (no KVM_GET_STATS_FD on this host)"
            );
            return;
        };
        let _ = writeln!(
            o,
            "\nKVM's own counters (include exits KVM handled without coming to userspace)"
        );
        let mut names: Vec<&String> = kvm
            .vcpus
            .iter()
            .flat_map(|m| m.iter().filter(|(_, v)| **v > 0).map(|(n, _)| n))
            .collect();
        names.sort();
        names.dedup();
        let _ = write!(o, "{:<28}", "vcpu stat");
        for id in 0..kvm.vcpus.len() {
            let _ = write!(o, " {:>12}", format!("vcpu{id}"));
        }
        let _ = writeln!(o);
        for name in names {
            let _ = write!(o, "{name:<28}");
            for m in &kvm.vcpus {
                let _ = write!(o, " {:>12}", m.get(name).copied().unwrap_or(0));
            }
            let _ = writeln!(o);
        }
        let vm: Vec<String> = kvm
            .vm
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        if !vm.is_empty() {
            let _ = writeln!(o, "vm: {}", vm.join(" "));
        }
    }
}

fn addr(t: &TargetRow) -> String {
    match t.space.as_str() {
        "pio" => format!("{:#x}", t.addr),
        _ => format!("mmio {:#x}", t.addr),
    }
}

/// `n / of` with two decimals, or "-" when nothing was completed.
fn per(n: u64, of: u64) -> String {
    match of {
        0 => "-".into(),
        _ => format!("{:.2}", n as f64 / of as f64),
    }
}

fn secs(ns: u64) -> String {
    format!("{}", ns as f64 / 1e9)
}
