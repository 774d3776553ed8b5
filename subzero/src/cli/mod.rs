//! The command-line front end: one module per command.

pub mod demo;
pub mod run;
pub mod stat;
