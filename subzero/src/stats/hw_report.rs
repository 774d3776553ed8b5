//! The hardware half of the stats report: KVM's exits by reason (named as
//! `perf kvm stat` names them), per vCPU, with MSR, CPUID, nested page
//! fault and port breakdowns, joined to Subzero's own userspace exits.

use serde::{Deserialize, Serialize};

use super::hardware::{HwVcpu, OTHER};
use super::report::ReasonRow;
use super::symbols::Symbols;
use crate::bus::Buses;
use crate::trace::msrs::{cpuid_leaf_name, msr_label};
use crate::trace::reasons::{class, reason_name, Class, Isa};

/// RIPs kept per reason in the report.
const RIPS: usize = 5;

/// One hardware exit reason.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HwReasonRow {
    /// perf kvm stat's name, e.g. "npf", "msr", "EPT_VIOLATION".
    pub reason: String,
    /// The ISA's code (VMX: basic reason).
    pub code: u64,
    /// Exits (exit and entry both seen).
    pub count: u64,
    /// Share of all hardware exits, 0..1.
    pub share: f64,
    /// Total time from exit to the next entry, ns.
    pub total_ns: u64,
    /// Mean of that, ns.
    pub mean_ns: f64,
    /// Median, ns.
    pub p50_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// Longest, ns.
    pub max_ns: u64,
    /// Exits that went on to Subzero (KVM_RUN returned).
    pub to_userspace: u64,
    /// For those: mean from the exit to KVM_RUN returning, ns.
    pub kvm_part_mean_ns: Option<f64>,
    /// For those: mean from KVM_RUN returning to the next entry, ns.
    pub userspace_part_mean_ns: Option<f64>,
    /// Exits per vCPU, by index.
    pub per_vcpu: Vec<u64>,
}

/// MSR exits of one MSR and direction.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MsrRow {
    /// MSR index.
    pub index: u32,
    /// Its name, or its range, or hex.
    pub name: String,
    /// "read" or "write".
    pub access: String,
    /// Exits.
    pub count: u64,
    /// Total time, ns.
    pub total_ns: u64,
}

/// CPUID exits of one leaf.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CpuidRow {
    /// EAX.
    pub leaf: u32,
    /// What the leaf reports, when known.
    pub name: Option<String>,
    /// Exits.
    pub count: u64,
    /// Total time, ns.
    pub total_ns: u64,
}

/// Nested page faults (EPT violations) in one guest-physical region.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NpfRow {
    /// "ram", a device's name (its MMIO window), or "unmapped".
    pub region: String,
    /// Exits.
    pub count: u64,
    /// Of them, ones that came to Subzero as MMIO exits.
    pub to_userspace: u64,
    /// Total time, ns.
    pub total_ns: u64,
}

/// Port I/O exits on one port and direction.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IoRow {
    /// The port.
    pub port: u16,
    /// The device: Subzero's, or KVM's own ("pit (in KVM)"), or null.
    pub device: Option<String>,
    /// "read" or "write".
    pub access: String,
    /// Exits.
    pub count: u64,
    /// Handled inside KVM.
    pub in_kvm: u64,
    /// Came to Subzero.
    pub to_userspace: u64,
    /// Total time, ns.
    pub total_ns: u64,
}

/// Hardware exits that came to Subzero: one hardware exit plus Subzero's
/// handling each.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JoinRow {
    /// The hardware reason.
    pub reason: String,
    /// Exits of it that came to Subzero.
    pub to_userspace: u64,
    /// Mean KVM part: exit to KVM_RUN returning, ns.
    pub kvm_mean_ns: f64,
    /// Mean of the rest: KVM_RUN returning to the next entry, ns.
    pub userspace_mean_ns: f64,
    /// The userspace exit kinds these became (e.g. io-in, io-out).
    pub userspace_kinds: Vec<String>,
    /// Their count in Subzero's own table.
    pub userspace_count: u64,
    /// Subzero's own mean handling time for them (its clock), ns.
    pub subzero_mean_ns: Option<f64>,
}

