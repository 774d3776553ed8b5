//! The Intel MultiProcessor Specification 1.4 table.
//!
//! Linux reads it only when it does not use ACPI (e.g. `acpi=off`). It finds the
//! floating pointer by scanning the last KiB of base memory, where
//! [`layout::MPTABLE_START`] puts it; the configuration table follows directly.

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout;

/// Errors from [`setup_mptable`].
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// The VM has no vCPUs.
    #[error("the MP table needs at least one vCPU")]
    NoVcpus,
    /// The table for this many vCPUs does not fit below [`layout::LOW_MEM_END`].
    #[error("the MP table cannot describe {requested} vCPUs (at most {max})")]
    TooManyVcpus {
        /// vCPUs asked for.
        requested: u8,
        /// Most vCPUs the table area holds.
        max: u8,
    },
    /// Writing the table into guest memory failed.
    #[error("cannot write the MP table to guest memory")]
    GuestMemory(#[source] GuestMemoryError),
}

/// `_MP_` floating pointer structure (MP spec 4.1).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpFloatingPointer {
    signature: [u8; 4],
    config_table: u32,
    length_paragraphs: u8,
    spec_rev: u8,
    checksum: u8,
    features: [u8; 5],
}

/// `PCMP` configuration table header (MP spec 4.2).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpConfigHeader {
    signature: [u8; 4],
    base_length: u16,
    spec_rev: u8,
    checksum: u8,
    oem_id: [u8; 8],
    product_id: [u8; 12],
    oem_table: u32,
    oem_table_size: u16,
    entry_count: u16,
    lapic_address: u32,
    ext_length: u16,
    ext_checksum: u8,
    reserved: u8,
}

/// Processor entry (type 0, 20 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpProcessor {
    entry_type: u8,
    apic_id: u8,
    apic_version: u8,
    cpu_flags: u8,
    cpu_signature: u32,
    feature_flags: u32,
    reserved: [u32; 2],
}

/// Bus entry (type 1, 8 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpBus {
    entry_type: u8,
    bus_id: u8,
    bus_type: [u8; 6],
}

/// I/O APIC entry (type 2, 8 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpIoApic {
    entry_type: u8,
    apic_id: u8,
    apic_version: u8,
    flags: u8,
    address: u32,
}

/// I/O (type 3) or local (type 4) interrupt assignment entry (8 bytes each).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpInterrupt {
    entry_type: u8,
    irq_type: u8,
    irq_flags: u16,
    source_bus: u8,
    source_irq: u8,
    dest_apic_id: u8,
    dest_pin: u8,
}

// SAFETY: each type is repr(C, packed), made only of integers and integer arrays,
// so it has no padding and every bit pattern is a valid value.
unsafe impl ByteValued for MpFloatingPointer {}
// SAFETY: as above: packed plain integers, no padding, any bit pattern is valid.
unsafe impl ByteValued for MpConfigHeader {}
// SAFETY: as above: packed plain integers, no padding, any bit pattern is valid.
unsafe impl ByteValued for MpProcessor {}
// SAFETY: as above: packed plain integers, no padding, any bit pattern is valid.
unsafe impl ByteValued for MpBus {}
// SAFETY: as above: packed plain integers, no padding, any bit pattern is valid.
unsafe impl ByteValued for MpIoApic {}
// SAFETY: as above: packed plain integers, no padding, any bit pattern is valid.
unsafe impl ByteValued for MpInterrupt {}

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const SPEC_REV_1_4: u8 = 4;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOT_PROCESSOR: u8 = 1 << 1;
/// CPU family 6, model 0, stepping 0.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX bits: FPU (0) and APIC (9) present.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
const IOAPIC_USABLE: u8 = 1;
const IRQ_TYPE_INT: u8 = 0;
const IRQ_TYPE_NMI: u8 = 1;
const IRQ_TYPE_EXTINT: u8 = 3;
/// Destination "all local APICs" in a local interrupt entry.
const ALL_LAPICS: u8 = 0xff;
const ISA_BUS_ID: u8 = 0;
const NUM_ISA_IRQS: u8 = 16;

const FIXED_SIZE: usize = size_of::<MpFloatingPointer>()
    + size_of::<MpConfigHeader>()
    + size_of::<MpBus>()
    + size_of::<MpIoApic>()
    + (NUM_ISA_IRQS as usize + 2) * size_of::<MpInterrupt>();
const AREA_SIZE: usize = (layout::LOW_MEM_END - layout::MPTABLE_START) as usize;
const MAX_BY_SPACE: usize = (AREA_SIZE - FIXED_SIZE) / size_of::<MpProcessor>();

/// Most vCPUs the MP table can describe: limited by the space below
/// [`layout::LOW_MEM_END`] and by 8-bit APIC ids (the I/O APIC takes id
/// `num_vcpus + 1`, which must stay below the broadcast id 0xff).
pub const MAX_VCPUS: u8 = if MAX_BY_SPACE < 253 {
    MAX_BY_SPACE as u8
} else {
    253
};

