//! Hardware exits, per vCPU, from KVM's tracepoints: each `kvm_exit` is
//! paired with the next `kvm_entry` (the time between is KVM's handling,
//! as `perf kvm stat` measures it), and the detail events in between say
//! which MSR, CPUID leaf, port or guest-physical address it was about, and
//! whether it went on to Subzero (`kvm_userspace_exit`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::clock::FnvBuild;
use super::histogram::Histogram;
use crate::trace::reasons::Isa;
use crate::trace::{Event, Stamped};

/// Distinct guest RIPs kept per exit reason; later new ones are counted in
/// [`ReasonAcc::rip_overflow`].
pub const RIPS_PER_REASON: usize = 256;

/// Distinct MSRs and CPUID leaves kept per vCPU. A guest can name 2^32 of
/// each; past this many, the rest are counted under [`OTHER`].
pub const MAX_KEYS: usize = 1024;
/// The MSR index and CPUID leaf that stand for "all the others".
pub const OTHER: u32 = u32::MAX;

/// The row for `key`, or the [`OTHER`] row once `map` is full.
fn bounded<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Acc, FnvBuild>,
    key: K,
    other: K,
) -> &mut Acc {
    if map.len() >= MAX_KEYS && !map.contains_key(&key) {
        map.entry(other).or_default()
    } else {
        map.entry(key).or_default()
    }
}

/// Named guest-physical ranges: RAM and each device's MMIO window.
#[derive(Clone, Debug, Default)]
pub struct Regions {
    /// (start, end exclusive, name), sorted by start, not overlapping.
    ranges: Vec<(u64, u64, String)>,
}

/// The region of an address outside every named range.
pub const UNMAPPED: &str = "unmapped";

impl Regions {
    /// Builds the map from (start, length, name) ranges.
    pub fn new(mut ranges: Vec<(u64, u64, String)>) -> Regions {
        ranges.retain(|(_, len, _)| *len > 0);
        let mut ranges: Vec<(u64, u64, String)> = ranges
            .into_iter()
            .map(|(s, len, n)| (s, s.saturating_add(len), n))
            .collect();
        ranges.sort_by_key(|r| r.0);
        Regions { ranges }
    }

    /// The index of the range holding `gpa`, if any.
    pub fn find(&self, gpa: u64) -> Option<usize> {
        let i = self.ranges.partition_point(|r| r.0 <= gpa);
        let i = i.checked_sub(1)?;
        (gpa < self.ranges[i].1).then_some(i)
    }

    /// The name of range `i`, or [`UNMAPPED`].
    pub fn name(&self, i: Option<usize>) -> &str {
        i.and_then(|i| self.ranges.get(i))
            .map(|r| r.2.as_str())
            .unwrap_or(UNMAPPED)
    }
}

/// Count and time of one breakdown row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Acc {
    /// Exits.
    pub count: u64,
    /// Of them, ones that went on to Subzero.
    pub to_user: u64,
    /// Their total time, exit to entry, ns (0 for exits seen without a
    /// kvm_exit/kvm_entry pair).
    pub ns: u64,
}

impl Acc {
    fn add(&mut self, ns: u64, to_user: bool) {
        self.count += 1;
        self.to_user += to_user as u64;
        self.ns += ns;
    }

    fn merge(&mut self, o: &Acc) {
        self.count += o.count;
        self.to_user += o.to_user;
        self.ns += o.ns;
    }
}

