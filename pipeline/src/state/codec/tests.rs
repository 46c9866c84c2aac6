//! Tests of the state file format.

use super::*;
use recon_schemas::event::{Event, EventType};

fn ev(trip: &str, id: u128, cents: i64) -> Event {
    crate::state::tests::event(trip, id, EventType::TripCharge, cents)
}

#[test]
fn full_plus_deltas_restore_the_same_state() {
    let mut s = State::default();
    s.apply(&ev("a", 1, 100), 0).unwrap();
    s.apply(&ev("b", 2, 200), 1).unwrap();
    let full = encode_full(&s);
    s.take_changed();
    s.apply(&ev("a", 3, 50), 0).unwrap();
    let changed = s.take_changed();
    let delta = encode_delta(changed.iter().map(|c| s.trip(*c)), []);

    let mut r = State::default();
    apply_file(&mut r, "full", &full, true).unwrap();
    apply_file(&mut r, "delta", &delta, false).unwrap();
    assert_eq!(r.trips(), 2);
    for t in s.iter() {
        let got = r.get(t.trip_id()).unwrap();
        assert_eq!(got.balance(), t.balance(), "{}", t.trip_id());
        assert_eq!(got.seen, t.seen, "{}", t.trip_id());
    }
    assert!(apply_file(&mut State::default(), "d", &delta, true).is_err());
    assert!(apply_file(&mut State::default(), "x", b"\xff\xff", true).is_err());
}

#[test]
fn a_compacted_chain_restores_what_the_chain_restores() {
    let mut s = State::default();
    for t in 0..20u128 {
        s.apply(&ev(&format!("t{t}"), t, 100 + t as i64), 0)
            .unwrap();
    }
    let mut chain = vec![("full".to_string(), encode_full(&s))];
    s.take_changed();
    for round in 1..6u128 {
        for t in (round * 3)..(round * 3 + 5) {
            s.apply(&ev(&format!("t{t}"), 1000 * round + t, 7), 0)
                .unwrap();
        }
        let changed = s.take_changed();
        let gone = [format!("t{}", round * 2), format!("t{}", round + 30)];
        let delta = encode_delta(
            changed.iter().map(|c| s.trip(*c)),
            gone.iter().map(String::as_str),
        );
        chain.push((format!("d{round}"), delta));
    }
    let mut want = State::default();
    for (i, (p, b)) in chain.iter().enumerate() {
        apply_file(&mut want, p, b, i == 0).unwrap();
    }
    let compacted = compact(&chain).unwrap();
    assert_eq!(compact(&chain).unwrap(), compacted, "deterministic");
    let mut got = State::default();
    apply_file(&mut got, "compacted", &compacted, true).unwrap();
    assert_eq!(got.trips(), want.trips());
    assert!(want.trips() < 20, "the tombstones removed trips");
    for t in want.iter() {
        let g = got.get(t.trip_id()).unwrap();
        assert_eq!(g.balance(), t.balance(), "{}", t.trip_id());
        assert_eq!(g.seen, t.seen, "{}", t.trip_id());
    }
    // A chain that does not start with a full file, or has a second one, is refused.
    assert!(compact(&chain[1..]).is_err());
    let twice = [chain[0].clone(), chain[0].clone()];
    assert!(compact(&twice).is_err());
}

#[test]
fn restoring_a_chain_newest_first_equals_applying_it_in_order() {
    for seed in 1..=300u64 {
        let mut x = seed;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut s = State::default();
        let mut chain = Vec::new();
        let mut id = 0u128;
        for round in 0..8 {
            for _ in 0..next(12) + 1 {
                let t = format!("t{}", next(16));
                id += 1;
                // Now and then an id again: duplicates and conflicts in the seen lists.
                let eid = if next(5) == 0 { id / 2 + 1 } else { id };
                let _ = s.apply(&ev(&t, eid, 1 + next(900) as i64), next(3) as i32);
            }
            let changed = s.take_changed();
            // Tombstones: trips in this delta, trips of older files, trips never seen.
            let gone: Vec<String> = (0..next(4)).map(|_| format!("t{}", next(20))).collect();
            let bytes = if round == 0 {
                encode_full(&s)
            } else {
                encode_delta(
                    changed.iter().map(|c| s.trip(*c)),
                    gone.iter().map(String::as_str),
                )
            };
            chain.push((format!("f{round}"), bytes));
        }
        let mut want = State::default();
        for (i, (p, b)) in chain.iter().enumerate() {
            apply_file(&mut want, p, b, i == 0).unwrap();
        }
        let mut got = State::default();
        restore_chain(&mut got, &chain).unwrap();
        assert_eq!(got.trips(), want.trips(), "seed {seed}");
        for t in want.iter() {
            let g = got.get(t.trip_id()).unwrap();
            assert_eq!(g.balance(), t.balance(), "seed {seed} {}", t.trip_id());
            assert_eq!(g.seen, t.seen, "seed {seed} {}", t.trip_id());
            assert_eq!(g.partition, t.partition, "seed {seed} {}", t.trip_id());
        }
        // The id index answers alike: every id again, on another trip.
        for e in 1..=id {
            let probe = ev("probe", e, 1);
            let answer = |s: &mut State| match s.apply(&probe, 0).unwrap() {
                crate::state::Outcome::EventIdReused { holder } => {
                    s.trip(holder).trip_id().to_string()
                }
                o => format!("{o:?}"),
            };
            assert_eq!(answer(&mut got), answer(&mut want), "seed {seed} id {e}");
        }
    }
    let mut s = State::default();
    s.apply(&ev("a", 1, 100), 0).unwrap();
    let delta = encode_delta(std::iter::empty(), std::iter::empty());
    assert!(restore_chain(&mut State::default(), &[("d".to_string(), delta)]).is_err());
}

