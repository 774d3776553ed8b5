//! Guest RAM layout and the e820 memory map handed to the kernel.

use super::layout::{
    EBDA_START, HIMEM_START, LOW_MEM_END, MMIO_GAP_END, MMIO_GAP_START, PCI_ECAM_SIZE,
    PCI_ECAM_START, RSDP_START,
};

/// Usable RAM.
pub const E820_RAM: u32 = 1;
/// Reserved (firmware tables, BIOS areas).
pub const E820_RESERVED: u32 = 2;

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The guest-physical ranges backed by RAM for `mem_size` bytes of memory:
/// up to [`MMIO_GAP_START`] below 4 GiB, the rest from 4 GiB up.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

/// End of the RAM that lies below 4 GiB.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

/// The e820 map for a guest with `mem_size` bytes of RAM (at least
/// [`HIMEM_START`]): low memory, the EBDA (MP table) and BIOS area (ACPI) as
/// reserved, then RAM from 1 MiB, split around the MMIO gap, with PCI's ECAM
/// window reserved inside the gap (Linux checks that before it uses ECAM).
pub fn memory_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: LOW_MEM_END - EBDA_START,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: RSDP_START,
            size: HIMEM_START - RSDP_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, size) in ram_ranges(mem_size) {
        let (start, size) = if start == 0 {
            (HIMEM_START, size.saturating_sub(HIMEM_START))
        } else {
            (start, size)
        };
        if start == MMIO_GAP_END {
            map.push(ECAM);
        }
        if size > 0 {
            map.push(E820Entry {
                addr: start,
                size,
                kind: E820_RAM,
            });
        }
    }
    if !map.contains(&ECAM) {
        map.push(ECAM);
    }
    map
}

const ECAM: E820Entry = E820Entry {
    addr: PCI_ECAM_START,
    size: PCI_ECAM_SIZE,
    kind: E820_RESERVED,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn ram_total(map: &[E820Entry]) -> u64 {
        map.iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn small_guest_is_one_low_range() {
        let mib = 1 << 20;
        assert_eq!(ram_ranges(256 * mib), vec![(0, 256 * mib)]);
        let map = memory_map(256 * mib);
        let ram = map.iter().rfind(|e| e.kind == E820_RAM).unwrap();
        assert_eq!(ram.addr, HIMEM_START);
        assert_eq!(ram.size, 255 * mib);
        assert_eq!(map.last(), Some(&ECAM));
        // Everything below 1 MiB except the EBDA and BIOS hole is RAM.
        assert_eq!(ram_total(&map), 255 * mib + EBDA_START);
    }

    #[test]
    fn large_guest_skips_the_mmio_gap() {
        let gib = 1u64 << 30;
        let ranges = ram_ranges(8 * gib);
        assert_eq!(ranges, vec![(0, 3 * gib), (4 * gib, 5 * gib)]);
        let map = memory_map(8 * gib);
        assert!(map.iter().all(|e| {
            e.kind != E820_RAM || e.addr + e.size <= MMIO_GAP_START || e.addr >= MMIO_GAP_END
        }));
        assert_eq!(ram_total(&map), 8 * gib - HIMEM_START + EBDA_START);
    }

    #[test]
    fn entries_are_sorted_and_disjoint() {
        for size in [2u64 << 20, 3 << 30, (3 << 30) + 4096, 64 << 30] {
            let map = memory_map(size);
            for pair in map.windows(2) {
                assert!(
                    pair[0].addr + pair[0].size <= pair[1].addr,
                    "{size:#x}: {map:?}"
                );
            }
        }
    }
}
