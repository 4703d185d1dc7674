//! Devices: 16550 serial, i8042, virtio-mmio and virtio-blk.

#![deny(missing_docs)]

pub mod legacy;
pub mod virtio;
