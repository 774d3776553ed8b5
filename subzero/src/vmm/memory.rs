//! Guest RAM: allocation and registration with KVM.

use std::sync::{Arc, Mutex, Weak};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::e820::ram_ranges;

/// Why guest memory could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap failed.
    #[error("cannot allocate {mib} MiB of guest memory: {reason}")]
    Allocate {
        /// Size asked for.
        mib: u64,
        /// Why.
        reason: String,
    },
    /// KVM refused a memory slot.
    #[error("KVM_SET_USER_MEMORY_REGION failed for slot {slot}: {source}")]
    Register {
        /// The slot.
        slot: u32,
        /// The KVM error.
        source: kvm_ioctls::Error,
    },
}

/// Transparent huge pages are this big: guest RAM is aligned to it.
const HUGE: usize = 2 << 20;

/// A mapping made here, unmapped once no guest memory uses it.
struct Owned {
    addr: usize,
    len: usize,
    users: Weak<vm_memory::GuestRegionMmap>,
}

/// Guest RAM mappings still in use. vm-memory does not unmap a region
/// built from a pointer, so each is unmapped here once its last user (every
/// clone of the guest memory) has dropped it: on the next allocation.
static MAPPINGS: Mutex<Vec<Owned>> = Mutex::new(Vec::new());

fn reap(mappings: &mut Vec<Owned>) {
    mappings.retain(|m| {
        if m.users.strong_count() > 0 {
            return true;
        }
        // SAFETY: the mapping was made by `huge_aligned` and nothing refers
        // to it any more: its only region has been dropped.
        unsafe { libc::munmap(m.addr as *mut libc::c_void, m.len) };
        false
    });
}

/// The size of the inaccessible page kept below each guest RAM mapping.
const GAP: usize = 4096;