/// One exit reason.
#[derive(Clone, Debug, Default)]
pub struct ReasonAcc {
    /// Exit to entry, ns, for every paired exit.
    pub time: Histogram,
    /// Of those exits, ones that went on to Subzero.
    pub to_user: u64,
    /// For those: from the exit to KVM_RUN returning, ns.
    pub kvm_part: Histogram,
    /// For those: from KVM_RUN returning to the next entry (Subzero's
    /// handling and the way back into KVM_RUN), ns.
    pub user_part: Histogram,
    /// Guest RIPs at these exits.
    pub rips: HashMap<u64, u64, FnvBuild>,
    /// Exits at RIPs not kept (more than [`RIPS_PER_REASON`]).
    pub rip_overflow: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Detail {
    None,
    Msr(u32, bool),
    Cpuid(u32),
    Pio(u16, bool),
    Gpa(u64),
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    /// The exit's reason code; `None` for details KVM traced without a
    /// kvm_exit (a host whose KVM does not fire it).
    code: Option<u64>,
    rip: u64,
    time: u64,
    detail: Detail,
    user: Option<u64>,
}

/// One vCPU's hardware exits.
#[derive(Clone, Debug)]
pub struct HwVcpu {
    regions: Arc<Regions>,
    /// The ISA of the exits seen.
    pub isa: Option<Isa>,
    pending: Option<Pending>,
    /// By reason code (VMX: the basic reason, low 16 bits).
    pub reasons: BTreeMap<u64, ReasonAcc>,
    /// MSR exits by (index, write).
    pub msrs: HashMap<(u32, bool), Acc, FnvBuild>,
    /// CPUID exits by leaf.
    pub cpuid: HashMap<u32, Acc, FnvBuild>,
    /// Nested page faults by region index (`None`: unmapped).
    pub npf: HashMap<Option<usize>, Acc, FnvBuild>,
    /// Port accesses by (port, write).
    pub io: HashMap<(u16, bool), Acc, FnvBuild>,
    /// Records the kernel dropped (ring full).
    pub lost: u64,
    /// Exits whose entry was never seen (records lost, or the VM stopped).
    pub unpaired: u64,
    /// kvm_exit events seen at all (paired or not).
    pub exits_seen: u64,
}

impl HwVcpu {
    /// Accounting against the guest-physical map `regions`.
    pub fn new(regions: Arc<Regions>) -> HwVcpu {
        HwVcpu {
            regions,
            isa: None,
            pending: None,
            reasons: BTreeMap::new(),
            msrs: HashMap::default(),
            cpuid: HashMap::default(),
            npf: HashMap::default(),
            io: HashMap::default(),
            lost: 0,
            unpaired: 0,
            exits_seen: 0,
        }
    }

    /// The guest-physical map this vCPU classifies faults with.
    pub fn regions(&self) -> &Regions {
        &self.regions
    }

    /// Takes a batch of events, in order, after `lost` dropped records.
    pub fn record(&mut self, events: &[Stamped], lost: u64) {
        if lost > 0 {
            self.lost += lost;
            // What was dropped may have been this exit's entry.
            if let Some(p) = self.pending.take() {
                self.close(p, None);
            }
        }
        for e in events {
            self.event(e);
        }
    }

    fn event(&mut self, s: &Stamped) {
        match s.event {
            Event::Exit { reason, isa, rip } => {
                if let Some(p) = self.pending.take() {
                    self.close(p, None);
                }
                let isa = Isa::from_field(isa);
                self.isa = self.isa.or(isa);
                let code = match isa {
                    Some(Isa::Vmx) => reason & 0xffff,
                    _ => reason,
                };
                self.exits_seen += 1;
                self.pending = Some(Pending {
                    code: Some(code),
                    rip,
                    time: s.time,
                    detail: Detail::None,
                    user: None,
                });
            }
            Event::Entry => {
                if let Some(p) = self.pending.take() {
                    self.close(p, Some(s.time));
                }
            }
            Event::UserspaceExit { .. } => {
                if let Some(p) = self.pending.as_mut() {
                    p.user.get_or_insert(s.time);
                }
                // Without kvm_exit there is no entry to wait for.
                if matches!(self.pending, Some(Pending { code: None, .. })) {
                    let p = self.pending.take().expect("just matched");
                    self.close(p, None);
                }
            }
            Event::Msr { index, write } => self.detail(s.time, Detail::Msr(index, write)),
            Event::Cpuid { leaf } => self.detail(s.time, Detail::Cpuid(leaf)),
            Event::Pio { port, write } => self.detail(s.time, Detail::Pio(port, write)),
            Event::PageFault { gpa } => self.detail(s.time, Detail::Gpa(gpa)),
        }
    }

