//! Guest CPUID: KVM's supported set, adjusted per vCPU. The topology is one
//! package of `num_vcpus` single-threaded cores, APIC id = vCPU index; every
//! topology leaf (1, 4, 0xB/0x1F, AMD 0x8000_0001/08/1D/1E) says so, whichever
//! one Linux prefers. Other leaves, KVM's 0x4000_0000.. included, pass through.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use kvm_ioctls::VcpuFd;

/// Where a vCPU sits: one package of `num_vcpus` single-threaded cores.
#[derive(Debug, Clone, Copy)]
pub struct VcpuTopology {
    /// This vCPU's index; also its initial (x2)APIC id.
    pub vcpu_index: u8,
    /// Number of vCPUs in the VM (0 is treated as 1).
    pub num_vcpus: u8,
}

/// Errors from [`setup_cpuid`].
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// `KVM_SET_CPUID2` failed.
    #[error("KVM_SET_CPUID2 failed: {0}")]
    SetCpuid2(kvm_ioctls::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vendor {
    Intel,
    /// AMD, and Hygon, which shares AMD's topology leaves.
    Amd,
    Other,
}

// Leaf 1: ECX[31] hypervisor present; EDX[28] (bit number) HTT.
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 28;
// Leaf 6: Intel Turbo Boost (EAX[1]) and the energy/performance bias MSR
// (ECX[3]). KVM emulates neither; recent KVMs report only ARAT here, but older
// ones and other hosts may not, so they are cleared as Firecracker does.
const EAX_TURBO_BOOST: u32 = 1 << 1;
const ECX_ENERGY_PERF_BIAS: u32 = 1 << 3;
// Leaf 0xB/0x1F level types (ECX[15:8]).
const LEVEL_INVALID: u32 = 0;
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;
// Leaf 0x8000_0001 ECX[1] (bit number): CmpLegacy, HTT counts cores.
const ECX_CMP_LEGACY: u32 = 1;

/// Returns `reg` with bits `hi..=lo` replaced by `val` (truncated to fit).
fn with_field(reg: u32, hi: u32, lo: u32, val: u32) -> u32 {
    let mask = (u32::MAX >> (31 - hi)) & !((1u32 << lo) - 1);
    (reg & !mask) | ((val << lo) & mask)
}

/// Bits needed to number `n` items: ceil(log2(n)).
fn order(n: u32) -> u32 {
    n.max(1).next_power_of_two().trailing_zeros()
}

fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    let Some(leaf0) = entries.iter().find(|e| e.function == 0) else {
        return Vendor::Other;
    };
    let mut sig = [0u8; 12];
    for (chunk, reg) in sig.chunks_mut(4).zip([leaf0.ebx, leaf0.edx, leaf0.ecx]) {
        chunk.copy_from_slice(&reg.to_le_bytes());
    }
    match &sig {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Leaf 0xB/0x1F subleaf: 0 = SMT (1 thread per core), 1 = core (`n` cores
/// per package), others terminate the enumeration.
fn set_ext_topology(e: &mut kvm_cpuid_entry2, apic_id: u32, n: u32) {
    let (shift, count, level) = match e.index {
        0 => (0, 1, LEVEL_SMT),
        1 => (order(n), n, LEVEL_CORE),
        _ => (0, 0, LEVEL_INVALID),
    };
    e.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
    (e.eax, e.ebx, e.edx) = (shift, count, apic_id);
    e.ecx = (level << 8) | (e.index & 0xff);
}

/// Leaf 4 (Intel) / 0x8000_001D (AMD) cache subleaf: L1 and L2 belong to one
/// core, L3 and beyond are shared by the package.
fn set_cache_sharing(e: &mut kvm_cpuid_entry2, n: u32, intel: bool) {
    if e.eax & 0x1f == 0 {
        return; // Null cache type: end of the list.
    }
    let level = (e.eax >> 5) & 0x7;
    let sharing = if level >= 3 { n - 1 } else { 0 };
    e.eax = with_field(e.eax, 25, 14, sharing);
    if intel {
        // Cores per package - 1; six bits wide.
        e.eax = with_field(e.eax, 31, 26, (n - 1).min(0x3f));
    }
}

/// Makes sure a present leaf 0xB/0x1F has subleaves 0, 1 and 2 (KVM may report
/// only subleaf 0). If the table is full, the leaf is marked empty instead so
/// the guest falls back to the legacy leaves, which agree with each other.
fn complete_ext_topology(cpuid: &mut CpuId, leaf: u32, apic_id: u32, n: u32) {
    let has = |c: &CpuId, i: Option<u32>| {
        let mut entries = c.as_slice().iter();
        entries.any(|e| e.function == leaf && i.is_none_or(|i| e.index == i))
    };
    if !has(cpuid, None) {
        return;
    }
    let missing: Vec<u32> = (0..3).filter(|&i| !has(cpuid, Some(i))).collect();
    for index in missing {
        let mut e = kvm_cpuid_entry2::default();
        (e.function, e.index) = (leaf, index);
        set_ext_topology(&mut e, apic_id, n);
        if cpuid.push(e).is_err() {
            let entries = cpuid.as_mut_slice().iter_mut();
            for e in entries.filter(|e| e.function == leaf) {
                (e.eax, e.ebx, e.ecx) = (0, 0, e.index & 0xff);
            }
            return;
        }
    }
}

/// Adjusts KVM's supported CPUID for one vCPU (pure; see the module docs).
pub fn filter_cpuid(cpuid: &mut CpuId, topo: VcpuTopology) {
    let n = u32::from(topo.num_vcpus.max(1));
    let apic_id = u32::from(topo.vcpu_index);
    let vendor = vendor(cpuid.as_slice());
    let amd = vendor == Vendor::Amd;
    let multi = u32::from(n > 1);
    for e in cpuid.as_mut_slice() {
        match e.function {
            0x1 => {
                // CLFLUSH line size in 8-byte units: 64 bytes if KVM left it 0.
                let clflush = Some((e.ebx >> 8) & 0xff).filter(|&s| s != 0).unwrap_or(8);
                e.ebx = (apic_id << 24) | (n << 16) | (clflush << 8) | (e.ebx & 0xff);
                e.ecx |= ECX_HYPERVISOR; // TSC-deadline (ECX[24]) stays as KVM says.
                e.edx = with_field(e.edx, EDX_HTT, EDX_HTT, multi);
            }
            0x4 if vendor == Vendor::Intel => set_cache_sharing(e, n, true),
            0x6 => {
                e.eax &= !EAX_TURBO_BOOST;
                e.ecx &= !ECX_ENERGY_PERF_BIAS;
            }
            0xb | 0x1f => set_ext_topology(e, apic_id, n),
            0x8000_0001 if amd => e.ecx = with_field(e.ecx, ECX_CMP_LEGACY, ECX_CMP_LEGACY, multi),
            // ECX[7:0] = threads in the package - 1; ECX[15:12] = APIC id bits for them.
            0x8000_0008 if amd => {
                e.ecx = with_field(with_field(e.ecx, 7, 0, n - 1), 15, 12, order(n));
            }
            0x8000_001d if amd => set_cache_sharing(e, n, false),
            // Extended APIC id; core id (EBX[15:8] threads per core - 1 = 0); node 0 of 1.
            0x8000_001e if amd => (e.eax, e.ebx, e.ecx, e.edx) = (apic_id, apic_id, 0, 0),
            _ => {}
        }
    }
    for leaf in [0xb, 0x1f] {
        complete_ext_topology(cpuid, leaf, apic_id, n);
    }
}

/// Leaf 1 ECX[24]: TSC-deadline timer.
const ECX_TSC_DEADLINE: u32 = 1 << 24;

/// Advertises the TSC-deadline timer, which KVM's in-kernel LAPIC emulates
/// (KVM_CAP_TSC_DEADLINE_TIMER) but does not list in KVM_GET_SUPPORTED_CPUID.
/// Linux then needs no PIT to calibrate the LAPIC timer, which matters with
/// hardware-reduced ACPI, where it sets up no PIT.
pub fn enable_tsc_deadline(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice().iter_mut().filter(|e| e.function == 1) {
        e.ecx |= ECX_TSC_DEADLINE;
    }
}

/// Runs [`filter_cpuid`] on a copy of `supported` and loads it with KVM_SET_CPUID2.
pub fn setup_cpuid(vcpu: &VcpuFd, supported: &CpuId, topo: VcpuTopology) -> Result<(), CpuidError> {
    let mut cpuid = supported.clone();
    filter_cpuid(&mut cpuid, topo);
    vcpu.set_cpuid2(&cpuid).map_err(CpuidError::SetCpuid2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::KVM_MAX_CPUID_ENTRIES;

    #[test]
    fn tsc_deadline_is_set_only_in_leaf_1() {
        let mut cpuid =
            CpuId::from_entries(&[ent(1, 0, [0, 0, 0x1, 0]), ent(7, 0, [0; 4])]).unwrap();
        enable_tsc_deadline(&mut cpuid);
        assert_eq!(cpuid.as_slice()[0].ecx, 0x1 | ECX_TSC_DEADLINE);
        assert_eq!(cpuid.as_slice()[1].ecx, 0);
    }

    fn ent(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        let mut e = kvm_cpuid_entry2::default();
        (e.function, e.index) = (function, index);
        e.flags = u32::from(matches!(function, 4 | 0xb | 0x8000_001d));
        [e.eax, e.ebx, e.ecx, e.edx] = regs;
        e
    }

    fn sig(s: &[u8; 12]) -> [u32; 3] {
        let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
        [w(0), w(4), w(8)]
    }

    const KVM_SIG: [u32; 4] = [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d];

    /// A CPUID table shaped like KVM_GET_SUPPORTED_CPUID on `vendor`.
    fn table(vendor: &[u8; 12]) -> CpuId {
        let [b, d, c] = sig(vendor);
        let intel = vendor == b"GenuineIntel";
        let mut v = vec![
            ent(0, 0, [0xd, b, c, d]),
            ent(1, 0, [0x906ea, 0x0710_0042, 0x7ffa_3203, 0x178b_fbff]),
            ent(6, 0, [0x7, 0, 0x9, 0]),
            ent(0x4000_0000, 0, KVM_SIG),
            ent(0x4000_0001, 0, [0x0100_7efb, 0, 0, 0]),
            ent(0x8000_0008, 0, [0x3030, 0, 0x0003_7001, 0]),
        ];
        // L1d, L1i, L2, L3, null; EAX[31:26] as a 8-core host reports, reserved on AMD.
        let caches = [0x1c00_4121u32, 0x1c00_4122, 0x1c00_4143, 0x1c03_c163, 0];
        let cache_leaf = if intel { 4 } else { 0x8000_001d };
        let mask = if intel { !0 } else { 0x3ff_ffff };
        for (i, eax) in (0..).zip(caches) {
            v.push(ent(cache_leaf, i, [eax & mask, 0x01c0_003f, 0x3f, 0]));
        }
        if intel {
            v.push(ent(0xb, 0, [1, 2, 0x100, 7]));
            v.push(ent(0xb, 1, [4, 12, 0x201, 7]));
            v.push(ent(0xb, 2, [0, 0, 2, 7]));
        } else if vendor == b"AuthenticAMD" {
            v.push(ent(0xb, 0, [0, 0, 0, 1])); // Only an empty subleaf 0, as PVM reports.
            v.push(ent(0x8000_0001, 0, [0, 0, 0x0040_0393, 0]));
            v.push(ent(0x8000_001e, 0, [9, 0x105, 0x301, 0]));
        }
        CpuId::from_entries(&v).unwrap()
    }

    fn get(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        let found = c
            .as_slice()
            .iter()
            .find(|e| (e.function, e.index) == (function, index));
        *found.unwrap()
    }

    fn filtered(mut c: CpuId, vcpu_index: u8, num_vcpus: u8) -> CpuId {
        filter_cpuid(
            &mut c,
            VcpuTopology {
                vcpu_index,
                num_vcpus,
            },
        );
        c
    }

    const TOPOS: [(u8, u8); 7] = [(0, 1), (0, 2), (1, 2), (2, 3), (3, 4), (5, 8), (254, 255)];

    /// Checks the cache leaf `leaf`: L1/L2 private, L3 shared by all `n`.
    fn check_caches(c: &CpuId, leaf: u32, n: u32, cores_field: u32) {
        for (sub, level) in [(0, 1), (1, 1), (2, 2), (3, 3)] {
            let eax = get(c, leaf, sub).eax;
            assert_eq!(((eax >> 5) & 7, eax >> 26), (level, cores_field));
            assert_eq!((eax >> 14) & 0xfff, if level == 3 { n - 1 } else { 0 });
        }
        assert_eq!(get(c, leaf, 4).eax, 0, "null subleaf untouched");
    }

    #[test]
    fn topology_on_intel_and_amd() {
        for vendor in [b"GenuineIntel", b"AuthenticAMD"] {
            let intel = vendor == b"GenuineIntel";
            for (id, n) in TOPOS {
                let c = filtered(table(vendor), id, n);
                let (id, n) = (u32::from(id), u32::from(n));
                let l1 = get(&c, 1, 0);
                assert_eq!(l1.ebx, (id << 24) | (n << 16) | 0x0842); // CLFLUSH 0 -> 8
                assert_eq!(l1.ecx, 0x7ffa_3203 | ECX_HYPERVISOR); // TSC-deadline kept
                assert_eq!((l1.edx >> EDX_HTT) & 1, u32::from(n > 1));
                let l6 = get(&c, 6, 0);
                assert_eq!((l6.eax, l6.ecx), (0x5, 0x1), "turbo/EPB cleared, ARAT kept");
                let (sl0, sl1, sl2) = (get(&c, 0xb, 0), get(&c, 0xb, 1), get(&c, 0xb, 2));
                assert_eq!((sl0.eax, sl0.ebx, sl0.ecx, sl0.edx), (0, 1, 0x100, id));
                assert_eq!((sl1.ebx, sl1.ecx, sl1.edx), (n, 0x201, id));
                let shift = sl1.eax & 0x1f;
                assert!(1 << shift >= n && (shift == 0 || 1 << (shift - 1) < n));
                assert_eq!((sl2.eax, sl2.ebx, sl2.ecx, sl2.edx), (0, 0, 2, id));
                assert!([sl0, sl1, sl2].iter().all(|e| e.flags == 1));
                assert_eq!(get(&c, 0x4000_0000, 0), ent(0x4000_0000, 0, KVM_SIG));
                assert_eq!(get(&c, 0x4000_0001, 0).eax, 0x0100_7efb);
                let l8 = get(&c, 0x8000_0008, 0).ecx;
                if intel {
                    check_caches(&c, 4, n, (n - 1).min(63));
                    assert_eq!(l8, 0x0003_7001, "AMD leaves untouched on Intel");
                } else {
                    check_caches(&c, 0x8000_001d, n, 0);
                    assert_eq!(l8, 0x0003_0000 | (order(n) << 12) | (n - 1));
                    let ext = get(&c, 0x8000_0001, 0).ecx;
                    assert_eq!(ext, 0x0040_0391 | (u32::from(n > 1) << ECX_CMP_LEGACY));
                    let l1e = get(&c, 0x8000_001e, 0);
                    assert_eq!((l1e.eax, l1e.ebx, l1e.ecx, l1e.edx), (id, id, 0, 0));
                }
            }
        }
    }

    #[test]
    fn unknown_vendor_and_absent_leaves() {
        let c = filtered(table(b"SomeOtherCPU"), 0, 0);
        assert!(
            c.as_slice().iter().all(|e| e.function != 0xb),
            "no leaf 0xB invented"
        );
        let l1 = get(&c, 1, 0);
        assert_eq!(((l1.ebx >> 16) & 0xff, (l1.edx >> EDX_HTT) & 1), (1, 0)); // 0 -> 1
        assert_eq!(get(&c, 0x8000_0008, 0).ecx, 0x0003_7001);
    }

    #[test]
    fn full_table_hides_incomplete_leaf_0xb() {
        let mut v = vec![ent(0xb, 0, [0, 0, 0, 1])];
        v.resize(KVM_MAX_CPUID_ENTRIES, ent(0x4000_0001, 0, [0; 4]));
        let c = filtered(CpuId::from_entries(&v).unwrap(), 3, 4);
        let sl0 = get(&c, 0xb, 0);
        assert_eq!((sl0.eax, sl0.ebx, sl0.ecx, sl0.edx), (0, 0, 0, 3));
    }
}
