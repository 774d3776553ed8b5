//! Names for the MSRs and CPUID leaves a Linux guest touches, for labelling
//! MSR and CPUID exits.
//!
//! Indices follow the kernel's `arch/x86/include/asm/msr-index.h`,
//! `asm/apicdef.h` (x2APIC MSR = 0x800 + xAPIC offset / 16) and
//! `uapi/asm/kvm_para.h`; names are the SDM's or APM's where those differ
//! only in spelling, otherwise the kernel's without the `MSR_` prefix.

/// Named MSRs, sorted by index.
#[rustfmt::skip]
const MSRS: &[(u32, &str)] = &[
    (0x10, "IA32_TSC"), (0x11, "KVM_WALL_CLOCK"), (0x12, "KVM_SYSTEM_TIME"),
    (0x17, "IA32_PLATFORM_ID"), (0x1b, "IA32_APIC_BASE"), (0x33, "TEST_CTRL"),
    (0x34, "SMI_COUNT"), (0x3a, "IA32_FEATURE_CONTROL"), (0x3b, "IA32_TSC_ADJUST"),
    (0x48, "IA32_SPEC_CTRL"), (0x49, "IA32_PRED_CMD"), (0x4e, "PPIN_CTL"), (0x4f, "PPIN"),
    (0x79, "UCODE_WRITE"), (0x8b, "UCODE_REV"), (0x9b, "IA32_SMM_MONITOR_CTL"),
    (0x9e, "IA32_SMBASE"), (0xbd, "XAPIC_DISABLE_STATUS"),
    (0xc1, "IA32_PMC0"), (0xc2, "IA32_PMC1"), (0xc3, "IA32_PMC2"), (0xc4, "IA32_PMC3"),
    (0xc5, "IA32_PMC4"), (0xc6, "IA32_PMC5"), (0xc7, "IA32_PMC6"), (0xc8, "IA32_PMC7"),
    (0xce, "PLATFORM_INFO"), (0xcf, "IA32_CORE_CAPABILITIES"), (0xe1, "IA32_UMWAIT_CONTROL"),
    (0xe2, "PKG_CST_CONFIG_CONTROL"), (0xe7, "IA32_MPERF"), (0xe8, "IA32_APERF"),
    (0xfe, "IA32_MTRRCAP"), (0x10a, "IA32_ARCH_CAPABILITIES"), (0x10b, "IA32_FLUSH_CMD"),
    (0x10f, "TSX_FORCE_ABORT"), (0x122, "IA32_TSX_CTRL"), (0x123, "IA32_MCU_OPT_CTRL"),
    (0x140, "MISC_FEATURES_ENABLES"), (0x174, "IA32_SYSENTER_CS"),
    (0x175, "IA32_SYSENTER_ESP"), (0x176, "IA32_SYSENTER_EIP"),
    (0x179, "IA32_MCG_CAP"), (0x17a, "IA32_MCG_STATUS"), (0x17b, "IA32_MCG_CTL"),
    (0x186, "IA32_PERFEVTSEL0"), (0x187, "IA32_PERFEVTSEL1"), (0x188, "IA32_PERFEVTSEL2"),
    (0x189, "IA32_PERFEVTSEL3"), (0x18a, "IA32_PERFEVTSEL4"), (0x18b, "IA32_PERFEVTSEL5"),
    (0x18c, "IA32_PERFEVTSEL6"), (0x18d, "IA32_PERFEVTSEL7"),
    (0x198, "IA32_PERF_STATUS"), (0x199, "IA32_PERF_CTL"), (0x19a, "IA32_THERM_CONTROL"),
    (0x19b, "IA32_THERM_INTERRUPT"), (0x19c, "IA32_THERM_STATUS"),
    (0x1a0, "IA32_MISC_ENABLE"), (0x1a2, "TEMPERATURE_TARGET"),
    (0x1a4, "MISC_FEATURE_CONTROL"), (0x1b0, "IA32_ENERGY_PERF_BIAS"),
    (0x1b1, "IA32_PACKAGE_THERM_STATUS"), (0x1b2, "IA32_PACKAGE_THERM_INTERRUPT"),
    (0x1c4, "IA32_XFD"), (0x1c5, "IA32_XFD_ERR"), (0x1d9, "IA32_DEBUGCTL"),
    (0x200, "IA32_MTRR_PHYSBASE0"), (0x201, "IA32_MTRR_PHYSMASK0"),
    (0x202, "IA32_MTRR_PHYSBASE1"), (0x203, "IA32_MTRR_PHYSMASK1"),
    (0x204, "IA32_MTRR_PHYSBASE2"), (0x205, "IA32_MTRR_PHYSMASK2"),
    (0x206, "IA32_MTRR_PHYSBASE3"), (0x207, "IA32_MTRR_PHYSMASK3"),
    (0x208, "IA32_MTRR_PHYSBASE4"), (0x209, "IA32_MTRR_PHYSMASK4"),
    (0x20a, "IA32_MTRR_PHYSBASE5"), (0x20b, "IA32_MTRR_PHYSMASK5"),
    (0x20c, "IA32_MTRR_PHYSBASE6"), (0x20d, "IA32_MTRR_PHYSMASK6"),
    (0x20e, "IA32_MTRR_PHYSBASE7"), (0x20f, "IA32_MTRR_PHYSMASK7"),
    (0x210, "IA32_MTRR_PHYSBASE8"), (0x211, "IA32_MTRR_PHYSMASK8"),
    (0x212, "IA32_MTRR_PHYSBASE9"), (0x213, "IA32_MTRR_PHYSMASK9"),
    (0x250, "IA32_MTRR_FIX64K_00000"), (0x258, "IA32_MTRR_FIX16K_80000"),
    (0x259, "IA32_MTRR_FIX16K_A0000"), (0x268, "IA32_MTRR_FIX4K_C0000"),
    (0x269, "IA32_MTRR_FIX4K_C8000"), (0x26a, "IA32_MTRR_FIX4K_D0000"),
    (0x26b, "IA32_MTRR_FIX4K_D8000"), (0x26c, "IA32_MTRR_FIX4K_E0000"),
    (0x26d, "IA32_MTRR_FIX4K_E8000"), (0x26e, "IA32_MTRR_FIX4K_F0000"),
    (0x26f, "IA32_MTRR_FIX4K_F8000"), (0x277, "IA32_PAT"), (0x2ff, "IA32_MTRR_DEF_TYPE"),
    (0x309, "IA32_FIXED_CTR0"), (0x30a, "IA32_FIXED_CTR1"), (0x30b, "IA32_FIXED_CTR2"),
    (0x30c, "IA32_FIXED_CTR3"), (0x345, "IA32_PERF_CAPABILITIES"),
    (0x38d, "IA32_FIXED_CTR_CTRL"), (0x38e, "IA32_PERF_GLOBAL_STATUS"),
    (0x38f, "IA32_PERF_GLOBAL_CTRL"), (0x390, "IA32_PERF_GLOBAL_OVF_CTRL"),
    (0x3f1, "IA32_PEBS_ENABLE"),
    (0x480, "IA32_VMX_BASIC"), (0x481, "IA32_VMX_PINBASED_CTLS"),
    (0x482, "IA32_VMX_PROCBASED_CTLS"), (0x483, "IA32_VMX_EXIT_CTLS"),
    (0x484, "IA32_VMX_ENTRY_CTLS"), (0x485, "IA32_VMX_MISC"),
    (0x486, "IA32_VMX_CR0_FIXED0"), (0x487, "IA32_VMX_CR0_FIXED1"),
    (0x488, "IA32_VMX_CR4_FIXED0"), (0x489, "IA32_VMX_CR4_FIXED1"),
    (0x48a, "IA32_VMX_VMCS_ENUM"), (0x48b, "IA32_VMX_PROCBASED_CTLS2"),
    (0x48c, "IA32_VMX_EPT_VPID_CAP"), (0x48d, "IA32_VMX_TRUE_PINBASED_CTLS"),
    (0x48e, "IA32_VMX_TRUE_PROCBASED_CTLS"), (0x48f, "IA32_VMX_TRUE_EXIT_CTLS"),
    (0x490, "IA32_VMX_TRUE_ENTRY_CTLS"), (0x491, "IA32_VMX_VMFUNC"),
    (0x492, "IA32_VMX_PROCBASED_CTLS3"),
    (0x4c1, "IA32_A_PMC0"), (0x4c2, "IA32_A_PMC1"), (0x4c3, "IA32_A_PMC2"), (0x4c4, "IA32_A_PMC3"),
    (0x4c5, "IA32_A_PMC4"), (0x4c6, "IA32_A_PMC5"), (0x4c7, "IA32_A_PMC6"), (0x4c8, "IA32_A_PMC7"),
    (0x4d0, "IA32_MCG_EXT_CTL"), (0x600, "IA32_DS_AREA"), (0x606, "RAPL_POWER_UNIT"),
    (0x610, "PKG_POWER_LIMIT"), (0x611, "PKG_ENERGY_STATUS"),
    (0x6a0, "IA32_U_CET"), (0x6a2, "IA32_S_CET"), (0x6a4, "IA32_PL0_SSP"),
    (0x6a5, "IA32_PL1_SSP"), (0x6a6, "IA32_PL2_SSP"), (0x6a7, "IA32_PL3_SSP"),
    (0x6a8, "IA32_INT_SSP_TAB"), (0x6e0, "IA32_TSC_DEADLINE"),
    (0x770, "IA32_PM_ENABLE"), (0x771, "IA32_HWP_CAPABILITIES"), (0x774, "IA32_HWP_REQUEST"),
    // x2APIC: 0x800 + xAPIC register offset / 16.
    (0x802, "X2APIC_ID"), (0x803, "X2APIC_VERSION"), (0x808, "X2APIC_TPR"),
    (0x80a, "X2APIC_PPR"), (0x80b, "X2APIC_EOI"), (0x80d, "X2APIC_LDR"), (0x80f, "X2APIC_SIVR"),
    (0x810, "X2APIC_ISR0"), (0x811, "X2APIC_ISR1"), (0x812, "X2APIC_ISR2"), (0x813, "X2APIC_ISR3"),
    (0x814, "X2APIC_ISR4"), (0x815, "X2APIC_ISR5"), (0x816, "X2APIC_ISR6"), (0x817, "X2APIC_ISR7"),
    (0x818, "X2APIC_TMR0"), (0x819, "X2APIC_TMR1"), (0x81a, "X2APIC_TMR2"), (0x81b, "X2APIC_TMR3"),
    (0x81c, "X2APIC_TMR4"), (0x81d, "X2APIC_TMR5"), (0x81e, "X2APIC_TMR6"), (0x81f, "X2APIC_TMR7"),
    (0x820, "X2APIC_IRR0"), (0x821, "X2APIC_IRR1"), (0x822, "X2APIC_IRR2"), (0x823, "X2APIC_IRR3"),
    (0x824, "X2APIC_IRR4"), (0x825, "X2APIC_IRR5"), (0x826, "X2APIC_IRR6"), (0x827, "X2APIC_IRR7"),
    (0x828, "X2APIC_ESR"), (0x82f, "X2APIC_LVT_CMCI"), (0x830, "X2APIC_ICR"),
    (0x832, "X2APIC_LVT_TIMER"), (0x833, "X2APIC_LVT_THERMAL"), (0x834, "X2APIC_LVT_PMI"),
    (0x835, "X2APIC_LVT_LINT0"), (0x836, "X2APIC_LVT_LINT1"), (0x837, "X2APIC_LVT_ERROR"),
    (0x838, "X2APIC_TIMER_ICR"), (0x839, "X2APIC_TIMER_CCR"), (0x83e, "X2APIC_TIMER_DCR"),
    (0x83f, "X2APIC_SELF_IPI"),
    (0xd90, "IA32_BNDCFGS"), (0xda0, "IA32_XSS"),
    (0x4b56_4d00, "KVM_WALL_CLOCK_NEW"), (0x4b56_4d01, "KVM_SYSTEM_TIME_NEW"),
    (0x4b56_4d02, "KVM_ASYNC_PF_EN"), (0x4b56_4d03, "KVM_STEAL_TIME"),
    (0x4b56_4d04, "KVM_PV_EOI_EN"), (0x4b56_4d05, "KVM_POLL_CONTROL"),
    (0x4b56_4d06, "KVM_ASYNC_PF_INT"), (0x4b56_4d07, "KVM_ASYNC_PF_ACK"),
    (0x4b56_4d08, "KVM_MIGRATION_CONTROL"),
    (0xc000_0080, "EFER"), (0xc000_0081, "STAR"), (0xc000_0082, "LSTAR"),
    (0xc000_0083, "CSTAR"), (0xc000_0084, "SYSCALL_MASK"), (0xc000_00e9, "IRPERF"),
    (0xc000_0100, "FS_BASE"), (0xc000_0101, "GS_BASE"), (0xc000_0102, "KERNEL_GS_BASE"),
    (0xc000_0103, "TSC_AUX"), (0xc000_0104, "TSC_RATIO"),
    (0xc000_0300, "PERF_CNTR_GLOBAL_STATUS"), (0xc000_0301, "PERF_CNTR_GLOBAL_CTL"),
    (0xc000_0302, "PERF_CNTR_GLOBAL_STATUS_CLR"),
    (0xc001_0000, "K7_EVNTSEL0"), (0xc001_0001, "K7_EVNTSEL1"),
    (0xc001_0002, "K7_EVNTSEL2"), (0xc001_0003, "K7_EVNTSEL3"),
    (0xc001_0004, "K7_PERFCTR0"), (0xc001_0005, "K7_PERFCTR1"),
    (0xc001_0006, "K7_PERFCTR2"), (0xc001_0007, "K7_PERFCTR3"),
    (0xc001_0010, "SYSCFG"), (0xc001_0015, "HWCR"), (0xc001_001a, "TOP_MEM"),
    (0xc001_001d, "TOP_MEM2"), (0xc001_001f, "NB_CFG"), (0xc001_0020, "PATCH_LOADER"),
    (0xc001_0058, "MMIO_CONF_BASE"), (0xc001_0062, "PSTATE_CTL"), (0xc001_0063, "PSTATE_STATUS"),
    (0xc001_0114, "VM_CR"), (0xc001_0115, "IGNNE"), (0xc001_0117, "VM_HSAVE_PA"),
    (0xc001_011f, "VIRT_SPEC_CTRL"), (0xc001_0130, "SEV_ES_GHCB"), (0xc001_0131, "SEV_STATUS"),
    (0xc001_0140, "OSVW_ID_LENGTH"), (0xc001_0141, "OSVW_STATUS"),
    (0xc001_0200, "F15H_PERF_CTL0"), (0xc001_0201, "F15H_PERF_CTR0"),
    (0xc001_0202, "F15H_PERF_CTL1"), (0xc001_0203, "F15H_PERF_CTR1"),
    (0xc001_0204, "F15H_PERF_CTL2"), (0xc001_0205, "F15H_PERF_CTR2"),
    (0xc001_0206, "F15H_PERF_CTL3"), (0xc001_0207, "F15H_PERF_CTR3"),
    (0xc001_0208, "F15H_PERF_CTL4"), (0xc001_0209, "F15H_PERF_CTR4"),
    (0xc001_020a, "F15H_PERF_CTL5"), (0xc001_020b, "F15H_PERF_CTR5"),
    (0xc001_0299, "AMD_RAPL_POWER_UNIT"), (0xc001_029a, "AMD_CORE_ENERGY_STATUS"),
    (0xc001_029b, "AMD_PKG_ENERGY_STATUS"),
    (0xc001_1020, "LS_CFG"), (0xc001_1021, "IC_CFG"), (0xc001_1022, "DC_CFG"),
    (0xc001_1023, "TW_CFG"), (0xc001_1029, "DE_CFG"), (0xc001_102a, "BU_CFG2"),
    (0xc001_102e, "BP_CFG"),
];

