//! The real backend: `vfio-ioctls` for the container, group and device, KVM
//! memory slots for the mmapped BAR areas, and KVM routes with irqfds for the
//! MSI-X vectors.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO, kvm_userspace_memory_region,
};
use kvm_ioctls::VmFd;
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioError, VfioOps, VfioRegionInfoCap};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{BarMapper, MsiVectors, MsixVectorsRef, RegionInfo, VfioBackend};
use super::device::{PassthroughError, VfioPciDevice};
use super::sysfs::{self, HostCheckError, HostDevice};
use crate::kvm::irq_routes::GsiRoutes;
use crate::pci::msix::MsiMessage;
use crate::pci::BarAllocator;

/// VFIO region flag: the region may be mmapped.
const REGION_MMAP: u32 = 1 << 2;
/// VFIO's interrupt index of MSI.
const MSI_IRQ_INDEX: u32 = 1;
/// VFIO's interrupt index of MSI-X.
const MSIX_IRQ_INDEX: u32 = 2;
/// KVM memory slots for BAR areas start here; guest RAM takes the ones below.
const FIRST_BAR_SLOT: u32 = 32;

/// Why a passthrough device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A host-side problem the user can fix.
    #[error(transparent)]
    Host(#[from] HostCheckError),
    /// A VFIO call failed.
    #[error("--device {bdf}: {what}: {source}")]
    Vfio {
        /// The device.
        bdf: String,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: VfioError,
    },
    /// A KVM call failed.
    #[error("--device {bdf}: {what}: {source}")]
    Kvm {
        /// The device.
        bdf: String,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The device does not fit on the bus.
    #[error(transparent)]
    Device(#[from] PassthroughError),
    /// The bus has no free slot.
    #[error("--device {bdf}: {source}")]
    BusFull {
        /// The device.
        bdf: String,
        /// The bus's error.
        #[source]
        source: crate::pci::root::BusFull,
    },
}

/// What every passthrough device of one VM shares: the KVM VM, the VFIO
/// container with guest RAM DMA-mapped, the routing table, the slot numbers.
pub struct PassthroughContext {
    vm: Arc<VmFd>,
    container: Arc<VfioContainer>,
    routes: Arc<Mutex<GsiRoutes>>,
    next_slot: Arc<AtomicU32>,
    /// Guest RAM is DMA-mapped once, when the first group joins.
    mapped: AtomicBool,
}

impl PassthroughContext {
    /// Opens the VFIO container for `vm`, with KVM's VFIO device so that KVM
    /// knows about the DMA. `first` names the device it is for, in errors.
    pub fn new(
        vm: Arc<VmFd>,
        routes: Arc<Mutex<GsiRoutes>>,
        first: &str,
    ) -> Result<Self, OpenError> {
        let bdf = first.to_string();
        let mut desc = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        let kvm_dev = vm
            .create_device(&mut desc)
            .map_err(|source| OpenError::Kvm {
                bdf: bdf.clone(),
                what: "creating KVM's VFIO device",
                source,
            })?;
        let handle = Arc::new(VfioDeviceFd::new_from_kvm(kvm_dev));
        let container = VfioContainer::new(Some(handle)).map_err(|source| OpenError::Vfio {
            bdf: bdf.clone(),
            what: "opening /dev/vfio/vfio",
            source,
        })?;
        Ok(PassthroughContext {
            vm,
            container: Arc::new(container),
            routes,
            next_slot: Arc::new(AtomicU32::new(FIRST_BAR_SLOT)),
            mapped: AtomicBool::new(false),
        })
    }

    /// Opens `host` (a device [`sysfs::check`] passed) and puts guest RAM in
    /// its IOMMU domain.
    pub fn open(
        &self,
        host: &HostDevice,
        mem: &GuestMemoryMmap,
        allocator: &mut BarAllocator,
    ) -> Result<VfioPciDevice, OpenError> {
        let bdf = host.bdf.clone();
        let vfio_err = |what| {
            let bdf = bdf.clone();
            move |source| OpenError::Vfio { bdf, what, source }
        };
        let ops: Arc<dyn VfioOps> = self.container.clone();
        let device =
            VfioDevice::new(&host.sysfs, ops, false).map_err(vfio_err("opening the device"))?;
        // VFIO sets the IOMMU type when the first group joins; map then.
        let regions = if self.mapped.swap(true, Ordering::Relaxed) {
            Vec::new()
        } else {
            mem.iter().collect()
        };
        for region in regions {
            let host_addr = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| vfio_err("finding guest RAM")(VfioError::GetHostAddress))?;
            // SAFETY: the region is guest RAM, which the guest and its
            // devices share by design and which outlives the container (the
            // machine drops devices before memory); Subzero never holds a
            // Rust reference into it, only volatile accessors.
            unsafe {
                self.container
                    .vfio_dma_map(region.start_addr().0, region.len() as usize, host_addr)
            }
            .map_err(vfio_err("DMA-mapping guest RAM"))?;
        }
        let device = Arc::new(device);
        let vectors = KvmMsiVectors::new(
            self.vm.clone(),
            self.routes.clone(),
            device.get_irq_info(MSIX_IRQ_INDEX).map_or(0, |i| i.count),
        )
        .map_err(|e| OpenError::Kvm {
            bdf: bdf.clone(),
            what: "setting up MSI-X vectors",
            source: e,
        })?;
        let msi_count = device.get_irq_info(MSI_IRQ_INDEX).map_or(0, |i| i.count);
        let msi_vectors = match msi_count {
            0 => None,
            n => Some(Box::new(
                KvmMsiVectors::new(self.vm.clone(), self.routes.clone(), n.min(32)).map_err(
                    |e| OpenError::Kvm {
                        bdf: bdf.clone(),
                        what: "setting up MSI vectors",
                        source: e,
                    },
                )?,
            ) as Box<dyn MsiVectors>),
        };
        let backend = HostVfio {
            device: device.clone(),
            bdf: bdf.clone(),
            interrupts: std::fs::File::open("/proc/interrupts").ok(),
        };
        let mapper = KvmBarMapper {
            vm: self.vm.clone(),
            device,
            next_slot: self.next_slot.clone(),
            areas: Vec::new(),
        };
        let name = format!("vfio-{bdf}");
        Ok(VfioPciDevice::new(
            &name,
            Box::new(backend),
            Box::new(mapper),
            Box::new(vectors),
            msi_vectors,
            allocator,
        )?)
    }
}

/// A VFIO device of the host.
struct HostVfio {
    device: Arc<VfioDevice>,
    bdf: String,
    /// `/proc/interrupts`, opened here on the main thread: the vCPU
    /// threads that read it (when the guest turns MSI-X off) may not open
    /// files, only pread.
    interrupts: Option<std::fs::File>,
}

impl VfioBackend for HostVfio {
    fn region(&self, index: u32) -> Option<RegionInfo> {
        let size = self.device.get_region_size(index);
        if size == 0 {
            return None;
        }
        let mmap = self.device.get_region_flags(index) & REGION_MMAP != 0;
        let sparse = self
            .device
            .get_region_caps(index)
            .into_iter()
            .find_map(|c| match c {
                VfioRegionInfoCap::SparseMmap(s) => {
                    Some(s.areas.iter().map(|a| (a.offset, a.size)).collect())
                }
                _ => None,
            });
        Some(RegionInfo { size, mmap, sparse })
    }

    fn read(&self, index: u32, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        self.device.region_read(index, data, offset);
    }

    fn write(&self, index: u32, offset: u64, data: &[u8]) {
        self.device.region_write(index, data, offset);
    }

    fn enable_msix(&self, vectors: &MsixVectorsRef<'_>) -> Result<(), String> {
        self.device
            .enable_msix(vectors.0.clone())
            .map_err(|e| e.to_string())
    }

    fn disable_msix(&self) {
        if let Err(e) = self.device.disable_msix() {
            log::warn!("{}: disabling MSI-X: {e}", self.bdf);
        }
    }

    fn enable_msi(&self, vectors: &MsixVectorsRef<'_>) -> Result<(), String> {
        self.device
            .enable_msi(vectors.0.clone())
            .map_err(|e| e.to_string())
    }

    fn disable_msi(&self) {
        if let Err(e) = self.device.disable_msi() {
            log::warn!("{}: disabling MSI: {e}", self.bdf);
        }
    }

    fn reset(&self) {
        self.device.reset();
    }

    fn host_interrupts(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let file = self.interrupts.as_ref()?;
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match file.read_at(&mut buf, text.len() as u64) {
                Ok(0) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
                Err(_) => return None,
            }
        }
        Some(sysfs::host_interrupts(
            &String::from_utf8_lossy(&text),
            &self.bdf,
        ))
    }
}