/// A guest RIP sampled at one hardware reason.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HwRipRow {
    /// The reason.
    pub reason: String,
    /// Guest RIP.
    pub rip: u64,
    /// "function+0xoffset", when symbols were given.
    pub symbol: Option<String>,
    /// Exits at this RIP.
    pub samples: u64,
}

/// Whether and how hardware exits were traced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HwStatus {
    /// The tracepoints were read.
    Traced,
    /// They could not be (the note says why).
    Unavailable,
    /// `--no-trace`.
    Off,
}

/// The whole hardware section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HardwareReport {
    /// "traced", "unavailable" or "off".
    pub status: String,
    /// What is missing and how to enable it, or what else to know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// "svm" or "vmx", once an exit was seen.
    pub isa: Option<String>,
    /// Paired hardware exits.
    pub total_exits: u64,
    /// Records the kernel dropped because a ring was full.
    pub lost: u64,
    /// Exits whose entry was not seen (lost, or the VM stopped).
    pub unpaired: u64,
    /// By reason, most frequent first.
    pub reasons: Vec<HwReasonRow>,
    /// Userspace exits, both halves.
    pub joined: Vec<JoinRow>,
    /// MSR exits, most frequent first.
    pub msrs: Vec<MsrRow>,
    /// CPUID exits by leaf.
    pub cpuid: Vec<CpuidRow>,
    /// Nested page faults by region.
    pub npf: Vec<NpfRow>,
    /// Port I/O by port.
    pub io: Vec<IoRow>,
    /// Top RIPs per reason.
    pub rips: Vec<HwRipRow>,
}

impl HardwareReport {
    /// A report that says there is nothing, and why.
    pub fn without(status: HwStatus, note: impl Into<String>) -> HardwareReport {
        HardwareReport {
            status: status_name(status).into(),
            note: Some(note.into()),
            isa: None,
            total_exits: 0,
            lost: 0,
            unpaired: 0,
            reasons: Vec::new(),
            joined: Vec::new(),
            msrs: Vec::new(),
            cpuid: Vec::new(),
            npf: Vec::new(),
            io: Vec::new(),
            rips: Vec::new(),
        }
    }

