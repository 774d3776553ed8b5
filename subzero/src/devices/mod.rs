//! Emulated devices. Each implements [`crate::bus::BusDevice`] and sees only
//! offsets into its own range.

pub mod acpi_pm;
pub mod console_pipe;
pub mod i8042;
pub mod probe;
pub mod rate_limiter;
pub mod serial;
pub mod vfio;
pub mod virtio;