struct Area {
    host: *mut libc::c_void,
    len: u64,
    slot: u32,
    gpa: Option<u64>,
}

// SAFETY: `host` is an mmap of the device that only KVM (through the memory
// slot) and munmap in Drop touch; moving it between threads is fine.
unsafe impl Send for Area {}

/// BAR areas as KVM memory slots.
struct KvmBarMapper {
    vm: Arc<VmFd>,
    device: Arc<VfioDevice>,
    next_slot: Arc<AtomicU32>,
    areas: Vec<Area>,
}

impl KvmBarMapper {
    fn set_slot(&self, a: &Area, gpa: u64, size: u64) -> Result<(), kvm_ioctls::Error> {
        let region = kvm_userspace_memory_region {
            slot: a.slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: a.host as u64,
        };
        // SAFETY: `host` is a live mapping of `len` bytes owned by this
        // mapper, which removes the slot before it unmaps it.
        unsafe { self.vm.set_user_memory_region(region) }
    }
}

impl BarMapper for KvmBarMapper {
    fn prepare(&mut self, index: u32, offset: u64, len: u64) -> Result<usize, String> {
        let file_offset = self.device.get_region_offset(index) + offset;
        // SAFETY: a fresh shared mapping of the device fd; nothing else
        // aliases it, and Drop unmaps it.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.device.as_raw_fd(),
                file_offset as libc::off_t,
            )
        };
        if host == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        self.areas.push(Area {
            host,
            len,
            slot,
            gpa: None,
        });
        Ok(self.areas.len() - 1)
    }

    fn place(&mut self, area: usize, gpa: Option<u64>) -> Result<(), String> {
        let a = self.areas.get(area).ok_or("no such area")?;
        if a.gpa.is_some() {
            self.set_slot(a, 0, 0)
                .map_err(|e| format!("removing KVM slot {}: {e}", a.slot))?;
        }
        if let Some(gpa) = gpa {
            self.set_slot(a, gpa, a.len)
                .map_err(|e| format!("KVM slot {} at {gpa:#x}: {e}", a.slot))?;
        }
        self.areas[area].gpa = gpa;
        Ok(())
    }
}