/// MSR ranges named by position rather than one by one: (first, last, label).
const RANGES: &[(u32, u32, Range)] = &[
    (0x280, 0x29f, Range::McCtl2),
    (0x400, 0x47f, Range::McBank),
    (0x800, 0x8ff, Range::X2apic),
    (0x4b56_4d00, 0x4b56_4dff, Range::Kvm),
    (0xc001_0064, 0xc001_006b, Range::PstateDef),
];

#[derive(Clone, Copy)]
enum Range {
    /// IA32_MCi_CTL2, one per bank.
    McCtl2,
    /// IA32_MCi_CTL/STATUS/ADDR/MISC, four per bank.
    McBank,
    /// The x2APIC register block.
    X2apic,
    /// KVM's paravirtual MSR block.
    Kvm,
    /// AMD P-state definitions.
    PstateDef,
}

/// The MSR's name ("IA32_APIC_BASE", "X2APIC_EOI", "KVM_STEAL_TIME", ...),
/// or `None` when it has no name of its own (see [`msr_label`] for ranges).
pub fn msr_name(index: u32) -> Option<&'static str> {
    MSRS.binary_search_by_key(&index, |&(i, _)| i)
        .ok()
        .map(|i| MSRS[i].1)
}

/// A label for any MSR: its [`msr_name`]; else its place in a known range,
/// such as "X2APIC+0x3f", "MC3_STATUS", "MC5_CTL2", "KVM+0x9" or
/// "PSTATE_DEF2"; else its index in hex, "0x12345678".
pub fn msr_label(index: u32) -> String {
    if let Some(name) = msr_name(index) {
        return name.to_string();
    }
    let Some(&(first, _, range)) = RANGES
        .iter()
        .find(|&&(first, last, _)| (first..=last).contains(&index))
    else {
        return format!("{index:#x}");
    };
    let off = index - first;
    match range {
        Range::McCtl2 => format!("MC{off}_CTL2"),
        Range::McBank => {
            let reg = ["CTL", "STATUS", "ADDR", "MISC"][(off % 4) as usize];
            format!("MC{}_{reg}", off / 4)
        }
        Range::X2apic => format!("X2APIC+{off:#x}"),
        Range::Kvm => format!("KVM+{off:#x}"),
        Range::PstateDef => format!("PSTATE_DEF{off}"),
    }
}

