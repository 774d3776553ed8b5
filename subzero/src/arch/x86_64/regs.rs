//! Initial register state of the boot vCPU: general-purpose registers,
//! segments and control registers, FPU, and the local APIC's LINT pins.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::gdt::{
    boot_gdt, kvm_segment_from_gdt, BOOT_GDT_ENTRIES, CODE_INDEX, DATA_INDEX, TSS_INDEX,
};
use super::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER};
use super::paging::{setup_identity_paging, PagingError};

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// RFLAGS bit 1 is reserved and always set; interrupts are off.
const RFLAGS_RESERVED: u64 = 1 << 1;

// Local APIC registers (offsets into the APIC page) and LVT delivery modes.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

// The memory map must leave room for the whole GDT before the IDT.
const _: () = assert!(BOOT_GDT_START + BOOT_GDT_ENTRIES as u64 * 8 <= BOOT_IDT_START);

/// How the boot vCPU enters the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// Linux 64-bit boot protocol: long mode, paging on (identity map),
    /// RSI = boot_params, RIP = entry.
    Linux64 {
        /// The kernel's 64-bit entry point (load address + 0x200 for a bzImage).
        entry_addr: u64,
        /// Guest address of `struct boot_params` (the zero page).
        boot_params_addr: u64,
    },
    /// PVH: 32-bit protected mode, paging off, EBX = hvm_start_info address,
    /// RIP = entry.
    Pvh {
        /// The PVH entry point (from the `XEN_ELFNOTE_PHYS32_ENTRY` note).
        entry_addr: u64,
        /// Guest address of `struct hvm_start_info`.
        start_info_addr: u64,
    },
}

/// Errors from setting up the vCPU registers. Each KVM failure names its ioctl.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// `KVM_SET_REGS` failed.
    #[error("KVM_SET_REGS failed: {0}")]
    SetRegs(kvm_ioctls::Error),
    /// `KVM_GET_SREGS` failed.
    #[error("KVM_GET_SREGS failed: {0}")]
    GetSregs(kvm_ioctls::Error),
    /// `KVM_SET_SREGS` failed.
    #[error("KVM_SET_SREGS failed: {0}")]
    SetSregs(kvm_ioctls::Error),
    /// `KVM_SET_FPU` failed.
    #[error("KVM_SET_FPU failed: {0}")]
    SetFpu(kvm_ioctls::Error),
    /// `KVM_GET_LAPIC` failed (is the in-kernel irqchip created?).
    #[error("KVM_GET_LAPIC failed (in-kernel irqchip missing?): {0}")]
    GetLapic(kvm_ioctls::Error),
    /// `KVM_SET_LAPIC` failed.
    #[error("KVM_SET_LAPIC failed: {0}")]
    SetLapic(kvm_ioctls::Error),
    /// The GDT or IDT could not be written to guest memory.
    #[error("cannot write the boot GDT/IDT to guest memory: {0}")]
    WriteTables(GuestMemoryError),
    /// The identity page tables could not be written.
    #[error(transparent)]
    Paging(#[from] PagingError),
}

/// Sets the general-purpose registers: RIP = entry, RFLAGS = 0x2, RSP/RBP =
/// [`BOOT_STACK_POINTER`]; RSI = boot_params (Linux64) or EBX = start_info
/// (PVH, whose spec leaves the stack undefined; a valid one does no harm).
pub fn setup_regs(vcpu: &VcpuFd, entry: &BootEntry) -> Result<(), RegsError> {
    let (rip, rsi, rbx) = match *entry {
        BootEntry::Linux64 {
            entry_addr,
            boot_params_addr,
        } => (entry_addr, boot_params_addr, 0),
        BootEntry::Pvh {
            entry_addr,
            start_info_addr,
        } => (entry_addr, 0, start_info_addr),
    };
    let regs = kvm_regs {
        rip,
        rsi,
        rbx,
        rflags: RFLAGS_RESERVED,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(RegsError::SetRegs)
}

/// Writes the boot GDT and a zero IDT; returns the GDT written.
fn write_descriptor_tables(
    mem: &GuestMemoryMmap,
    long_mode: bool,
) -> Result<[u64; BOOT_GDT_ENTRIES], RegsError> {
    let gdt = boot_gdt(long_mode);
    let bytes: Vec<u8> = gdt.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(BOOT_GDT_START))
        .and_then(|()| mem.write_obj(0u64, GuestAddress(BOOT_IDT_START)))
        .map_err(RegsError::WriteTables)?;
    Ok(gdt)
}

