//! `register_memory`: io_uring turns requests whose single iovec lies in registered memory into
//! READ_FIXED/WRITE_FIXED; the other engines decline. Data stays correct either way.

mod aio_common;

use aio_common::*;
use util::aio::{AioEngine, AioOpcode, Iovec};

const ARENA: usize = 64 * ALIGN;

/// A page-aligned anonymous mapping standing in for guest RAM.
struct Arena(*mut u8);

impl Arena {
    fn new() -> Arena {
        // SAFETY: a fresh anonymous mapping; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ARENA,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        Arena(p.cast())
    }
    fn region(&self) -> Iovec {
        Iovec {
            base: self.0 as u64,
            len: ARENA as u64,
        }
    }
    fn iovec(&self, start: usize, len: usize) -> Iovec {
        Iovec {
            base: self.0 as u64 + start as u64,
            len: len as u64,
        }
    }
    fn bytes(&self, start: usize, len: usize) -> &[u8] {
        // SAFETY: inside the mapping, which lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.0.add(start), len) }
    }
    fn fill(&self, start: usize, len: usize, byte: u8) {
        // SAFETY: inside the mapping; no Rust reference to these bytes is alive.
        unsafe { std::ptr::write_bytes(self.0.add(start), byte, len) };
    }
    /// Replaces the pages under the arena with fresh zero pages at the same address.
    fn remap(&self) {
        // SAFETY: MAP_FIXED over our own mapping, same size; no reference into it is alive.
        let p = unsafe {
            libc::mmap(
                self.0.cast(),
                ARENA,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        assert_eq!(p.cast::<u8>(), self.0);
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `new`.
        unsafe { libc::munmap(self.0.cast(), ARENA) };
    }
}

#[test]
fn only_io_uring_registers_memory() {
    let path = test_path("fixed-decline");
    let file = create_file(&path, &[0u8; ALIGN], Mode::Buffered);
    let arena = Arena::new();
    for engine in AioEngine::ALL {
        let mut ctx = open(engine, &file, 4);
        let used = ctx.register_memory(&[arena.region()]).expect("register");
        assert_eq!(used, engine == AioEngine::IoUring, "aio={engine}");
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn fixed_buffers_carry_correct_data() {
    let path = test_path("fixed-data");
    let mut model = vec![0u8; 32 * ALIGN];
    Rng::new(11).fill(&mut model);
    let file = create_file(&path, &model, Mode::Direct);
    let arena = Arena::new();
    let mut ctx = open(AioEngine::IoUring, &file, 8);
    assert!(ctx.register_memory(&[arena.region()]).expect("register"));
    // Writes from the arena: one fixed, one vectored (two iovecs), one from outside it.
    arena.fill(0, 2 * ALIGN, 0x11);
    arena.fill(2 * ALIGN, 2 * ALIGN, 0x22);
    let outside = AlignedBuf::new(ALIGN);
    let batch = vec![
        rw(AioOpcode::Write, 0, vec![arena.iovec(0, 2 * ALIGN)], 0),
        rw(
            AioOpcode::Write,
            4 * ALIGN as u64,
            vec![arena.iovec(2 * ALIGN, ALIGN), arena.iovec(3 * ALIGN, ALIGN)],
            1,
        ),
        rw(
            AioOpcode::Write,
            8 * ALIGN as u64,
            vec![outside.iovec(0, ALIGN)],
            2,
        ),
    ];
    let done = run_batch(ctx.as_mut(), batch);
    assert_eq!(
        done.iter().map(|c| c.result).collect::<Vec<_>>(),
        [8192, 8192, 4096]
    );
    model[..2 * ALIGN].fill(0x11);
    model[4 * ALIGN..6 * ALIGN].fill(0x22);
    model[8 * ALIGN..9 * ALIGN].fill(0);
    // Read the whole file back into the arena with fixed reads of 4 blocks each.
    let batch = (0..8)
        .map(|i| {
            rw(
                AioOpcode::Read,
                (i * 4 * ALIGN) as u64,
                vec![arena.iovec(i * 4 * ALIGN, 4 * ALIGN)],
                i as u64,
            )
        })
        .collect();
    let done = run_batch(ctx.as_mut(), batch);
    assert!(done.iter().all(|c| c.result == 4 * ALIGN as i64));
    assert!(arena.bytes(0, 32 * ALIGN) == model.as_slice());
    drop(ctx);
    assert!(file_content(&path) == model);
    let _ = std::fs::remove_file(&path);
}

/// Proof that the fixed path is taken: the kernel pinned the arena's pages at registration,
/// so after the arena is remapped a fixed read still lands in the old pages and the new ones
/// stay zero, while a vectored read (two iovecs) lands in the new pages.
#[test]
fn requests_inside_registered_memory_use_fixed_buffers() {
    let path = test_path("fixed-proof");
    let file = create_file(&path, &vec![0x77u8; 4 * ALIGN], Mode::Direct);
    let arena = Arena::new();
    arena.fill(0, ARENA, 0);
    let mut ctx = open(AioEngine::IoUring, &file, 4);
    assert!(ctx.register_memory(&[arena.region()]).expect("register"));
    arena.remap();
    let batch = vec![
        rw(AioOpcode::Read, 0, vec![arena.iovec(0, ALIGN)], 0),
        rw(
            AioOpcode::Read,
            0,
            vec![
                arena.iovec(ALIGN, ALIGN / 2),
                arena.iovec(ALIGN + ALIGN / 2, ALIGN / 2),
            ],
            1,
        ),
    ];
    let done = run_batch(ctx.as_mut(), batch);
    assert!(done.iter().all(|c| c.result == ALIGN as i64));
    assert!(
        arena.bytes(0, ALIGN).iter().all(|&b| b == 0),
        "fixed read went to the pinned pages"
    );
    assert!(
        arena.bytes(ALIGN, ALIGN).iter().all(|&b| b == 0x77),
        "vectored read sees the new pages"
    );
    let _ = std::fs::remove_file(&path);
}