/// Two's-complement byte sum: the value that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_sub(*b))
}

/// Writes an MP floating pointer + configuration table (MP spec 1.4) at
/// [`layout::MPTABLE_START`] (it must fit below [`layout::LOW_MEM_END`]).
///
/// Entries: one enabled processor per vCPU (APIC id = index, BSP flag on 0), an ISA
/// bus, one I/O APIC (id `num_vcpus + 1`, at [`layout::IOAPIC_START`]), ISA IRQs 0-15
/// routed to the same-numbered I/O APIC pins, and LINT0 = ExtINT, LINT1 = NMI on
/// every local APIC.
pub fn setup_mptable(mem: &GuestMemoryMmap, num_vcpus: u8) -> Result<(), MptableError> {
    if num_vcpus == 0 {
        return Err(MptableError::NoVcpus);
    }
    if num_vcpus > MAX_VCPUS {
        return Err(MptableError::TooManyVcpus {
            requested: num_vcpus,
            max: MAX_VCPUS,
        });
    }
    let ioapic_id = num_vcpus + 1;

    let mut entries = Vec::with_capacity(AREA_SIZE);
    let mut entry_count: u16 = 0;
    let mut push = |bytes: &[u8]| {
        entries.extend_from_slice(bytes);
        entry_count += 1;
    };
    for id in 0..num_vcpus {
        let boot = if id == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        let cpu = MpProcessor {
            entry_type: ENTRY_PROCESSOR,
            apic_id: id,
            apic_version: LAPIC_VERSION,
            cpu_flags: CPU_ENABLED | boot,
            cpu_signature: CPU_SIGNATURE,
            feature_flags: CPU_FEATURES,
            reserved: [0; 2],
        };
        push(cpu.as_slice());
    }
    let bus = MpBus {
        entry_type: ENTRY_BUS,
        bus_id: ISA_BUS_ID,
        bus_type: *b"ISA   ",
    };
    push(bus.as_slice());
    let ioapic = MpIoApic {
        entry_type: ENTRY_IOAPIC,
        apic_id: ioapic_id,
        apic_version: IOAPIC_VERSION,
        flags: IOAPIC_USABLE,
        address: layout::IOAPIC_START as u32,
    };
    push(ioapic.as_slice());
    for irq in 0..NUM_ISA_IRQS {
        let int = MpInterrupt {
            entry_type: ENTRY_IO_INTERRUPT,
            irq_type: IRQ_TYPE_INT,
            irq_flags: 0, // polarity and trigger conform to the ISA bus
            source_bus: ISA_BUS_ID,
            source_irq: irq,
            dest_apic_id: ioapic_id,
            dest_pin: irq,
        };
        push(int.as_slice());
    }
    for (pin, irq_type) in [(0, IRQ_TYPE_EXTINT), (1, IRQ_TYPE_NMI)] {
        let lint = MpInterrupt {
            entry_type: ENTRY_LOCAL_INTERRUPT,
            irq_type,
            irq_flags: 0,
            source_bus: ISA_BUS_ID,
            source_irq: 0,
            dest_apic_id: ALL_LAPICS,
            dest_pin: pin,
        };
        push(lint.as_slice());
    }

    let fp_addr = layout::MPTABLE_START;
    let table_addr = fp_addr + size_of::<MpFloatingPointer>() as u64;
    // Bounded by MAX_VCPUS: the whole table is less than 1 KiB.
    let base_length = (size_of::<MpConfigHeader>() + entries.len()) as u16;
    let mut header = MpConfigHeader {
        signature: *b"PCMP",
        base_length,
        spec_rev: SPEC_REV_1_4,
        oem_id: *b"SUBZERO ",
        product_id: *b"SUBZERO-VMM ",
        entry_count,
        lapic_address: layout::APIC_START as u32,
        ..Default::default()
    };
    header.checksum = checksum(header.as_slice()).wrapping_add(checksum(&entries));

    let mut fp = MpFloatingPointer {
        signature: *b"_MP_",
        config_table: table_addr as u32,
        length_paragraphs: 1,
        spec_rev: SPEC_REV_1_4,
        ..Default::default()
    };
    fp.checksum = checksum(fp.as_slice());

    let end = table_addr + u64::from(base_length);
    if end > layout::LOW_MEM_END {
        return Err(MptableError::TooManyVcpus {
            requested: num_vcpus,
            max: MAX_VCPUS,
        });
    }
    let write = |bytes: &[u8], addr: u64| {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(MptableError::GuestMemory)
    };
    write(fp.as_slice(), fp_addr)?;
    write(header.as_slice(), table_addr)?;
    write(&entries, table_addr + size_of::<MpConfigHeader>() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest_mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    /// Reads the floating pointer and the whole base configuration table.
    fn read_tables(mem: &GuestMemoryMmap) -> (MpFloatingPointer, Vec<u8>) {
        let fp: MpFloatingPointer = mem.read_obj(GuestAddress(layout::MPTABLE_START)).unwrap();
        let addr = GuestAddress(u64::from(fp.config_table));
        let header: MpConfigHeader = mem.read_obj(addr).unwrap();
        let mut table = vec![0u8; usize::from(header.base_length)];
        mem.read_slice(&mut table, addr).unwrap();
        (fp, table)
    }

    #[test]
    fn floating_pointer_and_header_are_valid() {
        let mem = guest_mem();
        setup_mptable(&mem, 4).unwrap();
        let (fp, table) = read_tables(&mem);
        assert_eq!(&{ fp.signature }, b"_MP_");
        assert_eq!(
            (fp.length_paragraphs, fp.spec_rev, fp.features),
            (1, 4, [0; 5])
        );
        assert_eq!(sum(fp.as_slice()), 0);
        assert_eq!({ fp.config_table } as u64, layout::MPTABLE_START + 16);

        assert_eq!(&table[0..4], b"PCMP");
        assert_eq!(sum(&table), 0);
        let header = MpConfigHeader::from_slice(&table[..44]).unwrap();
        assert_eq!(header.spec_rev, 4);
        assert_eq!({ header.lapic_address } as u64, layout::APIC_START);
        // 4 CPUs + bus + IOAPIC + 16 IRQs + 2 LINTs.
        assert_eq!({ header.entry_count }, 4 + 1 + 1 + 16 + 2);
    }

    #[test]
    fn entries_describe_cpus_ioapic_and_irqs() {
        let mem = guest_mem();
        setup_mptable(&mem, 3).unwrap();
        let (_, table) = read_tables(&mem);
        // Split the entries: processors are 20 bytes, all others 8.
        let (mut entries, mut rest) = (vec![], &table[size_of::<MpConfigHeader>()..]);
        while !rest.is_empty() {
            let (entry, tail) = rest.split_at(if rest[0] == ENTRY_PROCESSOR { 20 } else { 8 });
            entries.push(entry);
            rest = tail;
        }
        let of = |t: u8| entries.iter().filter(move |e| e[0] == t);
        let cpus: Vec<_> = of(ENTRY_PROCESSOR)
            .map(|e| *MpProcessor::from_slice(e).unwrap())
            .collect();
        assert_eq!(cpus.len(), 3);
        for (i, cpu) in cpus.iter().enumerate() {
            assert_eq!(usize::from(cpu.apic_id), i);
            assert_ne!(cpu.cpu_flags & CPU_ENABLED, 0);
            assert_eq!(cpu.cpu_flags & CPU_BOOT_PROCESSOR != 0, i == 0);
        }
        let buses: Vec<_> = of(ENTRY_BUS).map(|e| &e[2..8]).collect();
        assert_eq!(buses, [b"ISA   "]);
        let ioapics: Vec<_> = of(ENTRY_IOAPIC)
            .map(|e| *MpIoApic::from_slice(e).unwrap())
            .collect();
        assert_eq!(ioapics.len(), 1);
        let ioapic = ioapics[0];
        assert_eq!({ ioapic.address } as u64, layout::IOAPIC_START);
        assert_eq!(ioapic.flags, IOAPIC_USABLE);
        assert!(cpus.iter().all(|c| c.apic_id != ioapic.apic_id));
        let irqs: Vec<_> = of(ENTRY_IO_INTERRUPT)
            .map(|e| *MpInterrupt::from_slice(e).unwrap())
            .map(|i| {
                (
                    i.irq_type,
                    i.source_bus,
                    i.source_irq,
                    i.dest_apic_id,
                    i.dest_pin,
                )
            })
            .collect();
        let want: Vec<_> = (0..16)
            .map(|i| (IRQ_TYPE_INT, 0, i, ioapic.apic_id, i))
            .collect();
        assert_eq!(irqs, want);
        let lints: Vec<_> = of(ENTRY_LOCAL_INTERRUPT).map(|e| (e[1], e[7])).collect();
        assert_eq!(lints, [(IRQ_TYPE_EXTINT, 0), (IRQ_TYPE_NMI, 1)]);
    }

    #[test]
    fn max_vcpus_fits() {
        let mem = guest_mem();
        setup_mptable(&mem, MAX_VCPUS).unwrap();
        let (_, table) = read_tables(&mem);
        assert_eq!(sum(&table), 0);
        assert!(layout::MPTABLE_START + 16 + table.len() as u64 <= layout::LOW_MEM_END);
    }

    #[test]
    fn bad_vcpu_counts_and_memory_are_errors() {
        let mem = guest_mem();
        let too_many = setup_mptable(&mem, MAX_VCPUS + 1);
        assert!(matches!(
            too_many,
            Err(MptableError::TooManyVcpus { requested, max })
                if requested == MAX_VCPUS + 1 && max == MAX_VCPUS
        ));
        let res = setup_mptable(&mem, 255);
        assert!(matches!(res, Err(MptableError::TooManyVcpus { .. })));
        assert!(matches!(setup_mptable(&mem, 0), Err(MptableError::NoVcpus)));
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let res = setup_mptable(&small, 1);
        assert!(matches!(res, Err(MptableError::GuestMemory(_))));
    }
}