/// Writes the GDT (null, TSS, code, data: see [`super::gdt`]) at
/// [`BOOT_GDT_START`] and a zero IDT at [`BOOT_IDT_START`], plus the identity
/// page tables for Linux64; then loads segments and control registers:
/// - Linux64: CS 64-bit code (0x10), DS/ES/FS/GS/SS data (0x18), CR0 PE|ET|PG,
///   CR3 = PML4, CR4 PAE, EFER LME|LMA.
/// - PVH: CS flat 32-bit code, the rest flat 32-bit data, TR a 32-bit TSS
///   (limit 0x67), CR0 PE (|ET, hard-wired), CR4 0, EFER 0, no paging.
///
/// Call it after [`super::cpuid::setup_cpuid`]: KVM rejects EFER.LME unless
/// the guest CPUID has long mode.
pub fn setup_sregs(
    mem: &GuestMemoryMmap,
    vcpu: &VcpuFd,
    entry: &BootEntry,
) -> Result<(), RegsError> {
    let long_mode = matches!(entry, BootEntry::Linux64 { .. });
    let gdt = write_descriptor_tables(mem, long_mode)?;
    let segment = |index: u8| kvm_segment_from_gdt(gdt[usize::from(index)], index);

    let mut sregs = vcpu.get_sregs().map_err(RegsError::GetSregs)?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = segment(CODE_INDEX);
    let data = segment(DATA_INDEX);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = segment(TSS_INDEX);

    (sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer) = if long_mode {
        let cr3 = setup_identity_paging(mem)?;
        (CR0_PE | CR0_ET | CR0_PG, cr3, CR4_PAE, EFER_LME | EFER_LMA)
    } else {
        (CR0_PE | CR0_ET, 0, 0, 0)
    };
    vcpu.set_sregs(&sregs).map_err(RegsError::SetSregs)
}

/// Sets the x87 control word to its reset value 0x37f (all exceptions
/// masked) and MXCSR to 0x1f80 (all SSE exceptions masked). KVM_SET_FPU
/// ignores the MXCSR field on current kernels; KVM's vCPU reset value is
/// already 0x1f80 (the test reads it back with KVM_GET_XSAVE).
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(RegsError::SetFpu)
}

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let byte = |i: usize| lapic.regs.get(offset + i).map_or(0, |&r| r as u8);
    u32::from_le_bytes([byte(0), byte(1), byte(2), byte(3)])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (r, b) in lapic.regs.iter_mut().skip(offset).zip(value.to_le_bytes()) {
        *r = b as _;
    }
}

/// Wires the local APIC's LINT0 to ExtINT (the 8259 PIC's output, as in
/// virtual-wire mode) and LINT1 to NMI. Needs the in-kernel irqchip.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(RegsError::GetLapic)?;
    for (offset, mode) in [
        (APIC_LVT_LINT0, APIC_MODE_EXTINT),
        (APIC_LVT_LINT1, APIC_MODE_NMI),
    ] {
        // Delivery mode is LVT bits 10:8.
        let lvt = lapic_reg(&lapic, offset) & !0x700;
        set_lapic_reg(&mut lapic, offset, lvt | (mode << 8));
    }
    vcpu.set_lapic(&lapic).map_err(RegsError::SetLapic)
}

#[cfg(test)]
mod tests {
    use super::super::{cpuid, layout, msr};
    use super::*;
    use crate::kvm::kvm_or_skip;
    use kvm_bindings::{kvm_msr_entry, Msrs, KVM_MAX_CPUID_ENTRIES};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn descriptor_tables_in_memory() {
        let m = mem();
        m.write_obj(0xffu64, GuestAddress(BOOT_IDT_START)).unwrap();
        let gdt = write_descriptor_tables(&m, true).unwrap();
        let read = |a: u64| m.read_obj::<u64>(GuestAddress(a)).unwrap();
        for (i, e) in (0u64..).zip(gdt) {
            assert_eq!(read(BOOT_GDT_START + i * 8), e);
        }
        assert_eq!(read(BOOT_GDT_START + 16), 0x00af_9b00_0000_ffff);
        assert_eq!(read(BOOT_IDT_START), 0);
    }