    fn detail(&mut self, time: u64, d: Detail) {
        if let Some(p) = self.pending.as_mut().filter(|p| p.code.is_some()) {
            // The first detail of an exit is the one it was about.
            if p.detail == Detail::None {
                p.detail = d;
            }
            return;
        }
        if let Some(p) = self.pending.take() {
            self.close(p, None);
        }
        self.pending = Some(Pending {
            code: None,
            rip: 0,
            time,
            detail: d,
            user: None,
        });
    }

    /// Accounts an exit; `entry` is when KVM entered the guest again
    /// (`None`: never seen, so no time).
    fn close(&mut self, p: Pending, entry: Option<u64>) {
        let ns = entry.map(|t| t.saturating_sub(p.time)).unwrap_or(0);
        let to_user = p.user.is_some();
        if let Some(code) = p.code {
            let Some(entry) = entry else {
                self.unpaired += 1;
                return;
            };
            let r = self.reasons.entry(code).or_default();
            r.time.record(ns);
            if let Some(user) = p.user {
                r.to_user += 1;
                r.kvm_part.record(user.saturating_sub(p.time));
                r.user_part.record(entry.saturating_sub(user));
            }
            if let Some(n) = r.rips.get_mut(&p.rip) {
                *n += 1;
            } else if r.rips.len() < RIPS_PER_REASON {
                r.rips.insert(p.rip, 1);
            } else {
                r.rip_overflow += 1;
            }
        }
        match p.detail {
            Detail::None => {}
            Detail::Msr(i, w) => bounded(&mut self.msrs, (i, w), (OTHER, w)).add(ns, to_user),
            Detail::Cpuid(l) => bounded(&mut self.cpuid, l, OTHER).add(ns, to_user),
            Detail::Pio(port, w) => self.io.entry((port, w)).or_default().add(ns, to_user),
            Detail::Gpa(gpa) => {
                let region = self.regions.find(gpa);
                self.npf.entry(region).or_default().add(ns, to_user)
            }
        }
    }

    /// Accounts an exit still waiting for its entry as unpaired (call once
    /// the vCPU has stopped).
    pub fn flush(&mut self) {
        if let Some(p) = self.pending.take() {
            self.close(p, None);
        }
    }

    /// Paired exits.
    pub fn total(&self) -> u64 {
        self.reasons.values().map(|r| r.time.count()).sum()
    }

