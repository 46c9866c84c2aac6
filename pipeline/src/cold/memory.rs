//! A cold tier in memory: the reference the run-backed tier is tested against, and the
//! property test's double.

use std::collections::HashMap;

use crate::state::evict::Evicted;

use super::{ColdError, ColdLookup};

/// Trips that left memory, by key, newest record first.
#[derive(Debug, Default)]
pub struct MemoryCold {
    trips: HashMap<u64, Vec<Vec<u8>>>,
    ids: HashMap<u64, Vec<u64>>,
}

impl MemoryCold {
    /// Keeps what left memory at one barrier (records already held are not stored again).
    pub fn add(&mut self, evicted: &[Evicted]) {
        for e in evicted {
            if let Some(r) = &e.record {
                self.trips.entry(e.key).or_default().insert(0, r.clone());
                for k in &e.ids {
                    let h = self.ids.entry(*k).or_default();
                    if !h.contains(&e.key) {
                        h.push(e.key);
                    }
                }
            }
        }
    }

    /// Records held.
    pub fn records(&self) -> usize {
        self.trips.values().map(Vec::len).sum()
    }

    /// Every newest record, one per trip key (collisions aside), for a final comparison.
    pub fn newest(&self) -> impl Iterator<Item = &[u8]> {
        self.trips
            .values()
            .filter_map(|v| v.first().map(Vec::as_slice))
    }
}

impl ColdLookup for MemoryCold {
    async fn trip_records(&mut self, key: u64) -> Result<Vec<(String, Vec<u8>)>, ColdError> {
        Ok(self
            .trips
            .get(&key)
            .map(|v| {
                v.iter()
                    .map(|r| ("memory".to_string(), r.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn id_holders(&mut self, event_key: u64) -> Result<Vec<u64>, ColdError> {
        Ok(self.ids.get(&event_key).cloned().unwrap_or_default())
    }
}
