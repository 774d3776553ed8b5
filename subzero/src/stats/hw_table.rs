//! The hardware section rendered: the table for people, the Prometheus
//! families, and the live view's rates.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::hw_report::HardwareReport;

/// Rows shown per breakdown in the table.
const TOP: usize = 12;

/// One Prometheus family: name, help, and (labels, value) rows.
pub type Family = (&'static str, &'static str, Vec<(String, String)>);

/// How many exits per second of each hardware reason between two reports.
pub fn rates(
    before: Option<&HardwareReport>,
    after: &HardwareReport,
    s: f64,
) -> Vec<(String, f64)> {
    let old: HashMap<&str, u64> = before
        .map(|b| {
            b.reasons
                .iter()
                .map(|r| (r.reason.as_str(), r.count))
                .collect()
        })
        .unwrap_or_default();
    let mut v: Vec<(String, f64)> = after
        .reasons
        .iter()
        .map(|r| {
            let d = r
                .count
                .saturating_sub(old.get(r.reason.as_str()).copied().unwrap_or(0));
            (r.reason.clone(), d as f64 / s)
        })
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

fn us(ns: f64) -> f64 {
    ns / 1e3
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn mean(total: u64, n: u64) -> f64 {
    total as f64 / n.max(1) as f64
}

impl HardwareReport {
    /// The human-readable tables.
    pub fn to_table(&self, o: &mut String) {
        if self.status != "traced" {
            let _ = writeln!(
                o,
                "\nhardware exit reasons: {} ({})",
                self.status,
                self.note.as_deref().unwrap_or("")
            );
            return;
        }
        let _ =
            writeln!(
            o,
            "\n== hardware exits (KVM's tracepoints{}): {} exits, {} records lost, {} unpaired ==",
            self.isa.as_deref().map(|i| format!(", {i}")).unwrap_or_default(),
            self.total_exits,
            self.lost,
            self.unpaired
        );
        if let Some(note) = &self.note {
            let _ = writeln!(o, "note: {note}");
        }
        if self.reasons.is_empty() {
            let _ = writeln!(o, "(no kvm_exit seen: no table of hardware reasons)");
            self.breakdowns(o);
            return;
        }
        let vcpus = self.reasons.first().map_or(0, |r| r.per_vcpu.len());
        let _ = write!(
            o,
            "{:<22} {:>9} {:>6} {:>10} {:>9} {:>8} {:>8} {:>10} {:>9}",
            "hw exit reason",
            "count",
            "share",
            "total ms",
            "mean us",
            "p50 us",
            "p99 us",
            "max us",
            "to user"
        );
        if vcpus > 1 {
            for i in 0..vcpus {
                let _ = write!(o, " {:>8}", format!("vcpu{i}"));
            }
        }
        let _ = writeln!(o);
        for r in &self.reasons {
            let _ = write!(
                o,
                "{:<22} {:>9} {:>5.1}% {:>10.3} {:>9.2} {:>8.2} {:>8.2} {:>10.2} {:>9}",
                r.reason,
                r.count,
                r.share * 100.0,
                ms(r.total_ns),
                us(r.mean_ns),
                us(r.p50_ns as f64),
                us(r.p99_ns as f64),
                us(r.max_ns as f64),
                r.to_userspace
            );
            if vcpus > 1 {
                for n in &r.per_vcpu {
                    let _ = write!(o, " {n:>8}");
                }
            }
            let _ = writeln!(o);
        }
        self.joined_table(o);
        self.breakdowns(o);
    }

    fn joined_table(&self, o: &mut String) {
        if self.joined.is_empty() {
            return;
        }
        let _ = writeln!(
            o,
            "\nexits that came to Subzero: the hardware exit, then Subzero\n\
             {:<22} {:>9} {:>12} {:>16} {:>22}",
            "hw exit reason", "to user", "KVM part us", "user+return us", "Subzero's handling us"
        );
        for j in &self.joined {
            let own = match j.subzero_mean_ns {
                Some(ns) => format!("{:.2} ({})", us(ns), j.userspace_kinds.join("+")),
                None => "-".into(),
            };
            let _ = writeln!(
                o,
                "{:<22} {:>9} {:>12.2} {:>16.2} {:>22}",
                j.reason,
                j.to_userspace,
                us(j.kvm_mean_ns),
                us(j.userspace_mean_ns),
                own
            );
        }
    }

    fn breakdowns(&self, o: &mut String) {
        if !self.msrs.is_empty() {
            let _ = writeln!(
                o,
                "\nMSR exits\n{:<36} {:<6} {:>9} {:>10} {:>9}",
                "msr", "access", "count", "total ms", "mean us"
            );
            for m in self.msrs.iter().take(TOP) {
                let label = format!("{} ({:#x})", m.name, m.index);
                let _ = writeln!(
                    o,
                    "{label:<36} {:<6} {:>9} {:>10.3} {:>9.2}",
                    m.access,
                    m.count,
                    ms(m.total_ns),
                    us(mean(m.total_ns, m.count))
                );
            }
            more(o, self.msrs.len());
        }
        if !self.cpuid.is_empty() {
            let _ = writeln!(
                o,
                "\nCPUID exits by leaf\n{:<36} {:>9} {:>10} {:>9}",
                "leaf", "count", "total ms", "mean us"
            );
            for c in self.cpuid.iter().take(TOP) {
                let label = format!("{:#x} {}", c.leaf, c.name.as_deref().unwrap_or(""));
                let _ = writeln!(
                    o,
                    "{label:<36} {:>9} {:>10.3} {:>9.2}",
                    c.count,
                    ms(c.total_ns),
                    us(mean(c.total_ns, c.count))
                );
            }
            more(o, self.cpuid.len());
        }
        if !self.npf.is_empty() {
            let _ = writeln!(
                o,
                "\nnested page faults by guest-physical region\n{:<36} {:>9} {:>9} {:>10} {:>9}",
                "region", "count", "to user", "total ms", "mean us"
            );
            for n in self.npf.iter().take(TOP) {
                let _ = writeln!(
                    o,
                    "{:<36} {:>9} {:>9} {:>10.3} {:>9.2}",
                    n.region,
                    n.count,
                    n.to_userspace,
                    ms(n.total_ns),
                    us(mean(n.total_ns, n.count))
                );
            }
        }
        if !self.io.is_empty() {
            let _ = writeln!(
                o,
                "\nport I/O exits: handled in KVM or by Subzero\n{:<36} {:<6} {:>9} {:>9} {:>9} {:>9}",
                "port", "access", "count", "in KVM", "to user", "mean us"
            );
            for p in self.io.iter().take(TOP) {
                let label = format!(
                    "{:#x} {}",
                    p.port,
                    p.device.as_deref().unwrap_or("(unclaimed)")
                );
                let _ = writeln!(
                    o,
                    "{label:<36} {:<6} {:>9} {:>9} {:>9} {:>9.2}",
                    p.access,
                    p.count,
                    p.in_kvm,
                    p.to_userspace,
                    us(mean(p.total_ns, p.count))
                );
            }
            more(o, self.io.len());
        }
        if !self.rips.is_empty() {
            let _ = writeln!(o, "\ntop guest RIPs per hardware exit reason");
            for r in &self.rips {
                let _ = writeln!(
                    o,
                    "  {:<20} {:#018x} {:>8}  {}",
                    r.reason,
                    r.rip,
                    r.samples,
                    r.symbol.as_deref().unwrap_or("")
                );
            }
        }
    }

    /// Prometheus families: (name, help, rows of (labels, value)).
    pub fn prometheus(&self) -> Vec<Family> {
        let mut by_vcpu = Vec::new();
        for r in &self.reasons {
            for (i, n) in r.per_vcpu.iter().enumerate() {
                by_vcpu.push((
                    format!("reason=\"{}\",vcpu=\"{i}\"", r.reason),
                    n.to_string(),
                ));
            }
        }
        vec![
            (
                "subzero_hw_exits_total",
                "Hardware VM exits from KVM's tracepoints, by perf kvm stat's reason and vCPU.",
                by_vcpu,
            ),
            (
                "subzero_hw_exit_seconds_total",
                "Time from hardware exit to the next VM entry, by reason.",
                self.reasons
                    .iter()
                    .map(|r| (format!("reason=\"{}\"", r.reason), secs(r.total_ns)))
                    .collect(),
            ),
            (
                "subzero_hw_msr_exits_total",
                "MSR exits by MSR and direction.",
                self.msrs
                    .iter()
                    .map(|m| {
                        (
                            format!(
                                "msr=\"{:#x}\",name=\"{}\",access=\"{}\"",
                                m.index, m.name, m.access
                            ),
                            m.count.to_string(),
                        )
                    })
                    .collect(),
            ),
            (
                "subzero_hw_cpuid_exits_total",
                "CPUID exits by leaf.",
                self.cpuid
                    .iter()
                    .map(|c| (format!("leaf=\"{:#x}\"", c.leaf), c.count.to_string()))
                    .collect(),
            ),
            (
                "subzero_hw_npf_exits_total",
                "Nested page faults by guest-physical region.",
                self.npf
                    .iter()
                    .map(|n| (format!("region=\"{}\"", n.region), n.count.to_string()))
                    .collect(),
            ),
            (
                "subzero_hw_io_exits_total",
                "Port I/O exits by port, direction and where they were handled.",
                self.io
                    .iter()
                    .flat_map(|p| {
                        [("kvm", p.in_kvm), ("subzero", p.to_userspace)].map(|(h, n)| {
                            (
                                format!(
                                    "port=\"{:#x}\",access=\"{}\",handled=\"{h}\"",
                                    p.port, p.access
                                ),
                                n.to_string(),
                            )
                        })
                    })
                    .collect(),
            ),
            (
                "subzero_hw_trace_lost_total",
                "Tracepoint records the kernel dropped because a ring buffer was full.",
                vec![(String::new(), self.lost.to_string())],
            ),
        ]
    }
}

fn more(o: &mut String, n: usize) {
    if n > TOP {
        let _ = writeln!(o, "  ... {} more (see --stats-format json)", n - TOP);
    }
}

fn secs(ns: u64) -> String {
    format!("{}", ns as f64 / 1e9)
}
