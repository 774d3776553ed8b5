//! The identity page tables the Linux 64-bit boot protocol needs: long mode
//! cannot run with paging off, so the first 4 GiB are mapped 1:1 with 2 MiB pages.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{PDE_START, PDPTE_START, PML4_START};

/// Page-table entry bits.
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
/// In a page-directory entry: maps a 2 MiB page instead of pointing to a page table.
const PAGE_SIZE: u64 = 1 << 7;

/// Entries per 4 KiB table.
const ENTRIES: usize = 512;
/// Page directories needed to cover 4 GiB with 2 MiB pages (1 GiB each).
const NUM_PDS: usize = 4;
/// Size of one table.
const TABLE_SIZE: u64 = 0x1000;

/// Errors from [`setup_identity_paging`].
#[derive(Debug, thiserror::Error)]
pub enum PagingError {
    /// A table could not be written to guest memory (not backed by RAM?).
    #[error("cannot write the {table} at {addr:#x} to guest memory: {error}")]
    Write {
        /// Which table: "PML4", "PDPT" or "page directories".
        table: &'static str,
        /// Guest physical address of the table.
        addr: u64,
        /// The guest-memory error.
        error: GuestMemoryError,
    },
}

/// Identity-maps 0..4 GiB with 2 MiB pages: PML4 at [`PML4_START`], PDPT at
/// [`PDPTE_START`], four page directories from [`PDE_START`]. Whole tables are
/// written, so unused entries are zero. Returns the CR3 value.
pub fn setup_identity_paging(mem: &GuestMemoryMmap) -> Result<u64, PagingError> {
    let mut pml4 = [0u64; ENTRIES];
    pml4[0] = PDPTE_START | PRESENT | WRITABLE;

    let mut pdpt = [0u64; ENTRIES];
    for (i, entry) in (0u64..).zip(pdpt.iter_mut().take(NUM_PDS)) {
        *entry = (PDE_START + i * TABLE_SIZE) | PRESENT | WRITABLE;
    }

    let pds: Vec<u64> = (0..(NUM_PDS * ENTRIES) as u64)
        .map(|j| (j << 21) | PRESENT | WRITABLE | PAGE_SIZE)
        .collect();

    write_table(mem, "PML4", PML4_START, &pml4)?;
    write_table(mem, "PDPT", PDPTE_START, &pdpt)?;
    write_table(mem, "page directories", PDE_START, &pds)?;
    Ok(PML4_START)
}

fn write_table(
    mem: &GuestMemoryMmap,
    table: &'static str,
    addr: u64,
    entries: &[u64],
) -> Result<(), PagingError> {
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(addr))
        .map_err(|error| PagingError::Write { table, addr, error })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(mem: &GuestMemoryMmap, addr: u64) -> u64 {
        mem.read_obj(GuestAddress(addr)).unwrap()
    }

    #[test]
    fn identity_map_entries() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        // Stale data must be overwritten.
        mem.write_obj(0xdead_beef_u64, GuestAddress(PML4_START + 8))
            .unwrap();
        let cr3 = setup_identity_paging(&mem).unwrap();
        assert_eq!(cr3, PML4_START);
        assert_eq!(read(&mem, PML4_START), PDPTE_START | 3);
        assert_eq!(read(&mem, PML4_START + 8), 0);
        for i in 0..4 {
            assert_eq!(
                read(&mem, PDPTE_START + i * 8),
                (PDE_START + i * 0x1000) | 3
            );
        }
        assert_eq!(read(&mem, PDPTE_START + 4 * 8), 0);
        for j in 0..2048u64 {
            assert_eq!(read(&mem, PDE_START + j * 8), (j << 21) | 0x83);
        }
        // Last entry maps the 2 MiB page just below 4 GiB.
        assert_eq!(read(&mem, PDE_START + 2047 * 8), 0xffe0_0083);
    }

    #[test]
    fn missing_memory_is_an_error() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x9000)]).unwrap();
        let err = setup_identity_paging(&mem).unwrap_err();
        assert!(err.to_string().contains("PML4 at 0x9000"), "{err}");
    }
}
