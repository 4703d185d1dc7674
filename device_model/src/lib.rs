//! Devices: 16550 serial, i8042, virtio-mmio, virtio-blk and virtio-rng.

#![deny(missing_docs)]

pub mod legacy;
pub mod virtio;
