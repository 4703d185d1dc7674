//! The virtio-mmio transport, version 2 (virtio 1.x §4.2): a 0x200-byte register window
//! whose upper half is the device's configuration space.
//!
//! Status state machine (each write may only add bits, in this order; 0 resets):
//!
//! ```text
//!   0 ─► ACKNOWLEDGE ─► DRIVER ─► FEATURES_OK ─► DRIVER_OK (device activated)
//!                          │  features accepted only here     │
//!                          │  (subset of the offer, VERSION_1) │ queue registers only before
//!   any state ─► FAILED    └─ refused: FEATURES_OK stays 0     │ DRIVER_OK
//!   device error ─► DEVICE_NEEDS_RESET (read-only for the driver) + config interrupt
//!   write 0 ─► registers reset at once; the device finishes on its own thread, and until
//!              then Status reads the value it had (the driver waits for 0)
//! ```
//!
//! Invariants:
//! - Registers are 32-bit; other access widths to them are logged and ignored (reads give 0).
//! - Every line a driver can make the transport log is rate-limited (`util::logger`): a guest
//!   that repeats a bad access cannot flood the log.
//! - `QueueNotify` writes normally never reach this code: KVM's ioeventfd (registered on
//!   [`VirtioMmio::queue_notify_fds`]) signals the queue's eventfd directly. If one does arrive,
//!   the same eventfd is signalled, so both paths end in the device's notify handler.

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use address_space::{BusDevice, GuestMemory};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::queue::QueueConfig;
use super::STATUS_DEVICE_NEEDS_RESET;
use super::{
    feature, Activation, Interrupt, VirtioDevice, VirtioError, STATUS_ACKNOWLEDGE, STATUS_DRIVER,
    STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1,
};

/// Size of the register window, configuration space included.
pub const MMIO_LEN: u64 = 0x200;
/// "virt" in little-endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The transport version (modern virtio-mmio).
pub const MMIO_VERSION: u32 = 2;
/// Our vendor id.
pub const VENDOR_ID: u32 = 0x1af4;

/// Register offsets of the virtio-mmio window.
pub mod reg {
    /// Magic value "virt" (R).
    pub const MAGIC_VALUE: u64 = 0x000;
    /// Transport version (R).
    pub const VERSION: u64 = 0x004;
    /// Device type (R).
    pub const DEVICE_ID: u64 = 0x008;
    /// Vendor id (R).
    pub const VENDOR_ID: u64 = 0x00c;
    /// 32 feature bits of the device, selected by `DEVICE_FEATURES_SEL` (R).
    pub const DEVICE_FEATURES: u64 = 0x010;
    /// Which 32 device feature bits to show (W).
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    /// 32 feature bits the driver accepts, selected by `DRIVER_FEATURES_SEL` (W).
    pub const DRIVER_FEATURES: u64 = 0x020;
    /// Which 32 driver feature bits are written (W).
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    /// The queue the queue registers refer to (W).
    pub const QUEUE_SEL: u64 = 0x030;
    /// Maximum size of the selected queue, 0 if it does not exist (R).
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    /// Size of the selected queue (W).
    pub const QUEUE_NUM: u64 = 0x038;
    /// The selected queue is ready (RW).
    pub const QUEUE_READY: u64 = 0x044;
    /// Notify a queue: the value is its index (W).
    pub const QUEUE_NOTIFY: u64 = 0x050;
    /// Pending interrupt bits (R).
    pub const INTERRUPT_STATUS: u64 = 0x060;
    /// Acknowledge interrupt bits (W).
    pub const INTERRUPT_ACK: u64 = 0x064;
    /// Device status (RW).
    pub const STATUS: u64 = 0x070;
    /// Descriptor table address, low 32 bits (W).
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    /// Descriptor table address, high 32 bits (W).
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    /// Avail ring address, low 32 bits (W).
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    /// Avail ring address, high 32 bits (W).
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    /// Used ring address, low 32 bits (W).
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    /// Used ring address, high 32 bits (W).
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    /// Configuration generation (R).
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    /// Start of the device configuration space.
    pub const CONFIG: u64 = 0x100;
}

/// A virtio device behind the virtio-mmio register file; a [`BusDevice`] on the MMIO bus.
pub struct VirtioMmio {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: Arc<GuestMemory>,
    interrupt: Arc<Interrupt>,
    notify: Vec<Arc<EventFd>>,
    queues: Vec<QueueConfig>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    /// What Status read before the last reset, shown until the device has finished it.
    status_before_reset: u32,
    activated: bool,
}

