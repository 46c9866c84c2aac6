//! Tests of the cold run format (included from `run.rs`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::Range;

use proptest::prelude::*;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

const NAME: &str = "runs/test-0001.run";

/// The reader's path: trailer, footer, index, and the file length check.
fn open(file: &[u8]) -> Result<RunIndex, RunError> {
    let footer = footer_len(NAME, file)?;
    let end = file.len() - TRAILER_LEN;
    let start = end
        .checked_sub(footer)
        .ok_or_else(|| corrupt(NAME, "footer longer than the file"))?;
    let index = RunIndex::parse(NAME, &file[start..end])?;
    if index.file_len() != file.len() as u64 {
        return Err(corrupt(NAME, "file length differs from the footer's"));
    }
    Ok(index)
}

fn at(file: &[u8], r: Range<u64>) -> &[u8] {
    &file[r.start as usize..r.end as usize]
}

fn value(rng: &mut ChaCha8Rng, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    rng.fill_bytes(&mut v);
    v
}

/// A small run (one block per section, a few KiB) for byte-by-byte corruption tests.
fn small_run() -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut b = RunBuilder::new();
    for _ in 0..20 {
        let len = rng.random_range(50..150);
        b.trip(rng.random(), value(&mut rng, len));
    }
    b.trip(42, b"first".to_vec());
    b.trip(42, b"second".to_vec());
    for _ in 0..100 {
        b.id(rng.random(), rng.random());
    }
    b.finish()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn trips_round_trip(entries in prop::collection::vec(
        (prop_oneof![0u64..40, any::<u64>()], prop::collection::vec(any::<u8>(), 0..400)),
        0..1500,
    )) {
        let mut b = RunBuilder::new();
        let mut model: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
        for (k, v) in &entries {
            b.trip(*k, v.clone());
            model.entry(*k).or_default().push(v.clone());
        }
        prop_assert_eq!(b.trips(), entries.len());
        let file = b.finish();
        let index = open(&file).unwrap();
        prop_assert_eq!(index.trips(), entries.len() as u64);
        prop_assert_eq!(index.ids(), 0);
        for (k, values) in &model {
            let r = index.trip_block(*k).expect("an inserted key is located");
            prop_assert_eq!(&find_trips(NAME, at(&file, r), *k).unwrap(), values);
        }
        let mut sorted = entries.clone();
        sorted.sort_by_key(|e| e.0);
        let scanned: Vec<(u64, Vec<u8>)> = index.trip_blocks().into_iter()
            .flat_map(|r| block_trips(NAME, at(&file, r)).unwrap()).collect();
        prop_assert_eq!(scanned, sorted);
    }

    #[test]
    fn ids_round_trip(pairs in prop::collection::vec(
        (prop_oneof![0u64..30, any::<u64>()], prop_oneof![0u64..4, any::<u64>()]),
        0..6000,
    )) {
        let mut b = RunBuilder::new();
        let mut model: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        for &(e, t) in &pairs {
            b.id(e, t);
            b.id(e, t); // duplicates are dropped
            model.entry(e).or_default().insert(t);
        }
        let file = b.finish();
        let index = open(&file).unwrap();
        let distinct: BTreeSet<(u64, u64)> = pairs.iter().copied().collect();
        prop_assert_eq!(index.ids(), distinct.len() as u64);
        prop_assert_eq!(index.trips(), 0);
        for (e, trips) in &model {
            let r = index.id_block(*e).expect("an inserted event key is located");
            let found = find_ids(NAME, at(&file, r), *e).unwrap();
            prop_assert_eq!(found, trips.iter().copied().collect::<Vec<_>>());
        }
        let scanned: Vec<(u64, u64)> = index.id_blocks().into_iter()
            .flat_map(|r| block_ids(NAME, at(&file, r)).unwrap()).collect();
        prop_assert_eq!(scanned, distinct.into_iter().collect::<Vec<_>>());
    }

    /// Random bytes, with and without a valid CRC, never panic any reader.
    #[test]
    fn garbage_never_panics(
        mut bytes in prop::collection::vec(any::<u8>(), 0..600),
        kind in 0u8..3,
        crc in any::<bool>(),
    ) {
        if let Some(first) = bytes.first_mut() {
            *first = [TRIP_KIND, ID_KIND, 0][kind as usize];
        }
        if crc {
            let c = crc32fast::hash(&bytes);
            bytes.extend_from_slice(&c.to_le_bytes());
        }
        let _ = footer_len(NAME, &bytes);
        let _ = RunIndex::parse(NAME, &bytes);
        let _ = find_trips(NAME, &bytes, 0);
        let _ = find_ids(NAME, &bytes, 0);
        let _ = block_trips(NAME, &bytes);
        let _ = block_ids(NAME, &bytes);
    }
}

