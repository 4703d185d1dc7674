//! virtio-blk's descriptor-chain walk (`SplitQueue::read_chain`, with one level of indirect
//! tables) and request parser (`status_address`, `Request::parse`) over real guest memory
//! whose contents come from the input.
//!
//! Input: `head` (1 byte), limits flags (1 byte: read-only, discard, write-zeroes), capacity
//! in sectors (8 bytes LE), largest discard range (4 bytes LE), then the image of guest RAM
//! from address 0: the 16-entry descriptor table at 0, anything after it. Guest RAM is two
//! regions with a hole between them, so addresses can fall in RAM, in the hole or beyond.
//!
//! Checked: nothing panics; a chain is never longer than its tables allow; a request that
//! parses has its status byte and every data segment inside guest RAM, lengths that add up,
//! whole sectors within the disk, and no write to a read-only disk.

#![no_main]

use std::sync::OnceLock;

use address_space::GuestMemory;
use device_model::virtio::block::request::{
    status_address, DiskLimits, Request, RequestKind, Segment,
};
use device_model::virtio::queue::{Descriptor, QueueConfig, SplitQueue, MAX_QUEUE_SIZE};
use libfuzzer_sys::fuzz_target;

const QUEUE_SIZE: u16 = 16;
const LOW: (u64, u64) = (0, 0x1_0000);
const HIGH: (u64, u64) = (0x2_0000, 0x1000);
const HEADER: usize = 14;

fn memory() -> &'static GuestMemory {
    static MEM: OnceLock<GuestMemory> = OnceLock::new();
    MEM.get_or_init(|| GuestMemory::new(&[LOW, HIGH]).expect("guest memory"))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER {
        return;
    }
    let head = u16::from(data[0]) % QUEUE_SIZE;
    let limits = DiskLimits {
        readonly: data[1] & 1 != 0,
        discard: data[1] & 2 != 0,
        write_zeroes: data[1] & 4 != 0,
        capacity_sectors: u64::from_le_bytes(data[2..10].try_into().unwrap()),
        max_range_sectors: u32::from_le_bytes(data[10..14].try_into().unwrap()),
    };
    let image = &data[HEADER..];
    let mem = memory();
    let mut ram = vec![0u8; LOW.1 as usize];
    let n = image.len().min(ram.len());
    ram[..n].copy_from_slice(&image[..n]);
    mem.write(&ram, LOW.0).unwrap();
    mem.write(&[0u8; HIGH.1 as usize], HIGH.0).unwrap();

    let config = QueueConfig {
        max_size: QUEUE_SIZE,
        size: QUEUE_SIZE,
        ready: true,
        desc_table: 0,
        avail_ring: 0x8000,
        used_ring: 0x9000,
    };
    let queue = SplitQueue::new(&config, mem, true).unwrap();
    let mut chain: Vec<Descriptor> = Vec::new();
    if queue.read_chain(mem, head, &mut chain).is_err() {
        return;
    }
    assert!(!chain.is_empty());
    assert!(chain.len() <= usize::from(QUEUE_SIZE) + usize::from(MAX_QUEUE_SIZE));
    let Ok(status) = status_address(&chain, mem) else {
        return;
    };
    assert!(mem.contains(status, 1));
    let mut segments: Vec<Segment> = Vec::new();
    let Ok(request) = Request::parse(&chain, status, mem, &limits, &mut segments) else {
        return;
    };
    assert_eq!(request.status, status);
    let capacity_bytes = u128::from(limits.capacity_sectors) * 512;
    let end = u128::from(request.offset) + u128::from(request.len);
    let data_len: u64 = segments.iter().map(|s| s.len).sum();
    for seg in &segments {
        assert!(seg.len > 0, "{seg:?}");
        assert!(mem.contains(seg.gpa, seg.len), "{seg:?} outside guest RAM");
    }
    match request.kind {
        RequestKind::Read | RequestKind::Write => {
            assert_eq!(data_len, request.len);
            assert_eq!(request.len % 512, 0);
            assert!(end <= capacity_bytes, "{request:?} beyond {capacity_bytes}");
            assert!(request.kind == RequestKind::Read || !limits.readonly);
        }
        RequestKind::GetId => {
            assert_eq!(data_len, request.len);
            assert!(request.len > 0);
        }
        RequestKind::Flush => assert!(segments.is_empty()),
        RequestKind::Discard | RequestKind::WriteZeroes => {
            assert!(!limits.readonly);
            assert!(end <= capacity_bytes, "{request:?} beyond {capacity_bytes}");
            assert!(request.len / 512 <= u64::from(limits.max_range_sectors));
            assert!(if request.kind == RequestKind::Discard {
                limits.discard
            } else {
                limits.write_zeroes
            });
        }
    }
});
