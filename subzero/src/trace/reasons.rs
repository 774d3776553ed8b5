//! Exit reason codes of the `kvm:kvm_exit` tracepoint and their names.
//!
//! The names are the ones `perf kvm stat` and the tracepoint's own print
//! format use: the kernel's uapi tables `VMX_EXIT_REASONS`
//! (`arch/x86/include/uapi/asm/vmx.h`) and `SVM_EXIT_REASONS`
//! (`arch/x86/include/uapi/asm/svm.h`), as of Linux 6.18. A test checks both
//! tables against the 6.18 tracefs format file.
//!
//! Codes the uapi headers define but leave out of their name tables (VMX
//! `OTHER_SMI` 6 and `SEAMCALL` 76, SVM `MWAIT_COND`, `RDPRU`, the CR
//! write traps other than CR0/CR4/CR8, SEV `SNP_RUN_VMPL` ...) are unknown
//! here too, so the names stay exactly what perf prints.

use std::borrow::Cow;

/// The hardware virtualization extension behind an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// Intel VT-x.
    Vmx,
    /// AMD-V (Secure Virtual Machine).
    Svm,
}

impl Isa {
    /// Decodes the tracepoint's `isa` field: `KVM_ISA_VMX` (1) or
    /// `KVM_ISA_SVM` (2) of `arch/x86/kvm/trace.h`.
    pub fn from_field(v: u64) -> Option<Isa> {
        match v {
            1 => Some(Isa::Vmx),
            2 => Some(Isa::Svm),
            _ => None,
        }
    }

    /// Lowercase short name: "vmx" or "svm".
    pub fn name(self) -> &'static str {
        match self {
            Isa::Vmx => "vmx",
            Isa::Svm => "svm",
        }
    }
}

/// Which detail breakdown applies to an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Nested page fault: EPT violation or misconfiguration, SVM NPF.
    Npf,
    /// RDMSR or WRMSR.
    Msr,
    /// CPUID.
    Cpuid,
    /// Port I/O (IN, OUT, INS, OUTS).
    Io,
    /// Anything else.
    Other,
}

/// Basic VMX exit reasons (low 16 bits of the exit reason), sorted.
#[rustfmt::skip]
const VMX: &[(u64, &str)] = &[
    (0, "EXCEPTION_NMI"), (1, "EXTERNAL_INTERRUPT"), (2, "TRIPLE_FAULT"),
    (3, "INIT_SIGNAL"), (4, "SIPI_SIGNAL"), (7, "INTERRUPT_WINDOW"),
    (8, "NMI_WINDOW"), (9, "TASK_SWITCH"), (10, "CPUID"), (12, "HLT"),
    (13, "INVD"), (14, "INVLPG"), (15, "RDPMC"), (16, "RDTSC"),
    (18, "VMCALL"), (19, "VMCLEAR"), (20, "VMLAUNCH"), (21, "VMPTRLD"),
    (22, "VMPTRST"), (23, "VMREAD"), (24, "VMRESUME"), (25, "VMWRITE"),
    (26, "VMOFF"), (27, "VMON"), (28, "CR_ACCESS"), (29, "DR_ACCESS"),
    (30, "IO_INSTRUCTION"), (31, "MSR_READ"), (32, "MSR_WRITE"),
    (33, "INVALID_STATE"), (34, "MSR_LOAD_FAIL"), (36, "MWAIT_INSTRUCTION"),
    (37, "MONITOR_TRAP_FLAG"), (39, "MONITOR_INSTRUCTION"),
    (40, "PAUSE_INSTRUCTION"), (41, "MCE_DURING_VMENTRY"),
    (43, "TPR_BELOW_THRESHOLD"), (44, "APIC_ACCESS"), (45, "EOI_INDUCED"),
    (46, "GDTR_IDTR"), (47, "LDTR_TR"), (48, "EPT_VIOLATION"),
    (49, "EPT_MISCONFIG"), (50, "INVEPT"), (51, "RDTSCP"),
    (52, "PREEMPTION_TIMER"), (53, "INVVPID"), (54, "WBINVD"), (55, "XSETBV"),
    (56, "APIC_WRITE"), (57, "RDRAND"), (58, "INVPCID"), (59, "VMFUNC"),
    (60, "ENCLS"), (61, "RDSEED"), (62, "PML_FULL"), (63, "XSAVES"),
    (64, "XRSTORS"), (67, "UMWAIT"), (68, "TPAUSE"), (74, "BUS_LOCK"),
    (75, "NOTIFY"), (77, "TDCALL"), (84, "MSR_READ_IMM"), (85, "MSR_WRITE_IMM"),
];

