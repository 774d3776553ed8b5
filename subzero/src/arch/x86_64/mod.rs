//! x86_64 specifics: the guest memory map, the Linux boot protocol, firmware
//! tables (ACPI, MP table), CPUID, MSRs and the initial register state.

pub mod acpi;
pub mod boot;
pub mod bootinfo;
pub mod cpuid;
pub mod e820;
pub mod gdt;
pub mod initramfs;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod regs;
pub mod reset_vector;
pub mod unpack;
pub mod vcpu_state;
pub mod vm_state;