impl VirtioMmio {
    /// Puts `device` behind a register file; `irq` is the irqfd that injects its interrupt.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: Arc<GuestMemory>,
        irq: Arc<EventFd>,
    ) -> Result<VirtioMmio, VirtioError> {
        let max_sizes = lock(&device).queue_max_sizes();
        let notify = max_sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(VirtioError::EventFd)?;
        Ok(VirtioMmio {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new(irq)),
            notify,
            queues: max_sizes.into_iter().map(QueueConfig::new).collect(),
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            status_before_reset: 0,
            activated: false,
        })
    }

    /// The eventfd of each queue, to register as KVM ioeventfds at `base + 0x50` with the
    /// queue index as datamatch.
    pub fn queue_notify_fds(&self) -> Vec<(u16, RawFd)> {
        self.notify
            .iter()
            .enumerate()
            .map(|(i, fd)| (i as u16, fd.as_raw_fd()))
            .collect()
    }

    /// The device's interrupt line.
    pub fn interrupt(&self) -> Arc<Interrupt> {
        self.interrupt.clone()
    }

    /// The device behind the transport.
    pub fn device(&self) -> Arc<Mutex<dyn VirtioDevice>> {
        self.device.clone()
    }

    fn selected_queue(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC_VALUE => MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => lock(&self.device).device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => lock(&self.device).device_features() as u32,
                1 => (lock(&self.device).device_features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size)),
            reg::QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready)),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS if self.status == 0 && lock(&self.device).reset_pending() => {
                self.status_before_reset
            }
            reg::STATUS => {
                let needs_reset = self.interrupt.needs_reset();
                self.status
                    | if needs_reset {
                        STATUS_DEVICE_NEEDS_RESET
                    } else {
                        0
                    }
            }
            reg::CONFIG_GENERATION => lock(&self.device).config_generation(),
            _ => {
                util::warn_ratelimited!(
                    "virtio-mmio: read of write-only or unknown register {offset:#x}"
                );
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NOTIFY => self.notify_queue(value),
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.write_status(value),
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue_register(offset, value),
            _ => util::warn_ratelimited!(
                "virtio-mmio: write of read-only or unknown register {offset:#x}"
            ),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        let settable = self.status & STATUS_DRIVER != 0 && self.status & STATUS_FEATURES_OK == 0;
        if !settable {
            util::warn_ratelimited!(
                "virtio-mmio: driver features written in status {:#x}",
                self.status
            );
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            sel => {
                util::warn_ratelimited!("virtio-mmio: driver features word {sel} does not exist")
            }
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        if self.status & STATUS_DRIVER_OK != 0 {
            util::warn_ratelimited!(
                "virtio-mmio: queue register {offset:#x} written after DRIVER_OK"
            );
            return;
        }
        let sel = self.queue_sel;
        let Some(queue) = self.selected_queue() else {
            util::warn_ratelimited!(
                "virtio-mmio: queue register {offset:#x} written for absent queue {sel}"
            );
            return;
        };
        let set_low = |addr: &mut u64| *addr = (*addr & !0xffff_ffff) | u64::from(value);
        let set_high = |addr: &mut u64| *addr = (*addr & 0xffff_ffff) | (u64::from(value) << 32);
        match offset {
            reg::QUEUE_READY => queue.ready = value == 1,
            _ if queue.ready => {
                util::warn_ratelimited!(
                    "virtio-mmio: queue {sel} register {offset:#x} written while ready"
                )
            }
            reg::QUEUE_NUM => queue.size = value.try_into().unwrap_or(0),
            reg::QUEUE_DESC_LOW => set_low(&mut queue.desc_table),
            reg::QUEUE_DESC_HIGH => set_high(&mut queue.desc_table),
            reg::QUEUE_DRIVER_LOW => set_low(&mut queue.avail_ring),
            reg::QUEUE_DRIVER_HIGH => set_high(&mut queue.avail_ring),
            reg::QUEUE_DEVICE_LOW => set_low(&mut queue.used_ring),
            _ => set_high(&mut queue.used_ring),
        }
    }

    fn notify_queue(&self, index: u32) {
        match self.notify.get(index as usize) {
            Some(fd) => {
                if let Err(e) = fd.write(1) {
                    util::error_ratelimited!("virtio-mmio: cannot signal queue {index}: {e}");
                }
            }
            None => util::warn_ratelimited!("virtio-mmio: notify of absent queue {index}"),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        let added = value & !old;
        let ordered = [
            (STATUS_DRIVER, STATUS_ACKNOWLEDGE),
            (STATUS_FEATURES_OK, STATUS_DRIVER),
            (STATUS_DRIVER_OK, STATUS_FEATURES_OK),
        ];
        let out_of_order = ordered
            .iter()
            .any(|&(bit, needs)| added & bit != 0 && value & needs == 0);
        let known = STATUS_ACKNOWLEDGE
            | STATUS_DRIVER
            | STATUS_FEATURES_OK
            | STATUS_DRIVER_OK
            | STATUS_FAILED;
        if old & !value != 0 || value & !known != 0 || out_of_order {
            util::warn_ratelimited!("virtio-mmio: status {old:#x} -> {value:#x} refused");
            return;
        }
        let mut status = value;
        if added & STATUS_FEATURES_OK != 0 && !self.features_acceptable() {
            util::warn_ratelimited!(
                "virtio-mmio: driver features {:#x} refused",
                self.driver_features
            );
            status &= !STATUS_FEATURES_OK;
        }
        self.status = status;
        if added & STATUS_DRIVER_OK != 0 && status & STATUS_DRIVER_OK != 0 {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        let offered = lock(&self.device).device_features();
        self.driver_features & !offered == 0
            && self.driver_features & feature(VIRTIO_F_VERSION_1) != 0
    }

    fn activate(&mut self) {
        let queues = self
            .queues
            .iter()
            .zip(&self.notify)
            .enumerate()
            .filter(|(_, (q, _))| q.ready)
            .map(|(i, (q, fd))| (i, *q, fd.clone()))
            .collect();
        let activation = Activation {
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone(),
            features: self.driver_features,
            queues,
        };
        match lock(&self.device).activate(activation) {
            Ok(()) => self.activated = true,
            Err(e) => {
                util::error_ratelimited!("virtio-mmio: activation failed: {e}");
                self.interrupt.set_needs_reset();
            }
        }
    }

    fn reset(&mut self) {
        self.status_before_reset = self.status.max(STATUS_ACKNOWLEDGE);
        if self.activated {
            lock(&self.device).reset();
            self.activated = false;
        }
        for queue in &mut self.queues {
            *queue = QueueConfig::new(queue.max_size);
        }
        for fd in &self.notify {
            // Drop a notification nobody will handle now; an empty eventfd reads EAGAIN.
            let _ = fd.read();
        }
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt.reset();
    }
}

impl BusDevice for VirtioMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            lock(&self.device).read_config(offset - reg::CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            util::warn_ratelimited!("virtio-mmio: {}-byte read at {offset:#x}", data.len());
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            lock(&self.device).write_config(offset - reg::CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            util::warn_ratelimited!("virtio-mmio: {}-byte write at {offset:#x}", data.len());
            return;
        };
        if !offset.is_multiple_of(4) {
            util::warn_ratelimited!("virtio-mmio: misaligned write at {offset:#x}");
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::VIRTIO_F_RING_EVENT_IDX;

    /// A device that records what the transport asks of it (pure transport logic).
    #[derive(Default)]
    struct Recorder {
        activations: Vec<(u64, Vec<(usize, QueueConfig)>)>,
        resets: usize,
    }

    impl VirtioDevice for Recorder {
        fn device_type(&self) -> u32 {
            2
        }
        fn queue_max_sizes(&self) -> Vec<u16> {
            vec![64, 32]
        }
        fn device_features(&self) -> u64 {
            feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_F_RING_EVENT_IDX) | 0x3
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn config_generation(&self) -> u32 {
            7
        }
        fn activate(&mut self, activation: Activation) -> Result<(), VirtioError> {
            let queues = activation.queues.iter().map(|(i, q, _)| (*i, *q)).collect();
            self.activations.push((activation.features, queues));
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    fn transport() -> (Arc<Mutex<Recorder>>, VirtioMmio) {
        let device = Arc::new(Mutex::new(Recorder::default()));
        let mem = Arc::new(GuestMemory::new(&[(0, 0x10000)]).unwrap());
        let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let mmio = VirtioMmio::new(device.clone(), mem, irq).unwrap();
        (device, mmio)
    }

    fn rd(mmio: &mut VirtioMmio, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        mmio.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn wr(mmio: &mut VirtioMmio, offset: u64, value: u32) {
        mmio.write(offset, &value.to_le_bytes());
    }

    #[test]
    fn identification_registers() {
        let (_, mut mmio) = transport();
        assert_eq!(rd(&mut mmio, reg::MAGIC_VALUE), MAGIC_VALUE);
        assert_eq!(rd(&mut mmio, reg::VERSION), 2);
        assert_eq!(rd(&mut mmio, reg::DEVICE_ID), 2);
        wr(&mut mmio, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            rd(&mut mmio, reg::DEVICE_FEATURES),
            1,
            "VERSION_1 is bit 32"
        );
        wr(&mut mmio, reg::QUEUE_SEL, 1);
        assert_eq!(rd(&mut mmio, reg::QUEUE_NUM_MAX), 32);
        wr(&mut mmio, reg::QUEUE_SEL, 2);
        assert_eq!(rd(&mut mmio, reg::QUEUE_NUM_MAX), 0, "absent queue");
        assert_eq!(rd(&mut mmio, reg::CONFIG_GENERATION), 7);
        let mut byte = [0u8; 1];
        mmio.read(reg::CONFIG + 3, &mut byte);
        assert_eq!(byte, [3]);
        assert_eq!(mmio.queue_notify_fds().len(), 2);
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let (_, mut mmio) = transport();
        wr(&mut mmio, reg::STATUS, STATUS_ACKNOWLEDGE);
        wr(&mut mmio, reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(&mut mmio, reg::DRIVER_FEATURES, 1);
        wr(
            &mut mmio,
            reg::STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(rd(&mut mmio, reg::STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn out_of_order_status_is_refused_and_reset_clears() {
        let (device, mut mmio) = transport();
        wr(&mut mmio, reg::STATUS, STATUS_DRIVER);
        assert_eq!(rd(&mut mmio, reg::STATUS), 0, "DRIVER before ACKNOWLEDGE");
        let steps = [
            STATUS_ACKNOWLEDGE,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        ];
        wr(&mut mmio, reg::STATUS, steps[0]);
        wr(&mut mmio, reg::STATUS, steps[1]);
        wr(&mut mmio, reg::DRIVER_FEATURES_SEL, 1);
        wr(&mut mmio, reg::DRIVER_FEATURES, 1);
        wr(&mut mmio, reg::STATUS, steps[2]);
        assert_eq!(rd(&mut mmio, reg::STATUS), steps[2]);
        wr(&mut mmio, reg::QUEUE_SEL, 0);
        wr(&mut mmio, reg::QUEUE_NUM, 16);
        wr(&mut mmio, reg::QUEUE_DESC_LOW, 0x1000);
        wr(&mut mmio, reg::QUEUE_DRIVER_LOW, 0x2000);
        wr(&mut mmio, reg::QUEUE_DEVICE_LOW, 0x3000);
        wr(&mut mmio, reg::QUEUE_DEVICE_HIGH, 0);
        wr(&mut mmio, reg::QUEUE_READY, 1);
        wr(&mut mmio, reg::QUEUE_NUM, 8);
        wr(&mut mmio, reg::STATUS, steps[1]);
        assert_eq!(
            rd(&mut mmio, reg::STATUS),
            steps[2],
            "bits cannot be cleared"
        );
        wr(&mut mmio, reg::STATUS, steps[2] | STATUS_DRIVER_OK);
        {
            let device = device.lock().unwrap();
            let (features, queues) = &device.activations[0];
            assert_eq!(*features, feature(VIRTIO_F_VERSION_1));
            assert_eq!(queues.len(), 1, "only the ready queue");
            assert_eq!(queues[0].1.size, 16, "QueueNum ignored once ready");
            assert_eq!(queues[0].1.used_ring, 0x3000);
        }
        wr(&mut mmio, reg::STATUS, 0);
        assert_eq!(device.lock().unwrap().resets, 1);
        assert_eq!(rd(&mut mmio, reg::STATUS), 0);
        assert_eq!(rd(&mut mmio, reg::QUEUE_READY), 0);
    }
}
