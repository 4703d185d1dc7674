//! Configuration from the command line, QMP, and the machine's event loop plumbing.

#![deny(missing_docs)]

pub mod config;
pub mod qmp;