    /// Builds the section from each vCPU's accounting. `userspace` is the
    /// report's own exit table (for the join), `slide` the KASLR shift.
    pub fn build(
        per_vcpu: &[HwVcpu],
        note: Option<String>,
        buses: &Buses,
        userspace: &[ReasonRow],
        symbols: Option<(&Symbols, u64)>,
    ) -> HardwareReport {
        let Some(first) = per_vcpu.first() else {
            return HardwareReport::without(HwStatus::Traced, "no vCPU was traced");
        };
        let mut all = HwVcpu::new(std::sync::Arc::new(first.regions().clone()));
        per_vcpu.iter().for_each(|v| all.merge(v));
        let isa = all.isa.unwrap_or(Isa::Svm);
        let total = all.total();
        let name = |code: u64| reason_name(isa, code).into_owned();
        let mut reasons: Vec<HwReasonRow> = all
            .reasons
            .iter()
            .map(|(&code, r)| {
                let h = &r.time;
                let split = r.to_user > 0;
                HwReasonRow {
                    reason: name(code),
                    code,
                    count: h.count(),
                    share: h.count() as f64 / total.max(1) as f64,
                    total_ns: h.sum(),
                    mean_ns: h.mean(),
                    p50_ns: h.quantile(0.5),
                    p99_ns: h.quantile(0.99),
                    max_ns: h.max(),
                    to_userspace: r.to_user,
                    kvm_part_mean_ns: split.then(|| r.kvm_part.mean()),
                    userspace_part_mean_ns: split.then(|| r.user_part.mean()),
                    per_vcpu: per_vcpu
                        .iter()
                        .map(|v| v.reasons.get(&code).map_or(0, |r| r.time.count()))
                        .collect(),
                }
            })
            .collect();
        reasons.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
        let joined = all
            .reasons
            .iter()
            .filter(|(_, r)| r.to_user > 0)
            .map(|(&code, r)| join_row(name(code), class(isa, code), r, userspace))
            .collect();
        let mut msrs: Vec<MsrRow> = all
            .msrs
            .iter()
            .map(|(&(index, write), a)| MsrRow {
                index,
                name: if index == OTHER {
                    "(all other MSRs)".into()
                } else {
                    msr_label(index)
                },
                access: access(write),
                count: a.count,
                total_ns: a.ns,
            })
            .collect();
        msrs.sort_by(|a, b| (b.count, a.index, &a.access).cmp(&(a.count, b.index, &b.access)));
        let mut cpuid: Vec<CpuidRow> = all
            .cpuid
            .iter()
            .map(|(&leaf, a)| CpuidRow {
                leaf,
                name: if leaf == OTHER {
                    Some("(all other leaves)".into())
                } else {
                    cpuid_leaf_name(leaf).map(str::to_string)
                },
                count: a.count,
                total_ns: a.ns,
            })
            .collect();
        cpuid.sort_by(|a, b| (b.count, a.leaf).cmp(&(a.count, b.leaf)));
        let mut npf: Vec<NpfRow> = all
            .npf
            .iter()
            .map(|(region, a)| NpfRow {
                region: all.regions().name(*region).to_string(),
                count: a.count,
                to_userspace: a.to_user,
                total_ns: a.ns,
            })
            .collect();
        npf.sort_by(|a, b| (b.count, &a.region).cmp(&(a.count, &b.region)));
        let mut io: Vec<IoRow> = all
            .io
            .iter()
            .map(|(&(port, write), a)| IoRow {
                port,
                device: port_device(port, a.to_user > 0, buses),
                access: access(write),
                count: a.count,
                in_kvm: a.count - a.to_user,
                to_userspace: a.to_user,
                total_ns: a.ns,
            })
            .collect();
        io.sort_by(|a, b| (b.count, a.port, &a.access).cmp(&(a.count, b.port, &b.access)));
        let mut rips = Vec::new();
        for row in &reasons {
            let mut top: Vec<(u64, u64)> = all.reasons[&row.code]
                .rips
                .iter()
                .map(|(r, n)| (*r, *n))
                .collect();
            top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            rips.extend(top.into_iter().take(RIPS).map(|(rip, samples)| HwRipRow {
                reason: row.reason.clone(),
                rip,
                symbol: symbols.and_then(|(s, slide)| s.name(rip, slide)),
                samples,
            }));
        }
        let mut note = note;
        if all.exits_seen == 0 && !all.io.is_empty() {
            note.get_or_insert_with(|| {
                "KVM on this host fired its detail tracepoints but never kvm:kvm_exit \
                 (a paravirtualized or nested KVM?): only the breakdowns are filled"
                    .into()
            });
        }
        HardwareReport {
            status: status_name(HwStatus::Traced).into(),
            note,
            isa: all.isa.map(|i| i.name().to_string()),
            total_exits: total,
            lost: all.lost,
            unpaired: all.unpaired,
            reasons,
            joined,
            msrs,
            cpuid,
            npf,
            io,
            rips,
        }
    }
}

fn status_name(s: HwStatus) -> &'static str {
    match s {
        HwStatus::Traced => "traced",
        HwStatus::Unavailable => "unavailable",
        HwStatus::Off => "off",
    }
}

fn access(write: bool) -> String {
    if write { "write" } else { "read" }.into()
}

/// The userspace exit kinds a hardware exit of class `c` becomes.
fn userspace_kinds(c: Class, reason: &str) -> &'static [&'static str] {
    match c {
        Class::Io => &["io-in", "io-out"],
        Class::Npf => &["mmio-read", "mmio-write"],
        _ if reason.eq_ignore_ascii_case("hlt") => &["hlt"],
        _ => &[],
    }
}

