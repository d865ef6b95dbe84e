//! How the property tests damage real inputs: byte overwrites, bit flips, a truncation and/or
//! inserted bytes, applied to one of a set of seed documents.
#![allow(dead_code)]

use proptest::prelude::*;
use proptest::sample::Index;

/// 256 cases per property; `PARSER_CASES=N` runs more when hunting.
pub fn cases() -> u32 {
    std::env::var("PARSER_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256)
}

#[derive(Debug, Clone)]
pub struct Mutation {
    seed: Index,
    edits: Vec<(Index, u8, bool)>,
    truncate: Option<Index>,
    insert: Option<(Index, Vec<u8>)>,
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    (
        any::<Index>(),
        prop::collection::vec((any::<Index>(), any::<u8>(), any::<bool>()), 0..6),
        prop::option::weighted(0.25, any::<Index>()),
        prop::option::weighted(
            0.15,
            (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16)),
        ),
    )
        .prop_map(|(seed, edits, truncate, insert)| Mutation {
            seed,
            edits,
            truncate,
            insert,
        })
}

impl Mutation {
    /// One of `seeds`, damaged.
    pub fn apply(&self, seeds: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = self.seed.get(seeds).clone();
        self.apply_to(&mut bytes);
        bytes
    }

    pub fn apply_to(&self, bytes: &mut Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        for (at, value, flip_bit) in &self.edits {
            let i = at.index(bytes.len());
            if *flip_bit {
                bytes[i] ^= 1 << (value % 8);
            } else {
                bytes[i] = *value;
            }
        }
        if let Some((at, extra)) = &self.insert {
            let i = at.index(bytes.len() + 1);
            bytes.splice(i..i, extra.iter().copied());
        }
        if let Some(at) = &self.truncate {
            bytes.truncate(at.index(bytes.len()));
        }
    }
}
