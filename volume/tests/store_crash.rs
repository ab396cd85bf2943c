//! Power loss under the extent store, on the simulated disk: whatever was flushed (or written
//! with FUA) reads back exactly; a block with writes that were not yet durable reads back as
//! one of the contents it had, or fails its checksum — it never returns anything else.
//!
//! Seeded: a failing seed is printed and can be pinned.

use std::sync::Arc;

use bytes::Bytes;
use volume::BlockVolume;
use volume::io::sim::SimDisk;
use volume::store::ExtentStore;

const BLOCK: u64 = 4096;
const BLOCKS: u64 = 64;

/// splitmix64: the test's own reproducible choices.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn contents(tag: u64) -> Bytes {
    let mut v = vec![0u8; BLOCK as usize];
    for (i, b) in v.iter_mut().enumerate() {
        *b = (tag as u8).wrapping_add((i as u8).wrapping_mul(7)) | 1;
    }
    Bytes::from(v)
}

/// Returns (blocks that had writes in flight at the crash, of which failed their checksum).
async fn run_seed(seed: u64, tear: bool) -> (u32, u32) {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(SimDisk::new("crash", seed));
    let mut rng = Rng(seed);
    let zero = Bytes::from(vec![0u8; BLOCK as usize]);
    let mut durable: Vec<Bytes> = vec![zero; BLOCKS as usize];
    let mut pending: Vec<Vec<Bytes>> = vec![Vec::new(); BLOCKS as usize];
    {
        let store = ExtentStore::open(dir.path(), disk.clone()).await.unwrap();
        let vol = store.create_volume("v", BLOCKS * BLOCK).await.unwrap();
        for step in 0..60u64 {
            let b = rng.below(BLOCKS) as usize;
            match rng.below(10) {
                0 => {
                    vol.flush().await.unwrap();
                    for (d, p) in durable.iter_mut().zip(pending.iter_mut()) {
                        if let Some(last) = p.pop() {
                            *d = last;
                        }
                        p.clear();
                    }
                }
                1 | 2 => {
                    let data = contents(seed * 1000 + step);
                    vol.write(b as u64 * BLOCK, data.clone(), true)
                        .await
                        .unwrap();
                    durable[b] = data;
                    pending[b].clear();
                }
                _ => {
                    let data = contents(seed * 1000 + step);
                    vol.write(b as u64 * BLOCK, data.clone(), false)
                        .await
                        .unwrap();
                    pending[b].push(data);
                }
            }
        }
        if tear {
            disk.crash_tearing();
        } else {
            disk.crash();
        }
    }
    let store = ExtentStore::open(dir.path(), disk.clone()).await.unwrap();
    let vol = store
        .volume("v")
        .expect("a created volume survives power loss");
    let (mut in_flight, mut detected) = (0, 0);
    for b in 0..BLOCKS as usize {
        let read = vol.read(b as u64 * BLOCK, BLOCK as u32).await;
        if pending[b].is_empty() {
            let got = read.unwrap_or_else(|e| panic!("seed {seed}: durable block {b}: {e}"));
            assert_eq!(got, durable[b], "seed {seed}: durable block {b} changed");
        } else {
            in_flight += 1;
            match read {
                Ok(got) => assert!(
                    got == durable[b] || pending[b].contains(&got),
                    "seed {seed}: block {b} returned contents it never had"
                ),
                Err(volume::VolumeError::Checksum { .. }) => detected += 1,
                Err(e) => panic!("seed {seed}: block {b}: unexpected {e}"),
            }
        }
    }
    (in_flight, detected)
}

async fn run_seeds(seeds: std::ops::Range<u64>, tear: bool) {
    let (mut in_flight, mut detected) = (0, 0);
    for seed in seeds {
        let (i, d) = run_seed(seed, tear).await;
        in_flight += i;
        detected += d;
    }
    eprintln!(
        "blocks with writes in flight at the crash: {in_flight}, failed their checksum: {detected}"
    );
    assert!(in_flight > 0, "the scenario must leave writes in flight");
}

#[tokio::test]
async fn power_loss_keeps_flushed_blocks_and_never_returns_wrong_data() {
    run_seeds(0..24, false).await;
}

#[tokio::test]
async fn power_loss_with_torn_sectors_keeps_flushed_blocks_and_never_returns_wrong_data() {
    run_seeds(100..124, true).await;
}