fn join_row(
    reason: String,
    c: Class,
    r: &super::hardware::ReasonAcc,
    userspace: &[ReasonRow],
) -> JoinRow {
    let kinds = userspace_kinds(c, &reason);
    let rows: Vec<&ReasonRow> = userspace
        .iter()
        .filter(|u| kinds.contains(&u.reason.as_str()))
        .collect();
    let count: u64 = rows.iter().map(|u| u.count).sum();
    let total: u64 = rows.iter().map(|u| u.total_ns).sum();
    JoinRow {
        reason,
        to_userspace: r.to_user,
        kvm_mean_ns: r.kvm_part.mean(),
        userspace_mean_ns: r.user_part.mean(),
        userspace_kinds: kinds.iter().map(|k| k.to_string()).collect(),
        userspace_count: count,
        subzero_mean_ns: (count > 0).then(|| total as f64 / count as f64),
    }
}

/// The devices KVM emulates itself on ports (with an in-kernel irqchip
/// and PIT).
fn kvm_port_device(port: u16) -> Option<&'static str> {
    Some(match port {
        0x20 | 0x21 | 0xa0 | 0xa1 => "pic (in KVM)",
        0x40..=0x43 => "pit (in KVM)",
        0x61 => "pit speaker port (in KVM)",
        0x4d0 | 0x4d1 => "elcr (in KVM)",
        _ => return None,
    })
}

