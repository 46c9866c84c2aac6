//! batch-verify's own fold (`batch_verify::fold`) against the reference fold the job uses, over
//! the job's generated traffic. It lives here because batch-verify must not depend on
//! `recon-pipeline`, whose generator makes the traffic.

use std::collections::HashMap;

use batch_verify::fold::differs_from_reference;
use recon_pipeline::generate::config::Ppm;
use recon_pipeline::generate::plan::RecordKind;
use recon_pipeline::generate::{TrafficConfig, plan};
use recon_schemas::event::Event;

/// The same over generated traffic, trip by trip: re-sends, conflicts, refunds, adjustments,
/// open and overpaid trips.
#[test]
fn the_verifiers_fold_is_the_reference_fold_on_generated_traffic() {
    let traffic = TrafficConfig {
        trips: 3_000,
        seed: 99,
        duplicate: Ppm::new(50_000).unwrap(),
        conflict: Ppm::new(50_000).unwrap(),
        ..TrafficConfig::default()
    };
    let mut trips: HashMap<String, Vec<Event>> = HashMap::new();
    for r in plan(&traffic) {
        let event = match r.kind {
            RecordKind::Valid(e) | RecordKind::ConflictingDuplicate(e) => e,
            // An exact re-send: the same bytes again.
            RecordKind::Duplicate(_) => recon_schemas::decode::decode(
                r.key.as_deref(),
                &r.payload,
                &recon_schemas::decode::Limits::default(),
            )
            .unwrap(),
            RecordKind::Poison(_) => continue,
        };
        trips.entry(event.trip_id.clone()).or_default().push(event);
    }
    let mut conflicted = 0;
    let mut statuses = std::collections::BTreeSet::new();
    for events in trips.values() {
        differs_from_reference(events).unwrap();
        let r = recon_schemas::balance::fold(events.iter()).unwrap();
        conflicted += usize::from(r.conflicting_duplicate);
        statuses.insert(r.status().as_str());
    }
    assert!(
        conflicted > 10,
        "the traffic exercises conflicts: {conflicted}"
    );
    assert_eq!(
        statuses.len(),
        3,
        "OPEN, BALANCED and DISCREPANCY: {statuses:?}"
    );
}
