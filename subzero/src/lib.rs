//! Subzero: a virtual machine monitor on Linux KVM that boots stock Linux
//! kernels and accounts for every VM exit.
//!
//! Layers, bottom up:
//! - [`kvm`]: opening `/dev/kvm` with clear errors, capability checks.
//! - [`bus`]: port-I/O and MMIO address spaces that route accesses to devices.
//! - [`exits`]: the exit vocabulary (kinds, targets) shared by `vmm` and `stats`.
//! - [`pci`]: the PCI root complex, BARs and MSI-X.
//! - [`devices`]: the emulated devices (serial, i8042, ACPI power management).
//! - [`arch`]: the x86_64 memory map, boot protocol, firmware tables, CPUID, MSRs.
//! - [`vmm`]: the builder that turns a [`vmm::VmConfig`] into a running VM,
//!   the vCPU threads and the exit dispatcher.
//! - [`stats`]: exit accounting and the reports built from it.
//! - [`api`]: Firecracker's REST API on a Unix socket, routed into `vmm` actions.
//! - [`logger`]: the log target and level, changeable at run time.
//! - [`demo`]: the embedded guest behind `subzero demo`.
//! - [`jail`]: `subzero jail`, namespaces, pivot_root and the privilege drop.

pub mod api;
pub mod arch;
pub mod bench;
pub mod bus;
pub mod demo;
pub mod devices;
pub mod exits;
pub mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod jail;
pub mod kvm;
pub mod logger;
pub mod pci;
pub mod seccomp;
pub mod stats;
pub mod trace;
pub mod vmm;