/// The tracepoint's 32-bit `exit_reason` field holds `SVM_EXIT_ERR` (-1) as
/// this value.
const SVM_EXIT_ERR: u64 = 0xffff_ffff;

/// SVM exit codes, sorted. 0x40 + n is exception vector n.
#[rustfmt::skip]
const SVM: &[(u64, &str)] = &[
    (0x000, "read_cr0"), (0x002, "read_cr2"), (0x003, "read_cr3"), (0x004, "read_cr4"),
    (0x008, "read_cr8"), (0x010, "write_cr0"), (0x012, "write_cr2"), (0x013, "write_cr3"),
    (0x014, "write_cr4"), (0x018, "write_cr8"),
    (0x020, "read_dr0"), (0x021, "read_dr1"), (0x022, "read_dr2"), (0x023, "read_dr3"),
    (0x024, "read_dr4"), (0x025, "read_dr5"), (0x026, "read_dr6"), (0x027, "read_dr7"),
    (0x030, "write_dr0"), (0x031, "write_dr1"), (0x032, "write_dr2"), (0x033, "write_dr3"),
    (0x034, "write_dr4"), (0x035, "write_dr5"), (0x036, "write_dr6"), (0x037, "write_dr7"),
    (0x040, "DE excp"), (0x041, "DB excp"), (0x043, "BP excp"), (0x044, "OF excp"),
    (0x045, "BR excp"), (0x046, "UD excp"), (0x047, "NM excp"), (0x048, "DF excp"),
    (0x04a, "TS excp"), (0x04b, "NP excp"), (0x04c, "SS excp"), (0x04d, "GP excp"),
    (0x04e, "PF excp"), (0x050, "MF excp"), (0x051, "AC excp"), (0x052, "MC excp"),
    (0x053, "XF excp"),
    (0x060, "interrupt"), (0x061, "nmi"), (0x062, "smi"), (0x063, "init"),
    (0x064, "vintr"), (0x065, "cr0_sel_write"), (0x066, "read_idtr"), (0x067, "read_gdtr"),
    (0x068, "read_ldtr"), (0x069, "read_rt"), (0x06a, "write_idtr"), (0x06b, "write_gdtr"),
    (0x06c, "write_ldtr"), (0x06d, "write_rt"), (0x06e, "rdtsc"), (0x06f, "rdpmc"),
    (0x070, "pushf"), (0x071, "popf"), (0x072, "cpuid"), (0x073, "rsm"),
    (0x074, "iret"), (0x075, "swint"), (0x076, "invd"), (0x077, "pause"),
    (0x078, "hlt"), (0x079, "invlpg"), (0x07a, "invlpga"), (0x07b, "io"),
    (0x07c, "msr"), (0x07d, "task_switch"), (0x07e, "ferr_freeze"), (0x07f, "shutdown"),
    (0x080, "vmrun"), (0x081, "hypercall"), (0x082, "vmload"), (0x083, "vmsave"),
    (0x084, "stgi"), (0x085, "clgi"), (0x086, "skinit"), (0x087, "rdtscp"),
    (0x088, "icebp"), (0x089, "wbinvd"), (0x08a, "monitor"), (0x08b, "mwait"),
    (0x08d, "xsetbv"), (0x08f, "write_efer_trap"), (0x090, "write_cr0_trap"),
    (0x094, "write_cr4_trap"), (0x098, "write_cr8_trap"), (0x0a2, "invpcid"),
    (0x0a5, "buslock"), (0x0a6, "idle-halt"),
    (0x400, "npf"), (0x401, "avic_incomplete_ipi"), (0x402, "avic_unaccelerated_access"),
    (0x403, "vmgexit"),
    (0x8000_0001, "vmgexit_mmio_read"), (0x8000_0002, "vmgexit_mmio_write"),
    (0x8000_0003, "vmgexit_nmi_complete"), (0x8000_0004, "vmgexit_ap_hlt_loop"),
    (0x8000_0005, "vmgexit_ap_jump_table"), (0x8000_0010, "vmgexit_page_state_change"),
    (0x8000_0011, "vmgexit_guest_request"), (0x8000_0012, "vmgexit_ext_guest_request"),
    (0x8000_0013, "vmgexit_ap_creation"), (0x8000_fffd, "vmgexit_hypervisor_feature"),
    (SVM_EXIT_ERR, "invalid_guest_state"),
];