#[test]
fn absent_keys_rarely_pass_the_filters() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut b = RunBuilder::new();
    let mut present = HashSet::new();
    for _ in 0..50_000 {
        let k: u64 = rng.random();
        present.insert(k);
        b.trip(k, value(&mut rng, 16));
        b.id(k, k);
    }
    let file = b.finish();
    let index = open(&file).unwrap();
    let absent: Vec<u64> = std::iter::repeat_with(|| rng.random::<u64>())
        .filter(|k| !present.contains(k))
        .take(10_000)
        .collect();
    let trip_fp = absent
        .iter()
        .filter(|&&k| index.trip_block(k).is_some())
        .count();
    let id_fp = absent
        .iter()
        .filter(|&&k| index.id_block(k).is_some())
        .count();
    let bloom_fp = absent
        .iter()
        .filter(|&&k| index.trip_bloom.contains(k))
        .count();
    assert!(trip_fp < 300, "trip false positives {trip_fp} / 10000");
    assert!(id_fp < 300, "id false positives {id_fp} / 10000");
    assert!(bloom_fp < 200, "Bloom alone: {bloom_fp} / 10000");
    // A located absent key reads a block and finds nothing.
    let k = *absent
        .iter()
        .find(|&&k| index.trip_block(k).is_some())
        .unwrap();
    assert!(
        find_trips(NAME, at(&file, index.trip_block(k).unwrap()), k)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn colliding_keys_stay_in_one_block() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut b = RunBuilder::new();
    let mut expected = Vec::new();
    for i in 0..1200u64 {
        let v = value(&mut rng, 200);
        if i * 3 == 1500 {
            expected.push(v.clone()); // lands amid the colliding ones, in insertion order
        }
        b.trip(i * 3, v);
        if i % 2 == 0 {
            let v = value(&mut rng, 200);
            expected.push(v.clone());
            b.trip(1500, v); // 600 × 212 bytes: over three blocks' worth under one key
        }
    }
    let file = b.finish();
    let index = open(&file).unwrap();
    let r = index.trip_block(1500).unwrap();
    assert!(r.end - r.start > 3 * BLOCK_TARGET as u64);
    assert_eq!(
        find_trips(NAME, at(&file, r.clone()), 1500).unwrap(),
        expected
    );
    for other in index.trip_blocks().into_iter().filter(|o| *o != r) {
        assert!(other.end - other.start <= BLOCK_TARGET as u64);
        assert!(find_trips(NAME, at(&file, other), 1500).unwrap().is_empty());
    }
}

#[test]
fn empty_run_and_single_sections_are_valid() {
    let b = RunBuilder::new();
    assert!(b.is_empty());
    let file = b.finish();
    assert_eq!(file.len(), MIN_FOOTER_LEN + TRAILER_LEN);
    let index = open(&file).unwrap();
    assert_eq!((index.trips(), index.ids()), (0, 0));
    assert!(index.trip_blocks().is_empty() && index.id_blocks().is_empty());
    assert_eq!((index.trip_block(0), index.id_block(0)), (None, None));

    let mut b = RunBuilder::new();
    b.trip(5, b"five".to_vec());
    assert!(!b.is_empty());
    let file = b.finish();
    let index = open(&file).unwrap();
    assert!(index.id_blocks().is_empty() && index.id_block(5).is_none());
    assert_eq!(
        find_trips(NAME, at(&file, index.trip_block(5).unwrap()), 5).unwrap(),
        vec![b"five".to_vec()]
    );

    let mut b = RunBuilder::new();
    b.id(9, 5);
    assert_eq!((b.trips(), b.ids()), (0, 1));
    let file = b.finish();
    let index = open(&file).unwrap();
    assert!(index.trip_blocks().is_empty() && index.trip_block(9).is_none());
    assert_eq!(
        find_ids(NAME, at(&file, index.id_block(9).unwrap()), 9).unwrap(),
        vec![5]
    );
}

