//! What the VMM tells the kernel at entry: the Linux zero page
//! (`struct boot_params`) for the 64-bit boot protocol, or the PVH
//! `hvm_start_info` for a PVH entry.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::e820::E820Entry;
use super::layout::{PVH_INFO_START, PVH_MEMMAP_START, ZERO_PAGE_START};

/// `boot_flag` a bzImage header must carry.
const BOOT_FLAG: u16 = 0xaa55;
/// "HdrS".
const HDRS_MAGIC: u32 = 0x5372_6448;
/// Loader id "undefined" (we are not one of the registered boot loaders).
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Kernel alignment assumed for an ELF vmlinux, which has no setup header.
const ELF_KERNEL_ALIGNMENT: u32 = 0x0100_0000;
/// `XEN_HVM_START_MAGIC_VALUE`.
const PVH_MAGIC: u32 = 0x336e_c578;

/// Why the boot information could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BootInfoError {
    /// The memory map does not fit the structure.
    #[error("the e820 map has {0} entries; the boot protocol allows at most {1}")]
    TooManyE820Entries(usize, usize),
    /// Writing guest memory failed.
    #[error("writing the {0} into guest memory failed: {1}")]
    GuestMemory(&'static str, #[source] vm_memory::GuestMemoryError),
}

/// What the kernel needs to find at entry.
pub struct BootInfo<'a> {
    /// Guest address of the NUL-terminated command line.
    pub cmdline_addr: u64,
    /// Length of the command line without its NUL.
    pub cmdline_len: u32,
    /// Initrd (address, size), if any.
    pub initrd: Option<(u64, u64)>,
    /// Address of the ACPI RSDP.
    pub rsdp_addr: u64,
    /// The memory map.
    pub e820: &'a [E820Entry],
}

/// Writes the zero page for the 64-bit boot protocol and returns its address.
/// `header` is the bzImage setup header; `None` for an ELF vmlinux.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    header: Option<setup_header>,
    info: &BootInfo,
) -> Result<u64, BootInfoError> {
    let mut params = boot_params {
        hdr: header.unwrap_or(setup_header {
            boot_flag: BOOT_FLAG,
            header: HDRS_MAGIC,
            kernel_alignment: ELF_KERNEL_ALIGNMENT,
            ..Default::default()
        }),
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    // The fields are 32 bits; the layout keeps these below 4 GiB.
    params.hdr.cmd_line_ptr = info.cmdline_addr as u32;
    if let Some((addr, size)) = info.initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = info.rsdp_addr;
    let max = params.e820_table.len();
    if info.e820.len() > max {
        return Err(BootInfoError::TooManyE820Entries(info.e820.len(), max));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(info.e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = info.e820.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|e| BootInfoError::GuestMemory("zero page", e))?;
    Ok(ZERO_PAGE_START)
}

/// Writes `hvm_start_info`, its memory map and module list (the initrd) for
/// a PVH entry, and returns the address of `hvm_start_info`.
pub fn write_pvh_start_info(mem: &GuestMemoryMmap, info: &BootInfo) -> Result<u64, BootInfoError> {
    let entry_size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    let memmap_bytes = entry_size * info.e820.len() as u64;
    let modlist_addr = PVH_MEMMAP_START + memmap_bytes;
    // Everything must stay inside the page reserved for it.
    let limit = PVH_INFO_START + 0x1000 - std::mem::size_of::<hvm_modlist_entry>() as u64;
    if modlist_addr > limit {
        return Err(BootInfoError::TooManyE820Entries(
            info.e820.len(),
            ((limit - PVH_MEMMAP_START) / entry_size) as usize,
        ));
    }
    for (i, e) in info.e820.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        mem.write_obj(
            entry,
            GuestAddress(PVH_MEMMAP_START + i as u64 * entry_size),
        )
        .map_err(|e| BootInfoError::GuestMemory("PVH memory map", e))?;
    }
    let mut start = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: info.cmdline_addr,
        rsdp_paddr: info.rsdp_addr,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: info.e820.len() as u32,
        ..Default::default()
    };
    if let Some((addr, size)) = info.initrd {
        let module = hvm_modlist_entry {
            paddr: addr,
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(modlist_addr))
            .map_err(|e| BootInfoError::GuestMemory("PVH module list", e))?;
        start.nr_modules = 1;
        start.modlist_paddr = modlist_addr;
    }
    mem.write_obj(start, GuestAddress(PVH_INFO_START))
        .map_err(|e| BootInfoError::GuestMemory("PVH start info", e))?;
    Ok(PVH_INFO_START)
}

#[cfg(test)]
mod tests {
    use super::super::e820::memory_map;
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    fn info(e820: &[E820Entry]) -> BootInfo<'_> {
        BootInfo {
            cmdline_addr: 0x2_0000,
            cmdline_len: 12,
            initrd: Some((0x80_0000, 0x1234)),
            rsdp_addr: 0xe_0000,
            e820,
        }
    }

    #[test]
    fn zero_page_carries_what_the_kernel_reads() {
        let mem = mem();
        let map = memory_map(256 << 20);
        let header = setup_header {
            boot_flag: BOOT_FLAG,
            header: HDRS_MAGIC,
            version: 0x020f,
            cmdline_size: 2047,
            ..Default::default()
        };
        let at = write_boot_params(&mem, Some(header), &info(&map)).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(at)).unwrap();
        assert_eq!({ p.hdr.version }, 0x020f, "header copied from the image");
        assert_eq!(p.hdr.type_of_loader, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x2_0000);
        assert_eq!({ p.hdr.ramdisk_image }, 0x80_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe_0000);
        assert_eq!(p.e820_entries as usize, map.len());
        // RAM from 1 MiB, then PCI's ECAM window, reserved.
        let ram = p.e820_table[map.len() - 2];
        assert_eq!(
            ({ ram.addr }, { ram.size }, { ram.r#type }),
            (0x10_0000, 255 << 20, 1)
        );
        let ecam = p.e820_table[map.len() - 1];
        assert_eq!(({ ecam.addr }, { ecam.r#type }), (0xe000_0000, 2));
    }

    #[test]
    fn elf_zero_page_gets_a_synthetic_header() {
        let mem = mem();
        let map = memory_map(64 << 20);
        write_boot_params(&mem, None, &info(&map)).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.boot_flag }, BOOT_FLAG);
        assert_eq!({ p.hdr.header }, HDRS_MAGIC);
    }

    #[test]
    fn pvh_start_info_points_at_map_and_initrd() {
        let mem = mem();
        let map = memory_map(64 << 20);
        let at = write_pvh_start_info(&mem, &info(&map)).unwrap();
        let s: hvm_start_info = mem.read_obj(GuestAddress(at)).unwrap();
        assert_eq!(s.magic, PVH_MAGIC);
        assert_eq!(s.memmap_entries as usize, map.len());
        assert_eq!(s.nr_modules, 1);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(s.modlist_paddr)).unwrap();
        assert_eq!((m.paddr, m.size), (0x80_0000, 0x1234));
        let e: hvm_memmap_table_entry = mem.read_obj(GuestAddress(s.memmap_paddr)).unwrap();
        assert_eq!((e.addr, e.type_), (0, 1));
    }
}