/// The code looked up in the tables: VMX's basic reason (the low 16 bits;
/// bit 31 is FAILED_VMENTRY and others are flags), SVM's code as it is, with
/// a 64-bit -1 folded onto the tracepoint's 32-bit one.
fn key(isa: Isa, code: u64) -> u64 {
    match isa {
        Isa::Vmx => code & 0xffff,
        Isa::Svm if code == u64::MAX => SVM_EXIT_ERR,
        Isa::Svm => code,
    }
}

fn lookup(isa: Isa, code: u64) -> Option<&'static str> {
    let table = match isa {
        Isa::Vmx => VMX,
        Isa::Svm => SVM,
    };
    let k = key(isa, code);
    table
        .binary_search_by_key(&k, |&(c, _)| c)
        .ok()
        .map(|i| table[i].1)
}

/// The exit reason's name as `perf kvm stat` prints it ("EPT_VIOLATION",
/// "npf", ...), or "unknown(0x..)" with the looked-up code (for VMX the
/// basic reason) when the kernel's table has no name for it.
pub fn reason_name(isa: Isa, code: u64) -> Cow<'static, str> {
    match lookup(isa, code) {
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(format!("unknown({:#x})", key(isa, code))),
    }
}

/// Which detail breakdown applies to the exit: guest-physical faults, MSR
/// accesses, CPUID leaves, I/O ports, or none.
pub fn class(isa: Isa, code: u64) -> Class {
    match (isa, key(isa, code)) {
        (Isa::Vmx, 48 | 49) | (Isa::Svm, 0x400) => Class::Npf,
        (Isa::Vmx, 31 | 32 | 84 | 85) | (Isa::Svm, 0x07c) => Class::Msr,
        (Isa::Vmx, 10) | (Isa::Svm, 0x072) => Class::Cpuid,
        (Isa::Vmx, 30) | (Isa::Svm, 0x07b) => Class::Io,
        _ => Class::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const FORMAT: &str = include_str!("../../tests/data/tracefs/6.18/kvm_exit.format");

    #[test]
    fn isa_field_and_name() {
        assert_eq!(Isa::from_field(1), Some(Isa::Vmx));
        assert_eq!(Isa::from_field(2), Some(Isa::Svm));
        assert_eq!(Isa::from_field(0), None);
        assert_eq!(Isa::from_field(3), None);
        assert_eq!(Isa::Vmx.name(), "vmx");
        assert_eq!(Isa::Svm.name(), "svm");
    }

    #[test]
    fn tables_are_sorted_and_unique() {
        for table in [VMX, SVM] {
            assert!(table.windows(2).all(|w| w[0].0 < w[1].0));
        }
    }

    #[test]
    fn vmx_names() {
        let n = |c| reason_name(Isa::Vmx, c);
        assert_eq!(n(0), "EXCEPTION_NMI");
        assert_eq!(n(1), "EXTERNAL_INTERRUPT");
        assert_eq!(n(10), "CPUID");
        assert_eq!(n(30), "IO_INSTRUCTION");
        assert_eq!(n(31), "MSR_READ");
        assert_eq!(n(48), "EPT_VIOLATION");
        assert_eq!(n(85), "MSR_WRITE_IMM");
        // FAILED_VMENTRY and other high bits do not change the basic reason.
        assert_eq!(n(0x8000_0021), "INVALID_STATE");
        assert_eq!(n(0x0800_0030), "EPT_VIOLATION");
    }

    #[test]
    fn vmx_unknown() {
        assert_eq!(reason_name(Isa::Vmx, 6), "unknown(0x6)");
        assert_eq!(reason_name(Isa::Vmx, 76), "unknown(0x4c)");
        assert_eq!(reason_name(Isa::Vmx, 0x8000_1234), "unknown(0x1234)");
    }

    #[test]
    fn svm_names() {
        let n = |c| reason_name(Isa::Svm, c);
        assert_eq!(n(0x000), "read_cr0");
        assert_eq!(n(0x014), "write_cr4");
        assert_eq!(n(0x04e), "PF excp");
        assert_eq!(n(0x060), "interrupt");
        assert_eq!(n(0x064), "vintr");
        assert_eq!(n(0x072), "cpuid");
        assert_eq!(n(0x078), "hlt");
        assert_eq!(n(0x07b), "io");
        assert_eq!(n(0x07c), "msr");
        assert_eq!(n(0x400), "npf");
        assert_eq!(n(0x401), "avic_incomplete_ipi");
        assert_eq!(n(0x8000_0010), "vmgexit_page_state_change");
        assert_eq!(n(0xffff_ffff), "invalid_guest_state");
        assert_eq!(n(u64::MAX), "invalid_guest_state");
    }

    #[test]
    fn svm_unknown() {
        // SVM codes are not masked: 0x1_0072 is not cpuid.
        assert_eq!(reason_name(Isa::Svm, 0x1_0072), "unknown(0x10072)");
        assert_eq!(reason_name(Isa::Svm, 0x08e), "unknown(0x8e)");
        assert_eq!(reason_name(Isa::Svm, 0x042), "unknown(0x42)");
    }

    #[test]
    fn classes() {
        use Class::*;
        let vmx = [
            (48, Npf),
            (49, Npf),
            (31, Msr),
            (32, Msr),
            (84, Msr),
            (85, Msr),
        ];
        let vmx_more = [(10, Cpuid), (30, Io), (12, Other), (0x8000_0030, Npf)];
        for (code, want) in vmx.into_iter().chain(vmx_more) {
            assert_eq!(class(Isa::Vmx, code), want, "vmx {code:#x}");
        }
        let svm = [(0x400, Npf), (0x07c, Msr), (0x072, Cpuid), (0x07b, Io)];
        for (code, want) in svm.into_iter().chain([(0x078, Other), (30, Other)]) {
            assert_eq!(class(Isa::Svm, code), want, "svm {code:#x}");
        }
    }

    /// Evaluates a symbol's code: decimal, hex, `-1`, or a sum such as
    /// `0x040 + 13`.
    fn eval(expr: &str) -> i64 {
        expr.split('+')
            .map(|term| {
                let t = term.trim();
                let (neg, t) = t.strip_prefix('-').map_or((false, t), |r| (true, r));
                let v = match t.strip_prefix("0x") {
                    Some(hex) => i64::from_str_radix(hex, 16),
                    None => t.parse(),
                }
                .unwrap_or_else(|e| panic!("bad code {term:?}: {e}"));
                if neg {
                    -v
                } else {
                    v
                }
            })
            .sum()
    }

    /// The `{ code, "name" }` tables of every `__print_symbolic(...)` in the
    /// format's `print fmt:` line, in order.
    fn symbolic_tables(format: &str) -> Vec<Vec<(i64, String)>> {
        let line = format
            .lines()
            .find_map(|l| l.strip_prefix("print fmt:"))
            .expect("print fmt line");
        let mut tables = Vec::new();
        for (i, call) in line.match_indices("__print_symbolic(") {
            let rest = &line[i + call.len()..];
            // The call ends at the first ')' outside a string literal.
            let mut in_str = false;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    in_str ^= c == '"';
                    !in_str && c == ')'
                })
                .map(|(i, _)| i)
                .expect("closing parenthesis");
            let mut table = Vec::new();
            for entry in rest[..end].split('{').skip(1) {
                let entry = entry.split('}').next().expect("entry");
                let (code, name) = entry.split_once(',').expect("code, name");
                let name = name.trim().trim_matches('"').to_string();
                table.push((eval(code), name));
            }
            tables.push(table);
        }
        tables
    }

    #[test]
    fn parser_reads_sums_and_negatives() {
        assert_eq!(eval("0x040 + 13"), 0x4d);
        assert_eq!(eval(" 84"), 84);
        assert_eq!(eval("-1"), -1);
        assert_eq!(eval("0x8000fffd"), 0x8000_fffd);
    }

    /// Our tables match the 6.18 tracepoint's, name for name and code for
    /// code. The tracepoint lists `SVM_EXIT_ERR` as -1 but its `exit_reason`
    /// field is 32 bits wide, so -1 is compared as 0xffffffff.
    #[test]
    fn tables_match_tracepoint_format() {
        let tables = symbolic_tables(FORMAT);
        assert_eq!(tables.len(), 2, "VMX and SVM tables");
        for (isa, parsed, ours) in [(Isa::Vmx, &tables[0], VMX), (Isa::Svm, &tables[1], SVM)] {
            let theirs: BTreeMap<u64, &str> = parsed
                .iter()
                .map(|(c, n)| (if *c == -1 { SVM_EXIT_ERR } else { *c as u64 }, n.as_str()))
                .collect();
            assert_eq!(theirs.len(), parsed.len(), "{isa:?}: duplicate codes");
            assert!(theirs.len() > 60, "{isa:?}: parsed only {}", theirs.len());
            for (code, name) in &theirs {
                assert_eq!(reason_name(isa, *code), *name, "{isa:?} {code:#x}");
            }
            // No exceptions needed: every tracepoint code is ours, and we
            // add none the 6.18 tracepoint lacks.
            let ours: BTreeMap<u64, &str> = ours.iter().copied().collect();
            assert_eq!(ours, theirs, "{isa:?}");
        }
    }
}
