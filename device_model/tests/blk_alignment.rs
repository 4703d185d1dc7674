//! Host storage with 4 KiB logical sectors (`losetup --sector-size 4096`), whose `O_DIRECT`
//! refuses 512-byte requests and buffers not aligned to 512 bytes: the device tells the guest
//! its block size and topology, and still serves whatever the guest sends — 512-byte reads and
//! writes, 4 KiB requests at odd sectors, buffers at odd addresses, segments of odd lengths,
//! and several partial writes to one block at once (read-modify-write, kept apart) — on every
//! engine, checked byte for byte against a model of the disk.

mod common;

use common::{buf, Rig, Rng, TempDisk, DRIVER_BASE, MODES, TIMEOUT};
use device_model::virtio::block::request::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use device_model::virtio::block::{config, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_TOPOLOGY};
use device_model::virtio::driver::{Buffer, Completion, DriverConfig};
use device_model::virtio::{feature, BlockBackend};
use util::testing::LoopDevice;

const SECTORS: u64 = 8192;
/// Guest buffers start here, at odd offsets from it.
const BUFFERS: u64 = 0x80_0000;

/// One request of a round: sector, length, and the guest buffers (writable for reads).
struct Io {
    write: bool,
    sector: u64,
    chain: Vec<Buffer>,
}

/// `len` bytes at `at` split into one to three segments of odd lengths.
fn segments(rng: &mut Rng, at: u64, len: u64, writable: bool) -> Vec<Buffer> {
    let mut out = Vec::new();
    let mut done = 0;
    while done < len {
        let left = len - done;
        let piece = if out.len() == 2 || left < 2 {
            left
        } else {
            1 + rng.below(left - 1)
        };
        out.push(buf(at + done, piece as u32, writable));
        done += piece;
    }
    out
}

fn run_round(rig: &mut Rig, ios: &[Io]) -> Vec<Completion> {
    let mut heads = Vec::new();
    for io in ios {
        let kind = if io.write {
            VIRTIO_BLK_T_OUT
        } else {
            VIRTIO_BLK_T_IN
        };
        heads.push(rig.driver.submit(kind, io.sector, &io.chain).unwrap());
    }
    rig.driver.kick().unwrap();
    let mut done = Vec::new();
    rig.driver.wait(ios.len(), TIMEOUT, &mut done).unwrap();
    done
}

#[test]
fn misaligned_requests_on_4k_sector_storage_match_the_model_on_every_engine() {
    for (aio, direct) in MODES {
        let disk = TempDisk::new(&vec![0u8; (SECTORS * 512) as usize]);
        let device = LoopDevice::attach(&disk.path, Some(4096)).unwrap();
        let mut cfg = disk.config(aio, direct);
        cfg.path = device.path().to_path_buf();
        let backend = BlockBackend::open(&cfg).unwrap();
        let mut rig = Rig::new(Some(backend), DriverConfig::new(DRIVER_BASE, 256));
        let block = u32::from_le_bytes(rig.driver.read_config::<4>(config::BLK_SIZE as u64));
        let topology = rig
            .driver
            .read_config::<1>(config::PHYSICAL_BLOCK_EXP as u64)[0];
        assert_eq!(
            block,
            if direct { 4096 } else { 512 },
            "{aio} direct={direct}: the guest is told the logical block size"
        );
        assert_eq!(topology, 0, "physical blocks are logical blocks here");
        let want = feature(VIRTIO_BLK_F_BLK_SIZE) | feature(VIRTIO_BLK_F_TOPOLOGY);
        assert_eq!(rig.driver.features() & want, want);

        let mut model = vec![0u8; (SECTORS * 512) as usize];
        let mut rng = Rng(0x5eed ^ aio as u64);
        for round in 0..40 {
            // Several partial writes to the sectors of one block at once (read-modify-write
            // must not lose any), then random reads and writes of odd shapes.
            let mut ios = Vec::new();
            let hot_block = rng.below(SECTORS / 8);
            let mut at = BUFFERS;
            let mut data_of = Vec::new();
            for k in 0..8 {
                if rng.below(2) == 0 {
                    continue;
                }
                let sector = hot_block * 8 + k;
                let data = rng.bytes(512);
                rig.mem.write(&data, at + 1).unwrap();
                ios.push(Io {
                    write: true,
                    sector,
                    chain: segments(&mut rng, at + 1, 512, false),
                });
                data_of.push((sector, data));
                at += 0x2000;
            }
            for _ in 0..8 {
                let sectors = 1 + rng.below(12);
                let sector = rng.below(SECTORS - sectors);
                // Keep clear of the hot block and of the round's other writes, so that the
                // round's outcome is defined (concurrent overlapping writes land in any order).
                if (sector..sector + sectors).any(|s| s / 8 == hot_block)
                    || data_of.iter().any(|(start, data): &(u64, Vec<u8>)| {
                        sector < start + data.len() as u64 / 512 && *start < sector + sectors
                    })
                {
                    continue;
                }
                let len = sectors * 512;
                let write = rng.below(2) == 0;
                let offset = rng.below(511);
                if write {
                    let data = rng.bytes(len as usize);
                    rig.mem.write(&data, at + offset).unwrap();
                    data_of.push((sector, data));
                }
                ios.push(Io {
                    write,
                    sector,
                    chain: segments(&mut rng, at + offset, len, !write),
                });
                at += (len + 0x1000).next_multiple_of(0x1000);
            }
            // Reads of this round see the disk as it was before it (no read overlaps a
            // write of the same round: writes overlapping reads are skipped).
            let writes: Vec<(u64, u64)> = ios
                .iter()
                .filter(|io| io.write)
                .map(|io| {
                    (
                        io.sector,
                        io.sector + io.chain.iter().map(|b| u64::from(b.len)).sum::<u64>() / 512,
                    )
                })
                .collect();
            ios.retain(|io| {
                io.write || {
                    let end =
                        io.sector + io.chain.iter().map(|b| u64::from(b.len)).sum::<u64>() / 512;
                    writes.iter().all(|&(s, e)| e <= io.sector || end <= s)
                }
            });
            let expected_reads: Vec<(Vec<Buffer>, Vec<u8>)> = ios
                .iter()
                .filter(|io| !io.write)
                .map(|io| {
                    let len: u64 = io.chain.iter().map(|b| u64::from(b.len)).sum();
                    let start = (io.sector * 512) as usize;
                    (
                        io.chain.clone(),
                        model[start..start + len as usize].to_vec(),
                    )
                })
                .collect();
            let done = run_round(&mut rig, &ios);
            assert!(
                done.iter().all(|c| c.status == Some(VIRTIO_BLK_S_OK)),
                "{aio} direct={direct} round {round}: {done:?}"
            );
            for (sector, data) in data_of {
                let start = (sector * 512) as usize;
                model[start..start + data.len()].copy_from_slice(&data);
            }
            for (chain, want) in expected_reads {
                let mut got = Vec::new();
                for b in &chain {
                    let mut piece = vec![0u8; b.len as usize];
                    rig.mem.read(&mut piece, b.gpa).unwrap();
                    got.extend(piece);
                }
                assert!(
                    got == want,
                    "{aio} direct={direct} round {round}: a read differs"
                );
            }
        }
        drop(rig);
        drop(device);
        let contents = disk.contents();
        if let Some(at) = (0..model.len()).find(|&i| contents[i] != model[i]) {
            let sector = at / 512;
            panic!(
                "{aio} direct={direct}: the disk differs from the model from byte {at} \
                 (sector {sector}, block {})",
                sector / 8
            );
        }
    }
}