/// An anonymous private mapping of `len` bytes starting on a 2 MiB
/// boundary, marked for transparent huge pages. With guest-physical and
/// host-virtual addresses congruent modulo 2 MiB, KVM can map each 2 MiB
/// of guest RAM with one nested page table entry: one fault where there
/// would be 512.
///
/// One inaccessible page is kept below it. Without it, the next mapping
/// the kernel places below guest RAM, usually a thread's 2 MiB stack, ends
/// on that 2 MiB boundary, and under THP "always" the stack's first touch
/// takes a whole huge page: 2 MiB of memory for a few KiB of stack (seen
/// in the lab's boot-bench, where L1 runs THP "always").
///
/// Returns the aligned start and the whole range kept, gap page included.
fn huge_aligned(len: usize) -> std::io::Result<(*mut u8, usize, usize)> {
    let total = len
        .checked_add(HUGE + GAP)
        .ok_or_else(|| std::io::Error::other("size overflows"))?;
    // SAFETY: a new anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let start = p as usize;
    let aligned = (start + GAP).next_multiple_of(HUGE);
    let keep = aligned - GAP;
    let (head, tail) = (keep - start, total - (keep - start) - GAP - len);
    // SAFETY: the trims and the gap page lie inside the mapping just made,
    // outside [aligned, aligned + len), which is kept for guest RAM.
    unsafe {
        if head > 0 {
            libc::munmap(p, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
        libc::mprotect(keep as *mut libc::c_void, GAP, libc::PROT_NONE);
        // Advice only: without THP (or with it off) this fails harmlessly.
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    Ok((aligned as *mut u8, keep, len + GAP))
}

/// Allocates `size` bytes of guest RAM laid out around the MMIO gap.
pub fn create(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let alloc_err = |reason: String| MemoryError::Allocate {
        mib: size >> 20,
        reason,
    };
    let mut mappings = MAPPINGS.lock().unwrap_or_else(|p| p.into_inner());
    reap(&mut mappings);
    let mut regions = Vec::new();
    for (start, len) in ram_ranges(size) {
        let len = usize::try_from(len)
            .map_err(|_| alloc_err("size does not fit this host's address space".into()))?;
        let (addr, kept, kept_len) = huge_aligned(len).map_err(|e| alloc_err(e.to_string()))?;
        let owned = Owned {
            addr: kept,
            len: kept_len,
            users: Weak::new(),
        };
        // SAFETY: `addr` is a live mapping of `len` bytes made above,
        // which MAPPINGS unmaps only once this region is gone.
        let mapping = unsafe {
            vm_memory::mmap::MmapRegionBuilder::new(len)
                .with_raw_mmap_pointer(addr)
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
        }
        .build();
        let region = mapping
            .ok()
            .and_then(|m| vm_memory::GuestRegionMmap::new(m, GuestAddress(start)))
            .map(Arc::new);
        let Some(region) = region else {
            mappings.push(owned);
            return Err(alloc_err(format!("region at {start:#x} is invalid")));
        };
        mappings.push(Owned {
            users: Arc::downgrade(&region),
            ..owned
        });
        regions.push(region);
    }
    GuestMemoryMmap::from_arc_regions(regions).map_err(|e| alloc_err(e.to_string()))
}

/// Registers every region of `mem` with the VM, one slot each.
pub fn register(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in (0u32..).zip(mem.iter()) {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| MemoryError::Allocate {
                mib: region.len() >> 20,
                reason: e.to_string(),
            })?;
        let desc = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mmap owned by `mem`, which the caller
        // keeps alive as long as the VM; guest and region sizes match.
        unsafe { vm.set_user_memory_region(desc) }
            .map_err(|source| MemoryError::Register { slot, source })?;
    }
    Ok(())
}

/// Maps guest RAM from a snapshot's memory file: each `(gpa, len)` region
/// in turn, privately (MAP_PRIVATE), so that pages load on first touch and
/// the guest's writes never reach the file.
pub fn from_file(
    regions: &[(u64, u64)],
    file: &std::fs::File,
) -> Result<GuestMemoryMmap, MemoryError> {
    let total: u64 = regions.iter().map(|r| r.1).sum();
    let alloc_err = |reason: String| MemoryError::Allocate {
        mib: total >> 20,
        reason,
    };
    let file = std::sync::Arc::new(
        file.try_clone()
            .map_err(|e| alloc_err(format!("cannot reuse the memory file: {e}")))?,
    );
    let mut offset = 0u64;
    let mut out = Vec::with_capacity(regions.len());
    for &(gpa, len) in regions {
        let size = usize::try_from(len)
            .map_err(|_| alloc_err("size does not fit this host's address space".into()))?;
        let mapping = vm_memory::mmap::MmapRegionBuilder::new(size)
            .with_file_offset(vm_memory::FileOffset::from_arc(file.clone(), offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| alloc_err(e.to_string()))?;
        let region = vm_memory::GuestRegionMmap::new(mapping, GuestAddress(gpa))
            .ok_or_else(|| alloc_err(format!("region at {gpa:#x} overflows")))?;
        out.push(region);
        offset += len;
    }
    GuestMemoryMmap::from_regions(out).map_err(|e| alloc_err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn guest_ram_starts_on_a_huge_page_and_is_unmapped_after_its_last_user() {
        let mem = create(64 << 20).unwrap();
        let region = mem.iter().next().unwrap();
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .unwrap() as usize;
        assert_eq!(host % HUGE, 0, "host address {host:#x}");
        mem.write_obj(0x1234_5678u32, GuestAddress(0x10_0000))
            .unwrap();
        let clone = mem.clone();
        drop(mem);
        assert_eq!(
            clone.read_obj::<u32>(GuestAddress(0x10_0000)).unwrap(),
            0x1234_5678
        );
        let live = |addr: usize| {
            MAPPINGS
                .lock()
                .unwrap()
                .iter()
                .any(|m| m.addr == addr && m.users.strong_count() > 0)
        };
        assert!(live(host - GAP), "kept while a clone uses it");
        drop(clone);
        // The next allocation unmaps it.
        let next = create(32 << 20).unwrap();
        assert!(!MAPPINGS
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.addr == host - GAP && m.users.strong_count() == 0));
        drop(next);
    }

    /// The line of /proc/self/maps whose range ends at `end`, if any.
    fn mapping_ending_at(end: usize) -> Option<String> {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines()
            .find(|l| {
                let range = l.split_whitespace().next().unwrap_or("");
                let hi = range.split('-').nth(1).unwrap_or("");
                usize::from_str_radix(hi, 16).ok() == Some(end)
            })
            .map(String::from)
    }

    #[test]
    fn an_inaccessible_page_sits_below_guest_ram_so_no_stack_ends_on_its_boundary() {
        let mem = create(64 << 20).unwrap();
        let host = mem
            .iter()
            .next()
            .unwrap()
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .unwrap() as usize;
        let below = mapping_ending_at(host).expect("a mapping just below guest RAM");
        let mut w = below.split_whitespace();
        let (range, perms) = (w.next().unwrap(), w.next().unwrap());
        let lo = usize::from_str_radix(range.split('-').next().unwrap(), 16).unwrap();
        // Nothing writable ends on guest RAM's 2 MiB boundary: the next
        // mapping below (a thread stack, say) ends a page lower.
        assert_eq!((host - lo, perms), (GAP, "---p"), "{below}");
        drop(mem);
    }
}