/// Short names of CPUID leaves, sorted by leaf.
#[rustfmt::skip]
const LEAVES: &[(u32, &str)] = &[
    (0x0, "vendor/max basic"), (0x1, "features"), (0x2, "cache/TLB descriptors"),
    (0x4, "cache topology"), (0x5, "MONITOR/MWAIT"), (0x6, "power"),
    (0x7, "extended features"), (0xa, "PMU"), (0xb, "x2APIC topology"), (0xd, "XSAVE"),
    (0xf, "RDT monitoring"), (0x10, "RDT allocation"), (0x12, "SGX"), (0x14, "Intel PT"),
    (0x15, "TSC/crystal ratio"), (0x16, "frequency"), (0x1d, "AMX tile"),
    (0x1e, "AMX TMUL"), (0x1f, "v2 extended topology"),
    (0x4000_0000, "hypervisor vendor"), (0x4000_0001, "KVM features"),
    (0x4000_0010, "timing (TSC/bus kHz)"),
    (0x8000_0000, "vendor/max extended"), (0x8000_0001, "extended features"),
    (0x8000_0002, "brand string"), (0x8000_0003, "brand string"),
    (0x8000_0004, "brand string"), (0x8000_0005, "L1 cache/TLB"),
    (0x8000_0006, "L2/L3 cache"), (0x8000_0007, "power/invariant TSC"),
    (0x8000_0008, "address sizes"), (0x8000_000a, "SVM"), (0x8000_0019, "1G TLB"),
    (0x8000_001b, "IBS"), (0x8000_001d, "cache topology (AMD)"),
    (0x8000_001e, "core/node IDs"), (0x8000_001f, "memory encryption"),
    (0x8000_0020, "platform QoS"), (0x8000_0021, "extended features 2"),
    (0x8000_0022, "PMU (AMD)"), (0x8000_0026, "extended topology (AMD)"),
];