fn port_device(port: u16, to_user: bool, buses: &Buses) -> Option<String> {
    let ours = buses.pio.resolve(port as u64).map(|r| r.name.to_string());
    if to_user {
        return ours;
    }
    kvm_port_device(port).map(str::to_string).or(ours)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::devices::probe::Probe;
    use crate::stats::hardware::Regions;
    use crate::trace::{Event, Stamped};

    fn at(time: u64, event: Event) -> Stamped {
        Stamped { time, event }
    }

    fn exit(reason: u64) -> Event {
        Event::Exit {
            reason,
            isa: 2,
            rip: 0xffff_ffff_8100_0000,
        }
    }

    fn userspace(reason: &str, count: u64, total_ns: u64) -> ReasonRow {
        ReasonRow {
            reason: reason.into(),
            count,
            share: 0.0,
            total_ns,
            mean_ns: total_ns as f64 / count as f64,
            p50_ns: 0,
            p99_ns: 0,
            max_ns: 0,
        }
    }

    /// Two vCPUs: vCPU 0 writes the serial port twice (to Subzero) and the
    /// PIT once (in KVM); vCPU 1 takes three MSR exits.
    fn report() -> HardwareReport {
        let regions = Arc::new(Regions::new(vec![(0, 1 << 20, "ram".into())]));
        let mut v0 = HwVcpu::new(regions.clone());
        let mut evs = Vec::new();
        for i in 0..2 {
            let t = i * 1000;
            evs.push(at(t, exit(0x7b)));
            evs.push(at(
                t + 10,
                Event::Pio {
                    port: 0x3fd,
                    write: true,
                },
            ));
            evs.push(at(t + 100, Event::UserspaceExit { reason: 2 }));
            evs.push(at(t + 400, Event::Entry));
        }
        evs.push(at(5000, exit(0x7b)));
        evs.push(at(
            5010,
            Event::Pio {
                port: 0x43,
                write: true,
            },
        ));
        evs.push(at(5050, Event::Entry));
        v0.record(&evs, 0);
        let mut v1 = HwVcpu::new(regions);
        for i in 0..3 {
            let t = i * 100;
            v1.record(
                &[
                    at(t, exit(0x7c)),
                    at(
                        t + 1,
                        Event::Msr {
                            index: 0x6e0,
                            write: true,
                        },
                    ),
                    at(t + 20, Event::Entry),
                ],
                0,
            );
        }
        let mut buses = crate::bus::Buses::default();
        let probe = Arc::new(Mutex::new(Probe::new(0)));
        buses.pio.insert("serial", 0x3f8, 8, probe).unwrap();
        let own = [userspace("io-out", 2, 500), userspace("hlt", 9, 90)];
        HardwareReport::build(&[v0, v1], None, &buses, &own, None)
    }

    #[test]
    fn reasons_are_named_as_perf_names_them_and_counted_per_vcpu() {
        let r = report();
        assert_eq!(r.status, "traced");
        assert_eq!(r.isa.as_deref(), Some("svm"));
        assert_eq!(r.total_exits, 6);
        let names: Vec<(&str, u64, &[u64])> = r
            .reasons
            .iter()
            .map(|x| (x.reason.as_str(), x.count, x.per_vcpu.as_slice()))
            .collect();
        assert_eq!(names, vec![("io", 3, &[3, 0][..]), ("msr", 3, &[0, 3][..])]);
        let io = &r.reasons[0];
        assert_eq!(io.total_ns, 400 + 400 + 50);
        assert_eq!(io.to_userspace, 2);
        assert_eq!(io.kvm_part_mean_ns, Some(100.0));
        assert_eq!(io.userspace_part_mean_ns, Some(300.0));
        assert_eq!(r.reasons[1].to_userspace, 0);
        assert_eq!(r.reasons[1].kvm_part_mean_ns, None);
    }

    #[test]
    fn userspace_exits_are_joined_to_their_hardware_half() {
        let r = report();
        assert_eq!(r.joined.len(), 1, "{:?}", r.joined);
        let j = &r.joined[0];
        assert_eq!(j.reason, "io");
        assert_eq!(j.to_userspace, 2);
        assert_eq!(j.userspace_kinds, vec!["io-in", "io-out"]);
        assert_eq!(j.userspace_count, 2);
        assert_eq!(j.subzero_mean_ns, Some(250.0));
        assert_eq!((j.kvm_mean_ns, j.userspace_mean_ns), (100.0, 300.0));
    }

    #[test]
    fn ports_are_named_by_who_handled_them() {
        let r = report();
        let serial = r.io.iter().find(|p| p.port == 0x3fd).unwrap();
        assert_eq!(serial.device.as_deref(), Some("serial"));
        assert_eq!((serial.in_kvm, serial.to_userspace), (0, 2));
        let pit = r.io.iter().find(|p| p.port == 0x43).unwrap();
        assert_eq!(pit.device.as_deref(), Some("pit (in KVM)"));
        assert_eq!((pit.in_kvm, pit.to_userspace), (1, 0));
        let msr = &r.msrs[0];
        assert_eq!(
            (msr.index, msr.access.as_str(), msr.count),
            (0x6e0, "write", 3)
        );
        assert_eq!(msr.name, "IA32_TSC_DEADLINE");
        assert_eq!(r.rips[0].rip, 0xffff_ffff_8100_0000);
    }

    #[test]
    fn the_table_and_prometheus_carry_the_same_counts() {
        let r = report();
        let mut t = String::new();
        r.to_table(&mut t);
        assert!(
            t.contains("hardware exits (KVM's tracepoints, svm): 6 exits"),
            "{t}"
        );
        assert!(t.contains("IA32_TSC_DEADLINE (0x6e0)"), "{t}");
        assert!(t.contains("pit (in KVM)"), "{t}");
        assert!(t.contains("exits that came to Subzero"), "{t}");
        let fams = r.prometheus();
        let exits = &fams
            .iter()
            .find(|f| f.0 == "subzero_hw_exits_total")
            .unwrap()
            .2;
        assert!(
            exits.contains(&("reason=\"msr\",vcpu=\"1\"".into(), "3".into())),
            "{exits:?}"
        );
        let unavailable = HardwareReport::without(HwStatus::Unavailable, "no tracefs");
        let mut t = String::new();
        unavailable.to_table(&mut t);
        assert_eq!(t.trim(), "hardware exit reasons: unavailable (no tracefs)");
    }
}