impl Drop for KvmBarMapper {
    fn drop(&mut self) {
        for a in &self.areas {
            if a.gpa.is_some() {
                let _ = self.set_slot(a, 0, 0);
            }
            // SAFETY: the mapping came from mmap in `prepare`, and its slot
            // is gone.
            unsafe { libc::munmap(a.host, a.len as usize) };
        }
    }
}

/// One GSI, eventfd and irqfd per vector.
struct KvmMsiVectors {
    vm: Arc<VmFd>,
    routes: Arc<Mutex<GsiRoutes>>,
    vectors: Vec<(u32, EventFd, bool)>,
}

impl KvmMsiVectors {
    fn new(
        vm: Arc<VmFd>,
        routes: Arc<Mutex<GsiRoutes>>,
        count: u32,
    ) -> Result<Self, kvm_ioctls::Error> {
        let mut vectors = Vec::new();
        for _ in 0..count.min(2048) {
            let gsi = routes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .allocate()
                .map_err(|_| kvm_ioctls::Error::new(libc::ENOSPC))?;
            let evt = EventFd::new(EFD_NONBLOCK)
                .map_err(|e| kvm_ioctls::Error::new(e.raw_os_error().unwrap_or(libc::EIO)))?;
            vectors.push((gsi, evt, false));
        }
        Ok(KvmMsiVectors {
            vm,
            routes,
            vectors,
        })
    }
}

impl MsiVectors for KvmMsiVectors {
    fn len(&self) -> usize {
        self.vectors.len()
    }

    fn eventfds(&self) -> MsixVectorsRef<'_> {
        MsixVectorsRef(self.vectors.iter().map(|v| &v.1).collect())
    }

    fn set(&mut self, index: usize, message: Option<MsiMessage>) {
        let Some((gsi, evt, registered)) = self.vectors.get_mut(index) else {
            return;
        };
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let result = match message {
            Some(m) => routes
                .set_msi(*gsi, Some((m.address, m.data)))
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    if !*registered {
                        self.vm
                            .register_irqfd(evt, *gsi)
                            .map_err(|e| format!("KVM_IRQFD: {e}"))?;
                        *registered = true;
                    }
                    Ok(())
                }),
            None => {
                if *registered {
                    let _ = self.vm.unregister_irqfd(evt, *gsi);
                    *registered = false;
                }
                routes.set_msi(*gsi, None).map_err(|e| e.to_string())
            }
        };
        if let Err(e) = result {
            log::warn!("MSI-X vector {index} (GSI {gsi}): {e}");
        }
    }
}