/// The full file read in chunks of any size (one byte, a few, all) folds to the same bytes as
/// the file read whole; a truncated full file, or one that carries tombstones, is refused.
#[test]
fn a_full_file_folded_in_chunks_is_the_full_file_folded_whole() {
    let mut s = State::default();
    for t in 0..40u128 {
        s.apply(&ev(&format!("t{t}"), t, 100 + t as i64), (t % 3) as i32)
            .unwrap();
    }
    let full = encode_full(&s);
    s.take_changed();
    for t in 5..12u128 {
        s.apply(&ev(&format!("t{t}"), 1000 + t, 7), 0).unwrap();
    }
    let changed = s.take_changed();
    let delta = encode_delta(changed.iter().map(|c| s.trip(*c)), ["t1", "t30"]);
    let chain = [
        ("full".to_string(), full.clone()),
        ("d1".to_string(), delta.clone()),
    ];
    let want = compact(&chain).unwrap();
    let chunked = |bytes: &[u8], size: usize| -> Result<Vec<u8>, CodecError> {
        let mut fold = Fold::default();
        fold.add("d1", &delta, false)?;
        let mut chunks = bytes.chunks(size).map(bytes::Bytes::copy_from_slice);
        fold.add_full_chunks("full", bytes.len(), || Ok(chunks.next()))?;
        Ok(fold.finish())
    };
    for size in [1, 2, 3, 7, 64, 1000, full.len()] {
        assert_eq!(
            chunked(&full, size).unwrap(),
            want,
            "chunks of {size} bytes"
        );
    }
    for cut in [1, full.len() / 2, full.len() - 1] {
        assert!(chunked(&full[..cut], 5).is_err(), "truncated at {cut}");
    }
    let with_tombstones = postcard::to_stdvec(&StateFile::<TripRecord, String> {
        format: STATE_FORMAT,
        full: true,
        trips: Vec::new(),
        evicted: vec!["t2".into()],
    })
    .unwrap();
    assert!(chunked(&with_tombstones, 3).is_err());
    assert!(chunked(&delta, 3).is_err(), "a delta is not a full file");
}

#[test]
fn borrowed_records_decode_as_owned_records() {
    let mut s = State::default();
    for t in 0..9u128 {
        // Up to 8 ids a trip: past the inline capacity of `Seen` too.
        for k in 0..t {
            s.apply(&ev(&format!("trip-{t}"), t * 100 + k, 100 + k as i64), 3)
                .unwrap();
        }
    }
    assert!(s.trips() > 0);
    let file: StateFile =
        postcard::from_bytes(&encode_delta(s.iter(), ["gone-1", "gone-2"])).unwrap();
    assert_eq!(file.evicted, ["gone-1", "gone-2"]);
    assert!(!file.full);
    assert_eq!(file.trips.len(), s.trips());
    for (r, t) in file.trips.iter().zip(s.iter()) {
        let b = t.balance();
        assert_eq!(r.trip_id, t.trip_id());
        assert_eq!(r.currency, b.currency.code());
        assert_eq!((r.charged, r.events, r.partition), (b.charged, b.events, 3));
        assert_eq!(r.seen, t.seen.to_vec(), "{}", t.trip_id());
    }
    let one: TripRecord = postcard::from_bytes(&encode_trip(s.iter().next().unwrap())).unwrap();
    assert_eq!(one.trip_id, file.trips[0].trip_id);
}

/// A new job's first checkpoint builds its full file from the copies of the changed trips:
/// when every trip changed, those are the state, and the file is `encode_full`'s to the byte.
#[test]
fn a_full_file_of_the_copies_is_the_full_file_when_every_trip_changed() {
    let mut s = State::default();
    for t in 0..50u128 {
        s.apply(
            &ev(&format!("t{}", t % 17), t, 100 + t as i64),
            (t % 3) as i32,
        )
        .unwrap();
    }
    assert!(s.all_changed());
    let full = encode_full(&s);
    let copies: Vec<TripState> = s
        .take_changed()
        .iter()
        .map(|c| s.trip(*c).clone())
        .collect();
    assert_eq!(encode_full_of(&copies), full);
    // Once a trip is unchanged, the copies are no longer the state.
    s.apply(&ev("t1", 1000, 5), 1).unwrap();
    assert!(!s.all_changed());
}
