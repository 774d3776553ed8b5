//! PCI passthrough through VFIO: a host PCI device, isolated by the IOMMU,
//! handed to the guest.
//!
//! - [`backend`]: what the passthrough device needs from VFIO and KVM, as
//!   traits, so that a fake stands in for the hardware in tests.
//! - [`config`]: the guest's view of the device's configuration space: BARs,
//!   the capability list (MSI hidden, MSI-X virtualized) and what writes pass.
//! - [`device`]: the [`device::VfioPciDevice`] on Subzero's PCI bus.
//! - [`sysfs`]: the host-side checks behind every error a user can act on.
//! - [`host`]: the real backend on `vfio-ioctls`, KVM memory slots and irqfds.

pub mod backend;
pub mod config;
pub mod device;
pub mod host;
pub mod sysfs;

#[cfg(test)]
mod tests;

pub use device::VfioPciDevice;