#[test]
fn every_single_byte_flip_is_detected() {
    let file = small_run();
    let index = open(&file).unwrap();
    let trips = index.trip_blocks();
    let ids = index.id_blocks();
    assert_eq!((trips.len(), ids.len()), (1, 1));
    for pos in 0..file.len() {
        for flip in [0x01, 0x80, 0xff] {
            let mut bad = file.clone();
            bad[pos] ^= flip;
            let p = pos as u64;
            let err = if trips[0].contains(&p) {
                assert!(block_trips(NAME, at(&bad, trips[0].clone())).is_err());
                find_trips(NAME, at(&bad, trips[0].clone()), 42).unwrap_err()
            } else if ids[0].contains(&p) {
                assert!(block_ids(NAME, at(&bad, ids[0].clone())).is_err());
                find_ids(NAME, at(&bad, ids[0].clone()), 0).unwrap_err()
            } else {
                open(&bad).unwrap_err()
            };
            let msg = err.to_string();
            assert!(msg.contains(NAME), "{msg}");
        }
    }
    // The pristine run still reads, collisions in insertion order.
    let got = find_trips(NAME, at(&file, index.trip_block(42).unwrap()), 42).unwrap();
    assert_eq!(got, vec![b"first".to_vec(), b"second".to_vec()]);
}

#[test]
fn truncation_and_misplacement_are_detected() {
    let file = small_run();
    let index = open(&file).unwrap();
    for n in 0..file.len() {
        assert!(open(&file[..n]).is_err(), "prefix of {n} bytes");
        assert!(open(&file[n + 1..]).is_err(), "suffix from {}", n + 1);
    }
    let mut padded = vec![0];
    padded.extend_from_slice(&file);
    assert!(open(&padded).is_err());

    let end = file.len() - TRAILER_LEN;
    let footer = &file[end - footer_len(NAME, &file).unwrap()..end];
    for n in 0..footer.len() {
        assert!(RunIndex::parse(NAME, &footer[..n]).is_err());
        assert!(RunIndex::parse(NAME, &footer[n + 1..]).is_err());
    }
    let (trip, id) = (
        at(&file, index.trip_blocks()[0].clone()),
        at(&file, index.id_blocks()[0].clone()),
    );
    for n in 0..trip.len() {
        assert!(block_trips(NAME, &trip[..n]).is_err());
    }
    for n in 0..id.len() {
        assert!(block_ids(NAME, &id[..n]).is_err());
    }
    // A block of the wrong kind fails even though its CRC is good.
    assert!(find_ids(NAME, trip, 0).is_err());
    assert!(find_trips(NAME, id, 0).is_err());
}

