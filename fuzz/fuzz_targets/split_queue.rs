//! The split virtqueue's avail and used handling (`SplitQueue::new`, `pop_avail`,
//! `has_avail`, `add_used`, `publish_used`, `enable_notification`) against a driver whose
//! moves come from the input, in real guest memory, checked step by step against a model of
//! the virtio rules.
//!
//! Input: the queue size as log2 (1 byte; sizes above the maximum are refused), flags (1 byte:
//! bit 0 EVENT_IDX, bit 1 ring addresses from the input), with bit 1 three addresses (8 bytes
//! LE each: descriptor table, avail ring, used ring), then 5-byte steps: an opcode and a
//! 4-byte argument.

#![no_main]

use std::sync::OnceLock;

use address_space::GuestMemory;
use device_model::virtio::queue::{
    need_event, QueueConfig, SplitQueue, VIRTQ_AVAIL_F_NO_INTERRUPT,
};
use libfuzzer_sys::fuzz_target;

const RAM: u64 = 0x1_0000;
const MAX_SIZE: u16 = 256;

fn memory() -> &'static GuestMemory {
    static MEM: OnceLock<GuestMemory> = OnceLock::new();
    MEM.get_or_init(|| GuestMemory::new(&[(0, RAM)]).expect("guest memory"))
}

fn le64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().unwrap())
}

/// The device's side of the ring, as the virtio rules say it must behave.
#[derive(Default)]
struct Model {
    next_avail: u16,
    next_used: u16,
    signalled: u16,
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let size_log2 = data[0] % 11;
    let event_idx = data[1] & 1 != 0;
    let mut rest = &data[2..];
    let (desc, avail, used) = if data[1] & 2 != 0 {
        if rest.len() < 24 {
            return;
        }
        let addrs = (le64(&rest[..8]), le64(&rest[8..16]), le64(&rest[16..24]));
        rest = &rest[24..];
        addrs
    } else {
        (0x1000, 0x5000, 0x6000)
    };
    let mem = memory();
    mem.write(&vec![0u8; RAM as usize], 0).unwrap();
    let config = QueueConfig {
        max_size: MAX_SIZE,
        size: 1 << size_log2,
        ready: true,
        desc_table: desc,
        avail_ring: avail,
        used_ring: used,
    };
    let Ok(mut queue) = SplitQueue::new(&config, mem, event_idx) else {
        return;
    };
    let size = queue.size();
    assert!(size.is_power_of_two() && size <= MAX_SIZE);
    let n = u64::from(size);
    let used_event_at = avail + 4 + 2 * n;
    let avail_event_at = used + 4 + 8 * n;
    let mut model = Model::default();
    for step in rest.chunks_exact(5) {
        let arg = u32::from_le_bytes(step[1..5].try_into().unwrap());
        let low = arg as u16;
        let high = (arg >> 16) as u16;
        match step[0] % 9 {
            // The driver publishes avail.idx.
            0 => mem.write_obj(&low, avail + 2).unwrap(),
            // The driver fills an avail ring slot.
            1 => mem
                .write_obj(&high, avail + 4 + 2 * u64::from(low % size))
                .unwrap(),
            // The driver sets the avail flags and used_event.
            2 => {
                mem.write_obj(&low, avail).unwrap();
                mem.write_obj(&high, used_event_at).unwrap();
            }
            // The driver scribbles over any byte of RAM (rings included).
            3 => mem.write_obj(&(high as u8), u64::from(low)).unwrap(),
            // The device pops a chain.
            4 => {
                let idx: u16 = mem.read_obj(avail + 2).unwrap();
                let slot = avail + 4 + 2 * u64::from(model.next_avail % size);
                let entry: u16 = mem.read_obj(slot).unwrap();
                match queue.pop_avail(mem) {
                    Err(_) => {
                        // Only a driver that runs more than a queue ahead, or offers a head
                        // outside the table, breaks the queue; the device then needs a reset.
                        assert!(idx.wrapping_sub(model.next_avail) > size || entry >= size);
                        return;
                    }
                    Ok(None) => assert_eq!(idx, model.next_avail),
                    Ok(Some(head)) => {
                        assert!(idx.wrapping_sub(model.next_avail) <= size);
                        assert_eq!(head, entry);
                        assert!(head < size);
                        model.next_avail = model.next_avail.wrapping_add(1);
                    }
                }
            }
            // The device returns a chain.
            5 => {
                queue.add_used(mem, low % size, arg).unwrap();
                let slot = used + 4 + 8 * u64::from(model.next_used % size);
                assert_eq!(mem.read_obj::<u32>(slot).unwrap(), u32::from(low % size));
                assert_eq!(mem.read_obj::<u32>(slot + 4).unwrap(), arg);
                model.next_used = model.next_used.wrapping_add(1);
            }
            // The device publishes used.idx and decides about the interrupt.
            6 => {
                let interrupt = queue.publish_used(mem).unwrap();
                assert_eq!(mem.read_obj::<u16>(used + 2).unwrap(), model.next_used);
                let (old, new) = (model.signalled, model.next_used);
                model.signalled = new;
                let expected = if old == new {
                    false
                } else if event_idx {
                    need_event(mem.read_obj(used_event_at).unwrap(), new, old)
                } else {
                    mem.read_obj::<u16>(avail).unwrap() & VIRTQ_AVAIL_F_NO_INTERRUPT == 0
                };
                assert_eq!(interrupt, expected);
            }
            // The device asks for the next notification.
            7 => {
                let result = queue.enable_notification(mem);
                // Read after the call: avail_event may overlap avail.idx if the driver
                // placed the rings so.
                let idx: u16 = mem.read_obj(avail + 2).unwrap();
                match result {
                    Ok(more) => {
                        assert!(idx.wrapping_sub(model.next_avail) <= size);
                        assert_eq!(more, idx != model.next_avail);
                    }
                    Err(_) => {
                        assert!(idx.wrapping_sub(model.next_avail) > size);
                        return;
                    }
                }
                if event_idx {
                    assert_eq!(
                        mem.read_obj::<u16>(avail_event_at).unwrap(),
                        model.next_avail
                    );
                }
            }
            // The device looks for work.
            _ => {
                let idx: u16 = mem.read_obj(avail + 2).unwrap();
                match queue.has_avail(mem) {
                    Ok(more) => assert_eq!(more, idx != model.next_avail),
                    Err(_) => {
                        assert!(idx.wrapping_sub(model.next_avail) > size);
                        return;
                    }
                }
            }
        }
    }
});
