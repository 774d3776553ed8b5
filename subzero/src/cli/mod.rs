//! The command-line front end: one module per command.

pub mod bench;
pub mod demo;
pub mod run;
pub mod stat;
pub mod vmm;
