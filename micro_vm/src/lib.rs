//! The micro VM: builds the machine from its configuration and runs it.

#![deny(missing_docs)]
