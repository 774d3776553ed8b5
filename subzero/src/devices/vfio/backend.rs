//! The three things a passthrough device drives, behind traits: the VFIO
//! device (regions and interrupts), the guest mappings of its BARs (KVM
//! memory slots), and its MSI-X vectors (KVM routes and irqfds).

use crate::pci::msix::MsiMessage;

/// VFIO's region index of the configuration space.
pub const CONFIG_REGION: u32 = 7;

/// One VFIO region as the host reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionInfo {
    /// Bytes.
    pub size: u64,
    /// Whether it may be mmapped.
    pub mmap: bool,
    /// The parts that may be mmapped, as (offset, len); `None`: all of it.
    pub sparse: Option<Vec<(u64, u64)>>,
}

/// A VFIO device.
pub trait VfioBackend: Send {
    /// Region `index` (BARs are 0 to 5), if the device has it.
    fn region(&self, index: u32) -> Option<RegionInfo>;
    /// Reads region `index` at `offset`. Failures read as all ones.
    fn read(&self, index: u32, offset: u64, data: &mut [u8]);
    /// Writes region `index` at `offset`. Failures are logged and dropped.
    fn write(&self, index: u32, offset: u64, data: &[u8]);
    /// Hands the device one eventfd per MSI-X vector and enables MSI-X.
    fn enable_msix(&self, vectors: &MsixVectorsRef<'_>) -> Result<(), String>;
    /// Disables MSI-X.
    fn disable_msix(&self);
    /// Hands the device one eventfd per enabled MSI vector and enables MSI.
    fn enable_msi(&self, vectors: &MsixVectorsRef<'_>) -> Result<(), String>;
    /// Disables MSI.
    fn disable_msi(&self);
    /// Resets the device (VFIO_DEVICE_RESET).
    fn reset(&self);
    /// The interrupts the host counted on the device's MSI-X vectors since
    /// MSI-X was enabled, if it can tell.
    fn host_interrupts(&self) -> Option<u64> {
        None
    }
}

/// The eventfds of a device's MSI-X or MSI vectors, in vector order.
pub struct MsixVectorsRef<'a>(pub Vec<&'a vmm_sys_util::eventfd::EventFd>);

/// Guest mappings of BAR areas: mmapped device memory as KVM memory slots.
pub trait BarMapper: Send {
    /// Prepares `len` bytes at `offset` of region `index` for mapping and
    /// returns a handle to it.
    fn prepare(&mut self, index: u32, offset: u64, len: u64) -> Result<usize, String>;
    /// Maps prepared area `area` at guest address `gpa`, or unmaps it.
    fn place(&mut self, area: usize, gpa: Option<u64>) -> Result<(), String>;
}

/// The MSI-X vectors' interrupt side.
pub trait MsiVectors: Send {
    /// Number of vectors.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The eventfds VFIO signals, one per vector.
    fn eventfds(&self) -> MsixVectorsRef<'_>;
    /// Points vector `index` at `message`, or takes it down (a masked vector:
    /// KVM delivers what arrived meanwhile when it comes back).
    fn set(&mut self, index: usize, message: Option<MsiMessage>);
}