/// Flips with the CRC recomputed exercise the structural checks behind it: never a panic, and
/// a bad count or length is an error.
#[test]
fn structural_corruption_behind_a_valid_crc_never_panics() {
    let file = small_run();
    let index = open(&file).unwrap();
    let end = file.len() - TRAILER_LEN;
    let footer = &file[end - footer_len(NAME, &file).unwrap()..end];
    let trip = at(&file, index.trip_blocks()[0].clone());
    let id = at(&file, index.id_blocks()[0].clone());
    let reseal = |bytes: &[u8], pos: usize, flip: u8| {
        let mut bad = bytes[..bytes.len() - CRC_LEN].to_vec();
        bad[pos] ^= flip;
        let c = crc32fast::hash(&bad);
        bad.extend_from_slice(&c.to_le_bytes());
        bad
    };
    for flip in [0x01, 0x80, 0xff] {
        for pos in 0..footer.len() - CRC_LEN {
            let _ = RunIndex::parse(NAME, &reseal(footer, pos, flip));
        }
        for pos in 0..trip.len() - CRC_LEN {
            let _ = block_trips(NAME, &reseal(trip, pos, flip));
        }
        for pos in 0..id.len() - CRC_LEN {
            let _ = block_ids(NAME, &reseal(id, pos, flip));
        }
    }
    // Counts and lengths: the block's entry count, the first value length, the trip block count.
    assert!(block_trips(NAME, &reseal(trip, 4, 0x80)).is_err());
    assert!(block_trips(NAME, &reseal(trip, BLOCK_HEADER + 8, 0x01)).is_err());
    assert!(block_ids(NAME, &reseal(id, 1, 0x01)).is_err());
    assert!(RunIndex::parse(NAME, &reseal(footer, 4 + 3 * 8, 0x01)).is_err());
    assert!(RunIndex::parse(NAME, &reseal(footer, 4 + 3 * 8 + 7, 0x80)).is_err());
}

#[test]
fn large_run_index_is_small() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut b = RunBuilder::new();
    let mut keys = Vec::with_capacity(200_000);
    for _ in 0..200_000 {
        let k: u64 = rng.random();
        keys.push(k);
        b.trip(k, value(&mut rng, 200));
    }
    let mut events = Vec::with_capacity(1_000_000);
    for i in 0..1_000_000 {
        let e: u64 = rng.random();
        events.push(e);
        b.id(e, keys[i % keys.len()]);
    }
    let file = b.finish();
    let index = open(&file).unwrap();
    assert_eq!((index.trips(), index.ids()), (200_000, 1_000_000));
    let blocks = index.trip_blocks().len() + index.id_blocks().len();
    let budget = 3 * 1_000_000 + 3 * 200_000 + 64 * blocks;
    assert!(
        index.memory_bytes() < budget,
        "{} bytes for {blocks} blocks, budget {budget}",
        index.memory_bytes()
    );
    for i in (0..200_000).step_by(9973) {
        let r = index.trip_block(keys[i]).unwrap();
        assert_eq!(find_trips(NAME, at(&file, r), keys[i]).unwrap().len(), 1);
        let r = index.id_block(events[i]).unwrap();
        assert_eq!(
            find_ids(NAME, at(&file, r), events[i]).unwrap(),
            vec![keys[i]]
        );
    }
}

#[test]
fn same_entries_give_identical_bytes() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let trips: Vec<(u64, Vec<u8>)> = (0..3000)
        .map(|_| (rng.random(), value(&mut rng, 100)))
        .collect();
    let ids: Vec<(u64, u64)> = (0..5000).map(|_| (rng.random(), rng.random())).collect();
    let build = |order: &[usize]| {
        let mut b = RunBuilder::new();
        for &i in order {
            b.trip(trips[i].0, trips[i].1.clone());
        }
        for &(e, t) in ids.iter().rev() {
            b.id(e, t);
        }
        b.finish()
    };
    let forward: Vec<usize> = (0..trips.len()).collect();
    let backward: Vec<usize> = forward.iter().rev().copied().collect();
    let a = build(&forward);
    assert_eq!(a, build(&forward));
    assert_eq!(
        a,
        build(&backward),
        "distinct keys: insertion order does not matter"
    );
}

/// The bytes of a fixed run are pinned: a change to the layout, the CRC or the Bloom filter's
/// hashing (which would make old runs answer "absent" for present keys) must bump RUN_FORMAT.
#[test]
fn format_is_frozen() {
    let mut b = RunBuilder::new();
    for i in 0..100u64 {
        b.trip(
            i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            i.to_le_bytes().to_vec(),
        );
        b.id(i, i / 3);
    }
    let file = b.finish();
    assert_eq!((file.len(), crc32fast::hash(&file)), (4034, 622_096_925));
}
