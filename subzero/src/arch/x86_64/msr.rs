//! The model-specific registers of the boot vCPU.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

/// MSR indices Subzero initialises.
pub mod index {
    /// Time-stamp counter.
    pub const IA32_TSC: u32 = 0x10;
    /// SYSENTER code segment.
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    /// SYSENTER stack pointer.
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    /// SYSENTER entry point.
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    /// Miscellaneous feature enables (fast strings, ...).
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    /// Default memory type and MTRR enable.
    pub const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
    /// SYSCALL segment selectors.
    pub const STAR: u32 = 0xc000_0081;
    /// SYSCALL entry point in 64-bit mode.
    pub const LSTAR: u32 = 0xc000_0082;
    /// SYSCALL entry point in compatibility mode.
    pub const CSTAR: u32 = 0xc000_0083;
    /// RFLAGS mask applied by SYSCALL.
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    /// GS base swapped in by SWAPGS.
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}

/// IA32_MISC_ENABLE bit 0: fast-string operations (`rep movs/stos`) enabled,
/// as firmware leaves it; Linux keys its `rep_good` optimisations on it.
const MISC_ENABLE_FAST_STRING: u64 = 1 << 0;
/// IA32_MTRR_DEF_TYPE bit 11: MTRRs enabled.
const MTRR_ENABLE: u64 = 1 << 11;
/// Memory type write-back, for IA32_MTRR_DEF_TYPE bits 7:0.
const MTRR_TYPE_WB: u64 = 6;

/// Errors from [`setup_msrs`].
#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    /// The list does not fit a `kvm_msrs` structure.
    #[error("{0} MSRs do not fit one KVM_SET_MSRS call")]
    TooMany(usize),
    /// `KVM_SET_MSRS` failed outright.
    #[error("KVM_SET_MSRS failed: {0}")]
    SetMsrs(kvm_ioctls::Error),
    /// KVM stopped at an MSR it does not accept.
    #[error("KVM_SET_MSRS refused MSR {index:#x} (wrote {written} of {total})")]
    Refused {
        /// Index of the first MSR KVM did not write.
        index: u32,
        /// How many MSRs KVM wrote before it.
        written: usize,
        /// How many were given.
        total: usize,
    },
}

/// The MSRs a booting Linux expects: the SYSENTER and SYSCALL MSRs and
/// KERNEL_GS_BASE cleared, TSC = 0, IA32_MISC_ENABLE with fast strings, and
/// the MTRR default type write-back with MTRRs enabled (no variable ranges, so
/// the guest sees all memory as write-back; with MTRRs disabled the
/// architectural default would be uncached).
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    use index::*;
    [
        (IA32_SYSENTER_CS, 0),
        (IA32_SYSENTER_ESP, 0),
        (IA32_SYSENTER_EIP, 0),
        (STAR, 0),
        (CSTAR, 0),
        (KERNEL_GS_BASE, 0),
        (SYSCALL_MASK, 0),
        (LSTAR, 0),
        (IA32_TSC, 0),
        (IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (IA32_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Writes [`boot_msr_entries`] to the vCPU. KVM_SET_MSRS stops at the first
/// MSR it refuses and returns how many it wrote; that MSR is named in the error.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), MsrError> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(|_| MsrError::TooMany(entries.len()))?;
    let written = vcpu.set_msrs(&msrs).map_err(MsrError::SetMsrs)?;
    match entries.get(written) {
        Some(refused) => Err(MsrError::Refused {
            index: refused.index,
            written,
            total: entries.len(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::index::*;
    use super::*;

    #[test]
    fn boot_msrs_listed_once_with_values() {
        let entries = boot_msr_entries();
        let value = |idx: u32| {
            let found: Vec<_> = entries.iter().filter(|e| e.index == idx).collect();
            assert_eq!(found.len(), 1, "MSR {idx:#x} must appear exactly once");
            found[0].data
        };
        for idx in [
            IA32_SYSENTER_CS,
            IA32_SYSENTER_ESP,
            IA32_SYSENTER_EIP,
            STAR,
            LSTAR,
            CSTAR,
            KERNEL_GS_BASE,
            SYSCALL_MASK,
            IA32_TSC,
        ] {
            assert_eq!(value(idx), 0, "MSR {idx:#x}");
        }
        assert_eq!(value(IA32_MISC_ENABLE) & 1, 1);
        assert_eq!(value(IA32_MTRR_DEF_TYPE), 0x806);
        assert_eq!(entries.len(), 11);
    }

    #[test]
    fn refused_error_names_msr_in_hex() {
        let e = MsrError::Refused {
            index: IA32_MISC_ENABLE,
            written: 9,
            total: 11,
        };
        assert_eq!(
            e.to_string(),
            "KVM_SET_MSRS refused MSR 0x1a0 (wrote 9 of 11)"
        );
    }
}
