//! Exit accounting and reports: what each VM exit was, where it went, and
//! what it cost.

pub mod clock;
pub mod exits;
pub mod hardware;
pub mod histogram;
pub mod hw_report;
pub mod hw_table;
pub mod kvm;
pub mod live;
pub mod passthrough;
pub mod report;
pub mod symbols;

pub use exits::VcpuStats;

/// A vCPU's accounting, shared with readers while the VM runs.
pub type SharedStats = std::sync::Arc<std::sync::Mutex<VcpuStats>>;
