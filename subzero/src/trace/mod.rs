//! KVM's own view of every VM exit, from its tracepoints: each vCPU thread
//! opens `kvm:kvm_exit`, `kvm:kvm_entry` and the detail events with
//! perf_event_open for itself, and a reader thread decodes their ring
//! buffers with the field offsets the running kernel's tracefs gives.
//! [`crate::stats::hardware`] turns the events into the report.

pub mod events;
pub mod format;
pub mod msrs;
pub mod reasons;
pub mod ring;
pub mod tracer;

pub use events::Event;
pub use tracer::{Attacher, Sink, Stamped, Tracer, Unavailable};
