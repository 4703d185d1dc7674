//! A guest that hammers the virtio-mmio transport with bad accesses cannot flood the log:
//! 100,000 of them cost a few kilobytes. One test in this binary, as it installs the
//! process's logger.

use std::sync::{Arc, Mutex};

use address_space::{BusDevice, GuestMemory};
use device_model::virtio::mmio::reg;
use device_model::virtio::{Block, VirtioDevice, VirtioMmio};
use util::event_loop::EventLoopThread;
use util::testing::{CapturedLine, LogCapture};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const ACCESSES: usize = 100_000;

/// One kind of bad access; its argument varies the value written.
type Access = fn(&mut VirtioMmio, usize);

/// Bytes the VMM's own logger writes for these lines: the captured `target: message` plus
/// its timestamp and level prefix (`1700000000.123456 WARN  `) and the newline.
fn log_bytes(lines: &[CapturedLine]) -> usize {
    lines.iter().map(|l| l.text.len() + 25).sum()
}

fn write(mmio: &mut VirtioMmio, offset: u64, value: u32) {
    mmio.write(offset, &value.to_le_bytes());
}

#[test]
fn a_hundred_thousand_bad_mmio_accesses_cost_a_few_kilobytes_of_log() {
    let log = LogCapture::install().unwrap();
    let iothread = EventLoopThread::spawn("flood-iothread").unwrap();
    let block = Block::new("blk0".into(), None, iothread.event_loop().clone());
    let handle = block.handle();
    let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(block));
    let mem = Arc::new(GuestMemory::new(&[(0, 1 << 20)]).unwrap());
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut mmio = VirtioMmio::new(device, mem, irq).unwrap();

    // The plain case: one kind of bad access, again and again.
    let before = log.lines().len();
    for i in 0..ACCESSES {
        write(&mut mmio, 0x0f0, i as u32);
    }
    let single = log.lines()[before..].to_vec();
    eprintln!(
        "{ACCESSES} writes to an unknown register: {} lines, {} bytes",
        single.len(),
        log_bytes(&single)
    );
    assert!(!single.is_empty(), "the bad writes are not logged at all");
    assert!(log_bytes(&single) <= 1024, "{single:#?}");

    // Every other kind of bad access the transport logs, interleaved.
    let kinds: [(&str, Access); 9] = [
        ("read of write-only", |m, _| {
            m.read(reg::QUEUE_SEL, &mut [0; 4]);
        }),
        ("2-byte read", |m, _| m.read(reg::STATUS, &mut [0; 2])),
        ("1-byte write", |m, i| m.write(reg::STATUS, &[i as u8])),
        ("misaligned write", |m, i| {
            write(m, reg::STATUS + 1, i as u32)
        }),
        ("driver features written in status", |m, i| {
            write(m, reg::DRIVER_FEATURES, i as u32)
        }),
        ("written for absent queue", |m, i| {
            write(m, reg::QUEUE_SEL, 7);
            write(m, reg::QUEUE_NUM, i as u32);
            write(m, reg::QUEUE_SEL, 0);
        }),
        ("notify of absent queue", |m, i| {
            write(m, reg::QUEUE_NOTIFY, 100 + i as u32)
        }),
        ("refused", |m, _| write(m, reg::STATUS, 0x80 | 0x2)),
        ("read-only config", |m, i| {
            write(m, reg::CONFIG + 4, i as u32)
        }),
    ];
    let before = log.lines().len();
    for i in 0..ACCESSES {
        let (_, access) = kinds[i % kinds.len()];
        access(&mut mmio, i);
    }
    let mixed = log.lines()[before..].to_vec();
    for (needle, _) in kinds {
        assert!(
            mixed.iter().any(|l| l.text.contains(needle)),
            "no line about {needle:?}: {mixed:#?}"
        );
    }
    eprintln!(
        "{ACCESSES} bad accesses of {} kinds: {} lines, {} bytes",
        kinds.len(),
        mixed.len(),
        log_bytes(&mixed)
    );
    assert!(log_bytes(&mixed) <= 6 * 1024, "{mixed:#?}");

    handle.shutdown().unwrap();
    drop(iothread);
}
