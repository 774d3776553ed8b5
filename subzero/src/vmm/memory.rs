//! Guest RAM: allocation and registration with KVM.

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

/// Allocates `size` bytes of guest RAM laid out around the MMIO gap.
pub fn create(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let alloc_err = |reason: String| MemoryError::Allocate {
        mib: size >> 20,
        reason,
    };
    let ranges = ram_ranges(size)
        .into_iter()
        .map(|(start, len)| {
            usize::try_from(len)
                .map(|len| (GuestAddress(start), len))
                .map_err(|_| alloc_err("size does not fit this host's address space".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| alloc_err(e.to_string()))
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
