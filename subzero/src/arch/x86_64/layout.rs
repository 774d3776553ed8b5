//! The guest physical memory map: where Subzero puts each boot structure.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries)             0x0000_0520  IDT (empty)
//! 0x0000_6000  PVH start_info + memmap     0x0000_7000  zero page (boot_params)
//! 0x0000_8ff0  boot stack top              0x0000_9000  PML4, PDPT, 4 PDs (identity 0-4 GiB)
//! 0x0002_0000  kernel command line         0x0009_fc00  MP table (start of EBDA)
//! 0x000e_0000  ACPI: RSDP, then XSDT, FADT, MADT, DSDT
//! 0x000f_fff0  reset vector: a stub that resets the VM through the i8042
//! 0x0010_0000  kernel (bzImage protected-mode part, or ELF segments)
//! ...          initrd, as high as the kernel allows
//! 0xc000_0000  MMIO gap up to 4 GiB; RAM resumes above:
//!              0xc000_0000 PCI 32-bit BAR window, 0xd000_0000 virtio-mmio slots,
//!              0xe000_0000 PCI ECAM (bus 0), 0xfec0_0000 IOAPIC, 0xfee0_0000 LAPIC
//! ```
//!
//! PCI's 64-bit BAR window starts at the first GiB boundary above RAM (and
//! above 4 GiB): see [`pci_mem64_window`].

/// Start of the GDT.
pub const BOOT_GDT_START: u64 = 0x500;
/// Start of the (empty) IDT.
pub const BOOT_IDT_START: u64 = 0x520;
/// The PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// The PVH memory map follows `hvm_start_info`.
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table; the PDPT and the page directories follow it.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of four page directories (2 MiB pages covering 0-4 GiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Largest command line Subzero accepts (the kernel may accept less; see its header).
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;
/// Extended BIOS data area: the MP table lives here, where the kernel scans for it.
pub const EBDA_START: u64 = 0x9_fc00;
/// The MP floating pointer and table.
pub const MPTABLE_START: u64 = EBDA_START;
/// End of usable low memory (start of the legacy VGA/BIOS hole).
pub const LOW_MEM_END: u64 = 0xa_0000;
/// The ACPI RSDP, inside the BIOS area the kernel scans (0xe0000-0xfffff).
pub const RSDP_START: u64 = 0xe_0000;
/// Where the rest of the ACPI tables go (RSDP first, then these).
pub const ACPI_TABLES_START: u64 = 0xe_0100;
/// End of the ACPI table area: the reset vector follows.
pub const ACPI_TABLES_END: u64 = RESET_VECTOR;
/// The x86 reset vector (F000:FFF0). Subzero puts a tiny reset stub here.
pub const RESET_VECTOR: u64 = 0xf_fff0;
/// Where the kernel is loaded: 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO hole; RAM above this goes above 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Window for Subzero's own MMIO devices (virtio-mmio and test devices).
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// Size of each device's MMIO slot.
pub const MMIO_DEVICE_SLOT_SIZE: u64 = 0x1000;
/// PCI's 32-bit memory window for BARs, up to the virtio-mmio slots.
pub const PCI_MEM32_START: u64 = MMIO_GAP_START;
/// End of PCI's 32-bit memory window.
pub const PCI_MEM32_END: u64 = MMIO_DEVICES_START;
/// PCI ECAM: configuration space of bus 0, 4 KiB per function.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// ECAM size for one bus.
pub const PCI_ECAM_SIZE: u64 = 1 << 20;
/// Size of PCI's 64-bit memory window.
pub const PCI_MEM64_SIZE: u64 = 32 << 30;

/// PCI's 64-bit memory window for a guest with `mem_size` bytes of RAM: from
/// the first GiB boundary at or above both 4 GiB and the end of RAM.
pub fn pci_mem64_window(mem_size: u64) -> std::ops::Range<u64> {
    let ram_end = if mem_size > MMIO_GAP_START {
        MMIO_GAP_END + (mem_size - MMIO_GAP_START)
    } else {
        MMIO_GAP_END
    };
    let start = ram_end.div_ceil(1 << 30) << 30;
    start..start + PCI_MEM64_SIZE
}

/// The IOAPIC's MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APIC's MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;

/// Address KVM uses for the TSS on Intel hosts (3 pages, must be in the MMIO gap).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Address KVM uses for the identity map page on Intel hosts (1 page, before the TSS).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// The IOAPIC has this many pins; GSIs 0..24.
pub const IOAPIC_NUM_PINS: u32 = 24;

/// I/O ports of the devices Subzero always creates.
pub mod ports {
    /// PCI configuration mechanism #1: address at 0xcf8, data at 0xcfc.
    pub const PCI_CONFIG: u16 = 0xcf8;
    /// Ports 0xcf8 to 0xcff.
    pub const PCI_CONFIG_LEN: u16 = 8;
    /// PCI's I/O window for I/O BARs.
    pub const PCI_IO_START: u16 = 0xc000;
    /// Size of PCI's I/O window (to the end of the port space).
    pub const PCI_IO_SIZE: u32 = 0x4000;
    /// COM1, the serial console (8 registers).
    pub const SERIAL_COM1: u16 = 0x3f8;
    /// IRQ of COM1.
    pub const SERIAL_COM1_IRQ: u32 = 4;
    /// The i8042 keyboard controller data port.
    pub const I8042_DATA: u16 = 0x60;
    /// The i8042 command/status port; writing 0xfe resets the machine.
    pub const I8042_COMMAND: u16 = 0x64;
    /// IRQ of the i8042's keyboard port.
    pub const I8042_IRQ: u32 = 1;
    /// ACPI power management block (hardware-reduced ACPI registers), 4 ports:
    /// +0 sleep control, +1 sleep status, +2 reset register.
    pub const ACPI_PM_BASE: u16 = 0x600;
    /// Length of the ACPI power management block.
    pub const ACPI_PM_LEN: u16 = 4;
    /// Sleep control register (FADT `SLEEP_CONTROL_REG`).
    pub const ACPI_SLEEP_CONTROL: u16 = ACPI_PM_BASE;
    /// Sleep status register (FADT `SLEEP_STATUS_REG`).
    pub const ACPI_SLEEP_STATUS: u16 = ACPI_PM_BASE + 1;
    /// Reset register (FADT `RESET_REG`); writing [`ACPI_RESET_VALUE`] resets.
    pub const ACPI_RESET: u16 = ACPI_PM_BASE + 2;
    /// The value the FADT tells the OS to write to [`ACPI_RESET`].
    pub const ACPI_RESET_VALUE: u8 = 0x01;
    /// The sleep type in `\_S5_` that means soft-off.
    pub const ACPI_S5_SLEEP_TYPE: u8 = 5;
}
