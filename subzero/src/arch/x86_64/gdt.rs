//! Segment descriptors: building GDT entries and turning them into the
//! `kvm_segment` values KVM loads into the hidden part of the segment registers.
//!
//! The boot GDT has four entries. Linux's 64-bit boot protocol
//! (`Documentation/arch/x86/boot.rst`) requires `__BOOT_CS` = 0x10 and
//! `__BOOT_DS` = 0x18, so code and data sit at indices 2 and 3 and the TSS takes
//! index 1. PVH leaves the selector values unspecified, so it uses the same slots.

use kvm_bindings::kvm_segment;

/// Descriptor flags of a 64-bit code segment: present, DPL 0, execute/read,
/// accessed, L=1, G=1.
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Descriptor flags of a flat 32-bit code segment: present, DPL 0,
/// execute/read, accessed, D/B=1, G=1.
pub const CODE32_FLAGS: u16 = 0xc09b;
/// Descriptor flags of a flat data segment: present, DPL 0, read/write,
/// accessed, D/B=1, G=1.
pub const DATA_FLAGS: u16 = 0xc093;
/// Descriptor flags of a TSS: present, system descriptor, type 0xb (busy
/// 32-bit TSS, which is also the busy 64-bit TSS type), byte granular.
pub const TSS_FLAGS: u16 = 0x008b;
/// Limit of the boot TSS: the 104 bytes of a 32-bit TSS, as PVH asks for.
pub const TSS_LIMIT: u32 = 0x67;

/// GDT index of the TSS (selector 0x08).
pub const TSS_INDEX: u8 = 1;
/// GDT index of the code segment (selector 0x10, Linux's `__BOOT_CS`).
pub const CODE_INDEX: u8 = 2;
/// GDT index of the data segment (selector 0x18, Linux's `__BOOT_DS`).
pub const DATA_INDEX: u8 = 3;
/// Number of entries in the boot GDT.
pub const BOOT_GDT_ENTRIES: usize = 4;

/// Packs a segment descriptor. `flags` holds the access byte in bits 7:0 and
/// the G, D/B, L and AVL bits in bits 15:12 (bits 11:8 are ignored: they are
/// where the limit's top nibble goes). Only the low 20 bits of `limit` count.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags & 0xf0ff);
    ((base & 0xff00_0000) << 32)
        | (flags << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// Unpacks a descriptor found at `table_index` of the GDT into a `kvm_segment`
/// (selector = index * 8, RPL 0). The limit is returned in bytes: scaled by
/// 4 KiB when G is set, as the VMCS/VMCB segment-limit fields expect.
pub fn kvm_segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    let g = bit(55);
    let present = bit(47);
    kvm_segment {
        base: ((entry >> 32) & 0xff00_0000) | ((entry >> 16) & 0x00ff_ffff),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        s: bit(44),
        dpl: ((entry >> 45) & 0x3) as u8,
        present,
        avl: bit(52),
        l: bit(53),
        db: bit(54),
        g,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The boot GDT: null, TSS, code, data. The code segment is 64-bit for the
/// Linux 64-bit entry (`long_mode`) and flat 32-bit for PVH.
pub fn boot_gdt(long_mode: bool) -> [u64; BOOT_GDT_ENTRIES] {
    let code_flags = if long_mode {
        CODE64_FLAGS
    } else {
        CODE32_FLAGS
    };
    [
        0,
        gdt_entry(TSS_FLAGS, 0, TSS_LIMIT),
        gdt_entry(code_flags, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code64_round_trip() {
        let e = gdt_entry(CODE64_FLAGS, 0, 0xfffff);
        assert_eq!(e, 0x00af_9b00_0000_ffff);
        let s = kvm_segment_from_gdt(e, CODE_INDEX);
        assert_eq!(
            (s.selector, s.type_, s.present, s.s, s.dpl),
            (0x10, 0xb, 1, 1, 0)
        );
        assert_eq!((s.l, s.db, s.g, s.unusable), (1, 0, 1, 0));
        assert_eq!((s.base, s.limit), (0, 0xffff_ffff));
    }

    #[test]
    fn code32_data_and_tss() {
        let gdt = boot_gdt(false);
        assert_eq!(gdt[0], 0);
        let cs = kvm_segment_from_gdt(gdt[usize::from(CODE_INDEX)], CODE_INDEX);
        assert_eq!(
            (cs.type_, cs.l, cs.db, cs.limit, cs.base),
            (0xb, 0, 1, 0xffff_ffff, 0)
        );
        let ds = kvm_segment_from_gdt(gdt[usize::from(DATA_INDEX)], DATA_INDEX);
        assert_eq!((ds.selector, ds.type_, ds.db, ds.g), (0x18, 0x3, 1, 1));
        assert_eq!(ds.limit, 0xffff_ffff);
        let tr = kvm_segment_from_gdt(gdt[usize::from(TSS_INDEX)], TSS_INDEX);
        assert_eq!(
            (tr.selector, tr.type_, tr.s, tr.present, tr.g),
            (0x08, 0xb, 0, 1, 0)
        );
        assert_eq!((tr.base, tr.limit, tr.unusable), (0, 0x67, 0));
        assert_eq!(
            boot_gdt(true)[usize::from(CODE_INDEX)],
            0x00af_9b00_0000_ffff
        );
    }

    #[test]
    fn base_and_limit_bits_round_trip() {
        let e = gdt_entry(0x4093, 0x1234_5678, 0xa_bcde);
        let s = kvm_segment_from_gdt(e, 5);
        assert_eq!(
            (s.base, s.limit, s.selector, s.g, s.db),
            (0x1234_5678, 0xa_bcde, 40, 0, 1)
        );
        let null = kvm_segment_from_gdt(0, 0);
        assert_eq!((null.present, null.unusable), (0, 1));
    }
}
