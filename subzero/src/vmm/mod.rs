//! The VMM: configuration, the builder, vCPU threads and exit dispatch.

pub mod actions;
pub mod builder;
pub mod config;
pub mod console;
pub mod controller;
pub mod device_config;
pub mod event_loop;
pub mod exit;
pub mod hw_trace;
pub mod initrd_unpack;
pub mod kernel_cache;
pub mod legacy;
pub mod machine;
pub mod memory;
pub mod pci;
pub mod resources;
pub mod snapshot;
pub mod vcpu;
pub mod vcpu_handle;
pub mod virtio;

pub use builder::{build_linux, BuildError};
pub use config::VmConfig;
pub use machine::{Machine, RunReport, RunningVm};