/// A short description of a CPUID leaf ("features", "XSAVE", "brand
/// string", ...), or `None` for leaves without one.
pub fn cpuid_leaf_name(leaf: u32) -> Option<&'static str> {
    LEAVES
        .binary_search_by_key(&leaf, |&(l, _)| l)
        .ok()
        .map(|i| LEAVES[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_and_unique() {
        assert!(MSRS.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(LEAVES.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(RANGES.windows(2).all(|w| w[0].1 < w[1].0));
    }

    #[test]
    fn known_msrs() {
        let known = [
            (0x10, "IA32_TSC"),
            (0x1b, "IA32_APIC_BASE"),
            (0x3a, "IA32_FEATURE_CONTROL"),
            (0x48, "IA32_SPEC_CTRL"),
            (0x49, "IA32_PRED_CMD"),
            (0xfe, "IA32_MTRRCAP"),
            (0x201, "IA32_MTRR_PHYSMASK0"),
            (0x26f, "IA32_MTRR_FIX4K_F8000"),
            (0x277, "IA32_PAT"),
            (0x2ff, "IA32_MTRR_DEF_TYPE"),
            (0x1a0, "IA32_MISC_ENABLE"),
            (0x6e0, "IA32_TSC_DEADLINE"),
            (0x80b, "X2APIC_EOI"),
            (0x830, "X2APIC_ICR"),
            (0x838, "X2APIC_TIMER_ICR"),
            (0x83f, "X2APIC_SELF_IPI"),
            (0xc000_0080, "EFER"),
            (0xc000_0084, "SYSCALL_MASK"),
            (0xc000_0102, "KERNEL_GS_BASE"),
            (0x4b56_4d01, "KVM_SYSTEM_TIME_NEW"),
            (0x4b56_4d07, "KVM_ASYNC_PF_ACK"),
            (0x12, "KVM_SYSTEM_TIME"),
            (0xc001_0015, "HWCR"),
            (0xc001_1029, "DE_CFG"),
            (0xc001_020b, "F15H_PERF_CTR5"),
            (0xc001_011f, "VIRT_SPEC_CTRL"),
            (0x10a, "IA32_ARCH_CAPABILITIES"),
            (0xda0, "IA32_XSS"),
            (0xce, "PLATFORM_INFO"),
        ];
        for (index, name) in known {
            assert_eq!(msr_name(index), Some(name), "{index:#x}");
            assert_eq!(msr_label(index), name, "{index:#x}");
        }
    }

    #[test]
    fn x2apic_names_follow_xapic_offsets() {
        // ISRn, TMRn and IRRn are eight consecutive MSRs each.
        for n in 0..8 {
            assert!(msr_name(0x810 + n).is_some());
            assert_eq!(msr_label(0x810 + n), format!("X2APIC_ISR{n}"));
            assert_eq!(msr_label(0x818 + n), format!("X2APIC_TMR{n}"));
            assert_eq!(msr_label(0x820 + n), format!("X2APIC_IRR{n}"));
        }
    }

    #[test]
    fn range_labels() {
        assert_eq!(msr_name(0x83d), None);
        assert_eq!(msr_label(0x83d), "X2APIC+0x3d");
        assert_eq!(msr_label(0x831), "X2APIC+0x31");
        assert_eq!(msr_label(0x8ff), "X2APIC+0xff");
        assert_eq!(msr_label(0x400), "MC0_CTL");
        assert_eq!(msr_label(0x40d), "MC3_STATUS");
        assert_eq!(msr_label(0x47f), "MC31_MISC");
        assert_eq!(msr_label(0x285), "MC5_CTL2");
        assert_eq!(msr_label(0x4b56_4d09), "KVM+0x9");
        assert_eq!(msr_label(0xc001_0066), "PSTATE_DEF2");
    }

    #[test]
    fn unknown_msrs() {
        for index in [0x1234_5678, 0x13, 0x57f, 0xc001_006c] {
            assert_eq!(msr_name(index), None);
        }
        assert_eq!(msr_label(0x1234_5678), "0x12345678");
        assert_eq!(msr_label(0x13), "0x13");
        assert_eq!(msr_label(0x900), "0x900");
    }

    #[test]
    fn cpuid_leaves() {
        assert_eq!(cpuid_leaf_name(0x0), Some("vendor/max basic"));
        assert_eq!(cpuid_leaf_name(0x7), Some("extended features"));
        assert_eq!(cpuid_leaf_name(0xd), Some("XSAVE"));
        assert_eq!(cpuid_leaf_name(0x15), Some("TSC/crystal ratio"));
        assert_eq!(cpuid_leaf_name(0x4000_0001), Some("KVM features"));
        assert_eq!(cpuid_leaf_name(0x8000_0003), Some("brand string"));
        assert_eq!(cpuid_leaf_name(0x8000_0008), Some("address sizes"));
        assert_eq!(cpuid_leaf_name(0x8000_0021), Some("extended features 2"));
        assert_eq!(cpuid_leaf_name(0x3), None);
        assert_eq!(cpuid_leaf_name(0x4000_0002), None);
        assert_eq!(cpuid_leaf_name(0x8000_0009), None);
    }
}