    /// Adds another vCPU's accounting to this one.
    pub fn merge(&mut self, o: &HwVcpu) {
        self.isa = self.isa.or(o.isa);
        for (code, r) in &o.reasons {
            let a = self.reasons.entry(*code).or_default();
            a.time.merge(&r.time);
            a.to_user += r.to_user;
            a.kvm_part.merge(&r.kvm_part);
            a.user_part.merge(&r.user_part);
            for (rip, n) in &r.rips {
                if let Some(m) = a.rips.get_mut(rip) {
                    *m += n;
                } else if a.rips.len() < RIPS_PER_REASON {
                    a.rips.insert(*rip, *n);
                } else {
                    a.rip_overflow += n;
                }
            }
            a.rip_overflow += r.rip_overflow;
        }
        for (k, v) in &o.msrs {
            self.msrs.entry(*k).or_default().merge(v);
        }
        for (k, v) in &o.cpuid {
            self.cpuid.entry(*k).or_default().merge(v);
        }
        for (k, v) in &o.npf {
            self.npf.entry(*k).or_default().merge(v);
        }
        for (k, v) in &o.io {
            self.io.entry(*k).or_default().merge(v);
        }
        self.lost += o.lost;
        self.unpaired += o.unpaired;
        self.exits_seen += o.exits_seen;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(time: u64, event: Event) -> Stamped {
        Stamped { time, event }
    }

    fn regions() -> Arc<Regions> {
        Arc::new(Regions::new(vec![
            (0, 0x1000_0000, "ram".into()),
            (0xd000_0000, 0x1000, "virtio-blk0".into()),
        ]))
    }

    const SVM_MSR: u64 = 0x7c;
    const SVM_IO: u64 = 0x7b;
    const SVM_NPF: u64 = 0x400;

    fn exit(reason: u64, rip: u64) -> Event {
        Event::Exit {
            reason,
            isa: 2,
            rip,
        }
    }

    #[test]
    fn pairs_exits_with_entries_and_times_them() {
        let mut v = HwVcpu::new(regions());
        v.record(
            &[
                at(100, exit(SVM_MSR, 0x10)),
                at(
                    110,
                    Event::Msr {
                        index: 0x6e0,
                        write: true,
                    },
                ),
                at(150, Event::Entry),
                at(200, exit(SVM_MSR, 0x10)),
                at(
                    205,
                    Event::Msr {
                        index: 0x6e0,
                        write: true,
                    },
                ),
                at(230, Event::Entry),
            ],
            0,
        );
        assert_eq!(v.isa, Some(Isa::Svm));
        let msr = &v.reasons[&SVM_MSR];
        assert_eq!(msr.time.count(), 2);
        assert_eq!(msr.time.sum(), 50 + 30);
        assert_eq!(msr.rips[&0x10], 2);
        assert_eq!(
            v.msrs[&(0x6e0, true)],
            Acc {
                count: 2,
                to_user: 0,
                ns: 80
            }
        );
        assert_eq!(v.total(), 2);
    }

    #[test]
    fn an_exit_to_userspace_is_split_into_kvm_and_subzero_halves() {
        let mut v = HwVcpu::new(regions());
        v.record(
            &[
                at(1000, exit(SVM_IO, 0x20)),
                at(
                    1010,
                    Event::Pio {
                        port: 0x3f8,
                        write: true,
                    },
                ),
                at(1040, Event::UserspaceExit { reason: 2 }),
                at(1500, Event::Entry),
                at(2000, exit(SVM_IO, 0x24)),
                at(
                    2010,
                    Event::Pio {
                        port: 0x40,
                        write: true,
                    },
                ),
                at(2020, Event::Entry),
            ],
            0,
        );
        let io = &v.reasons[&SVM_IO];
        assert_eq!((io.time.count(), io.to_user), (2, 1));
        assert_eq!(io.kvm_part.sum(), 40);
        assert_eq!(io.user_part.sum(), 460);
        assert_eq!(v.io[&(0x3f8, true)].to_user, 1);
        assert_eq!(v.io[&(0x40, true)].to_user, 0);
        assert_eq!(v.io[&(0x40, true)].ns, 20);
    }

    #[test]
    fn nested_page_faults_are_classified_by_region() {
        let mut v = HwVcpu::new(regions());
        for (t, gpa) in [(0, 0x1000), (10, 0xd000_0004), (20, 0xfee0_0000)] {
            v.record(
                &[
                    at(t, exit(SVM_NPF, 0)),
                    at(t + 1, Event::PageFault { gpa }),
                    at(t + 5, Event::Entry),
                ],
                0,
            );
        }
        let r = v.regions().clone();
        let by_name: BTreeMap<&str, u64> =
            v.npf.iter().map(|(k, a)| (r.name(*k), a.count)).collect();
        assert_eq!(
            by_name,
            BTreeMap::from([("ram", 1), ("unmapped", 1), ("virtio-blk0", 1)])
        );
    }

    #[test]
    fn vmx_reasons_drop_their_flag_bits() {
        let mut v = HwVcpu::new(regions());
        v.record(
            &[
                at(
                    0,
                    Event::Exit {
                        reason: 0x8000_0021,
                        isa: 1,
                        rip: 0,
                    },
                ),
                at(5, Event::Entry),
            ],
            0,
        );
        assert_eq!(v.isa, Some(Isa::Vmx));
        assert!(v.reasons.contains_key(&0x21));
    }

    #[test]
    fn lost_records_and_missing_entries_leave_exits_unpaired_not_miscounted() {
        let mut v = HwVcpu::new(regions());
        v.record(&[at(0, exit(SVM_MSR, 0))], 0);
        // The entry was among the lost; the next exit starts clean.
        v.record(&[at(50, exit(SVM_MSR, 0)), at(60, Event::Entry)], 3);
        // An exit followed by another exit: the first had no entry.
        v.record(&[at(70, exit(SVM_IO, 0)), at(80, exit(SVM_IO, 0))], 0);
        v.flush();
        assert_eq!(v.lost, 3);
        assert_eq!(v.unpaired, 3);
        assert_eq!(v.total(), 1);
        assert_eq!(v.reasons[&SVM_MSR].time.sum(), 10);
        assert_eq!(v.exits_seen, 4);
    }

    #[test]
    fn details_without_kvm_exit_still_count_by_port() {
        // A host whose KVM fires kvm_pio and kvm_userspace_exit but never
        // kvm_exit (as this project's paravirtual development host does).
        let mut v = HwVcpu::new(regions());
        let mut evs = Vec::new();
        for i in 0..5 {
            evs.push(at(
                i * 10,
                Event::Pio {
                    port: 0x3f8,
                    write: true,
                },
            ));
            evs.push(at(i * 10 + 1, Event::UserspaceExit { reason: 2 }));
        }
        evs.push(at(
            100,
            Event::Pio {
                port: 0x61,
                write: false,
            },
        ));
        v.record(&evs, 0);
        v.flush();
        assert_eq!(v.io[&(0x3f8, true)].count, 5);
        assert_eq!(v.io[&(0x3f8, true)].to_user, 5);
        assert_eq!(v.io[&(0x61, false)].to_user, 0);
        assert!(v.reasons.is_empty());
        assert_eq!(v.unpaired, 0);
    }

    #[test]
    fn a_guest_naming_endless_msrs_and_leaves_cannot_grow_the_maps() {
        let mut v = HwVcpu::new(regions());
        let n = MAX_KEYS as u32 * 5;
        for i in 0..n {
            v.record(
                &[
                    at(
                        0,
                        Event::Msr {
                            index: i,
                            write: false,
                        },
                    ),
                    at(1, Event::Cpuid { leaf: i }),
                ],
                0,
            );
        }
        v.flush();
        assert!(v.msrs.len() <= MAX_KEYS + 1, "{}", v.msrs.len());
        assert!(v.cpuid.len() <= MAX_KEYS + 1, "{}", v.cpuid.len());
        assert_eq!(v.msrs.values().map(|a| a.count).sum::<u64>(), n as u64);
        assert_eq!(v.cpuid.values().map(|a| a.count).sum::<u64>(), n as u64);
        assert_eq!(v.cpuid[&OTHER].count, n as u64 - MAX_KEYS as u64);
    }

    #[test]
    fn rips_are_bounded_per_reason() {
        let mut v = HwVcpu::new(regions());
        for i in 0..(RIPS_PER_REASON as u64 + 10) {
            v.record(
                &[at(i * 2, exit(SVM_MSR, i)), at(i * 2 + 1, Event::Entry)],
                0,
            );
        }
        let r = &v.reasons[&SVM_MSR];
        assert_eq!(r.rips.len(), RIPS_PER_REASON);
        assert_eq!(r.rip_overflow, 10);
    }

    #[test]
    fn merge_adds_vcpus() {
        let mut a = HwVcpu::new(regions());
        let mut b = HwVcpu::new(regions());
        a.record(&[at(0, exit(SVM_MSR, 1)), at(4, Event::Entry)], 0);
        b.record(&[at(0, exit(SVM_MSR, 1)), at(6, Event::Entry)], 1);
        a.merge(&b);
        assert_eq!(a.reasons[&SVM_MSR].time.count(), 2);
        assert_eq!(a.reasons[&SVM_MSR].time.sum(), 10);
        assert_eq!(a.reasons[&SVM_MSR].rips[&1], 2);
        assert_eq!(a.lost, 1);
    }
}
