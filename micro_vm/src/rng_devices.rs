//! The machine's virtio-rng devices (`-object rng-random` + `-device virtio-rng-device`): each
//! reads its entropy file on the main loop, sits in the next virtio-mmio slot after the block
//! devices (so block slot numbers, which QMP hot-plug uses, never move), and is wired to KVM
//! like a block device (ioeventfd for its queue, irqfd on its slot's GSI).
//!
//! Invariant: the device's running state belongs to the main loop (`docs/threads.md`); it has
//! nothing to flush, so the shutdown path needs no step for it: it goes with the VM.

use std::sync::{Arc, Mutex};

use device_model::virtio::mmio::reg::QUEUE_NOTIFY;
use device_model::virtio::{EntropySource, Rng, RngHandle, VirtioDevice, VirtioError, VirtioMmio};
use machine_manager::config::VmConfig;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::block_devices::register_notify;
use crate::{MachineError, MicroVm, MmioSlot};

/// Errors of setting the entropy devices up.
#[derive(Debug, thiserror::Error)]
pub enum RngDevicesError {
    /// The entropy file cannot be used.
    #[error("virtio-rng device {device}")]
    Source {
        /// The device id.
        device: String,
        /// The cause (names the file).
        #[source]
        source: VirtioError,
    },
    /// The virtio-mmio transport could not be built.
    #[error("virtio-rng device {device}: cannot build the virtio-mmio transport")]
    Transport {
        /// The device id.
        device: String,
        /// The cause.
        #[source]
        source: VirtioError,
    },
    /// An eventfd could not be created.
    #[error("virtio-rng device {device}: cannot create the interrupt eventfd")]
    EventFd {
        /// The device id.
        device: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// KVM refused an ioeventfd or an irqfd.
    #[error("virtio-rng device {device}: cannot register the {what} with KVM")]
    Kvm {
        /// The device id.
        device: String,
        /// `"queue notify ioeventfd"` or `"interrupt irqfd"`.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Placing the device in a virtio-mmio slot failed.
    #[error(transparent)]
    Machine(#[from] MachineError),
}

/// Opens every entropy file of `config` and puts one virtio-rng device per `-device
/// virtio-rng-device` into `vm`'s next virtio-mmio slots (call after the block devices,
/// before [`MicroVm::start`]). Returns each device's slot and handle.
pub fn attach(
    vm: &mut MicroVm,
    config: &VmConfig,
) -> Result<Vec<(MmioSlot, RngHandle)>, RngDevicesError> {
    let mut attached = Vec::with_capacity(config.rngs.len());
    for rng in &config.rngs {
        let device_error = |source| RngDevicesError::Source {
            device: rng.id.clone(),
            source,
        };
        let source = EntropySource::open(&rng.filename).map_err(device_error)?;
        let device = Rng::new(
            rng.id.clone(),
            source,
            rng.bytes_per_sec,
            vm.event_loop().clone(),
        );
        let handle = device.handle();
        let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(device));
        let irq =
            Arc::new(
                EventFd::new(EFD_NONBLOCK).map_err(|source| RngDevicesError::EventFd {
                    device: rng.id.clone(),
                    source,
                })?,
            );
        let mmio = VirtioMmio::new(device, vm.memory().clone(), irq.clone()).map_err(|source| {
            RngDevicesError::Transport {
                device: rng.id.clone(),
                source,
            }
        })?;
        let notify = mmio.queue_notify_fds();
        let slot = vm.add_mmio_device(Arc::new(Mutex::new(mmio)))?;
        for (queue, fd) in notify {
            register_notify(vm.vm_fd(), fd, slot.base + QUEUE_NOTIFY, queue).map_err(|source| {
                RngDevicesError::Kvm {
                    device: rng.id.clone(),
                    what: "queue notify ioeventfd",
                    source,
                }
            })?;
        }
        vm.vm_fd()
            .register_irqfd(&irq, slot.gsi)
            .map_err(|source| RngDevicesError::Kvm {
                device: rng.id.clone(),
                what: "interrupt irqfd",
                source,
            })?;
        log::info!(
            "virtio-rng {} in virtio-mmio slot {} reads {}{}",
            rng.id,
            slot.index,
            rng.filename.display(),
            rng.bytes_per_sec
                .map(|b| format!(", at most {b} bytes/s"))
                .unwrap_or_default()
        );
        attached.push((slot, handle));
    }
    Ok(attached)
}