    #[test]
    fn lapic_register_bytes() {
        let mut lapic = kvm_lapic_state::default();
        set_lapic_reg(&mut lapic, APIC_LVT_LINT1, 0x0001_0700);
        assert_eq!(lapic_reg(&lapic, APIC_LVT_LINT1), 0x0001_0700);
        assert_eq!(
            (lapic.regs[0x361], lapic.regs[0x362], lapic.regs[0x35f]),
            (7, 1, 0)
        );
    }

    /// Sets up one vCPU per entry mode with every Subzero setup call, reads it back.
    #[test]
    fn boot_vcpu_state_on_kvm() {
        let Some(kvm) = kvm_or_skip() else { return };
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        let m = mem();
        let (entry_addr, boot_params_addr, start_info_addr) = (0x10_0200, 0x7000, 0x6000);
        let linux = BootEntry::Linux64 {
            entry_addr,
            boot_params_addr,
        };
        let pvh = BootEntry::Pvh {
            entry_addr,
            start_info_addr,
        };
        for (id, entry) in [(0u8, linux), (1, pvh)] {
            let vcpu = vm.create_vcpu(u64::from(id)).unwrap();
            let topo = cpuid::VcpuTopology {
                vcpu_index: id,
                num_vcpus: 2,
            };
            cpuid::setup_cpuid(&vcpu, &supported, topo).unwrap();
            msr::setup_msrs(&vcpu).unwrap();
            setup_sregs(&m, &vcpu, &entry).unwrap();
            setup_regs(&vcpu, &entry).unwrap();
            setup_fpu(&vcpu).unwrap();
            setup_lapic(&vcpu).unwrap();

            let cpuid2 = vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
            let l1 = cpuid2.as_slice().iter().find(|e| e.function == 1).unwrap();
            assert_eq!((l1.ebx >> 24, l1.ecx >> 31), (u32::from(id), 1));
            let mtrr = kvm_msr_entry {
                index: msr::index::IA32_MTRR_DEF_TYPE,
                ..Default::default()
            };
            let mut msrs = Msrs::from_entries(&[mtrr]).unwrap();
            assert_eq!(vcpu.get_msrs(&mut msrs).unwrap(), 1);
            assert_eq!(msrs.as_slice()[0].data, 0x806);

            let (s, r) = (vcpu.get_sregs().unwrap(), vcpu.get_regs().unwrap());
            let sel = [s.cs.selector, s.ds.selector, s.ss.selector, s.tr.selector];
            assert_eq!(sel, [0x10, 0x18, 0x18, 0x08]);
            let tables = [s.gdt.base, u64::from(s.gdt.limit), s.idt.base];
            assert_eq!(tables, [BOOT_GDT_START, 31, BOOT_IDT_START]);
            let long = [s.efer & (EFER_LME | EFER_LMA), s.cr0 & CR0_PG, s.cr4, s.cr3];
            let cs = [s.cs.l, s.cs.db, s.cs.present, s.tr.type_];
            let gp = [r.rip, r.rsi, r.rbx, r.rsp, r.rflags];
            assert_eq!(s.cr0 & CR0_PE, CR0_PE);
            if let BootEntry::Linux64 { .. } = entry {
                assert_eq!(
                    long,
                    [EFER_LME | EFER_LMA, CR0_PG, CR4_PAE, layout::PML4_START]
                );
                assert_eq!(cs, [1, 0, 1, 0xb]);
                assert_eq!(gp, [entry_addr, boot_params_addr, 0, BOOT_STACK_POINTER, 2]);
            } else {
                assert_eq!(long, [0, 0, 0, 0]);
                assert_eq!(cs, [0, 1, 1, 0xb]);
                assert_eq!(
                    (s.cs.limit, s.ds.limit, s.tr.limit),
                    (0xffff_ffff, 0xffff_ffff, 0x67)
                );
                assert_eq!(gp, [entry_addr, 0, start_info_addr, BOOT_STACK_POINTER, 2]);
            }
            let mxcsr = vcpu.get_xsave().unwrap().region[6];
            assert_eq!((vcpu.get_fpu().unwrap().fcw, mxcsr), (0x37f, 0x1f80));
            let lapic = vcpu.get_lapic().unwrap();
            let lint = [APIC_LVT_LINT0, APIC_LVT_LINT1].map(|o| (lapic_reg(&lapic, o) >> 8) & 7);
            assert_eq!(lint, [APIC_MODE_EXTINT, APIC_MODE_NMI]);
        }
    }
}
