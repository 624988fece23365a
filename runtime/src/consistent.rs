//! Consistent hashing over an endpoint set, by Envoy's two algorithms: a ring hash (each
//! endpoint hashed onto a ring as many times as its weight's share of `min_ring_size`, a key
//! going to the first point at or after its hash) and Maglev (a lookup table of a prime size,
//! filled by each endpoint's own permutation of the slots in turns proportional to its
//! weight, a key going to the slot of its hash). Both keep a key on its endpoint while the
//! endpoint stays, and move few other keys when one comes or goes.
//!
//! A table is built once per endpoint set, on its first hashed pick, so a pick costs a binary
//! search (ring) or one lookup (Maglev) whatever the number of endpoints. A key whose
//! endpoint is out (ejected, failing its checks) goes on to the next point of the ring, or the
//! next slot of the key's own probe sequence in the Maglev table: always the same one for the
//! same key, so that its requests stay together.

use crate::spec::HashTable;
// Spreads a key's bits, so that keys close together land far apart.
use crate::table::finalise as mix;

/// The largest ring, Envoy's `maximum_ring_size` default.
const MAX_RING: u64 = 8 * 1024 * 1024;

/// Points of the ring a key walks past at most, looking for an endpoint that is in.
const RING_WALK: usize = 65_536;

/// Slots of the Maglev table a key looks at, its own first, before the pick falls back.
const MAGLEV_PROBES: u64 = 64;

/// A built table: indexes into the endpoint list it was built from.
#[derive(Debug)]
pub(crate) enum Table {
    /// Points sorted by hash, each with its endpoint.
    Ring(Vec<(u64, u32)>),
    /// One endpoint per slot.
    Maglev(Vec<u32>),
}

/// A name's hash, with `salt` to draw independent ones.
fn name_hash(name: &str, salt: u64) -> u64 {
    mix(crate::table::key_hash(name.as_bytes()) ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

impl Table {
    /// The table of `kind` over `members`: (index, name, weight) of each endpoint that takes
    /// traffic, weights above 0.
    pub(crate) fn build(kind: HashTable, members: &[(u32, &str, u64)]) -> Table {
        match kind {
            HashTable::Ring { min_size } => Table::Ring(ring(members, u64::from(min_size))),
            HashTable::Maglev { size } => Table::Maglev(maglev(members, u64::from(size))),
        }
    }

    /// The endpoint (as an index) for `key` among those `eligible` accepts.
    pub(crate) fn pick(&self, key: u64, eligible: impl Fn(u32) -> bool) -> Option<u32> {
        let key = mix(key);
        match self {
            Table::Ring(points) => {
                if points.is_empty() {
                    return None;
                }
                let start = points.partition_point(|it| it.0 < key);
                // Walks on round the ring to the first eligible point (a bounded walk: with
                // every endpoint out, the pick falls back rather than circling a large ring).
                (0..points.len().min(RING_WALK)).map(|step| points[(start + step) % points.len()].1).find(|it| eligible(*it))
            }
            Table::Maglev(slots) => {
                let size = slots.len() as u64;
                if size == 0 {
                    return None;
                }
                let skip = mix(key ^ 0x6d61_676c_6576) % (size - 1).max(1) + 1;
                (0..MAGLEV_PROBES.min(size)).map(|probe| slots[((key % size + probe * skip) % size) as usize]).find(|it| eligible(*it))
            }
        }
    }
}

/// Each endpoint hashed onto the ring its share of the weight's worth of times, as Envoy
/// scales a ring: large enough for the lightest endpoint to have
/// `ceil(its share · min_size)` points (so at least `min_size` in all, and every endpoint at
/// least one), at most [`MAX_RING`]; the shares rounded cumulatively, so the whole ring keeps
/// the weights' proportions.
fn ring(members: &[(u32, &str, u64)], min_size: u64) -> Vec<(u64, u32)> {
    let total: u64 = members.iter().map(|it| it.2).sum();
    let Some(lightest) = members.iter().map(|it| it.2).filter(|it| *it > 0).min() else { return Vec::new() };
    let share = |weight: u64| weight as f64 / total as f64;
    let scale = ((share(lightest) * min_size as f64).ceil() / share(lightest)).min(MAX_RING as f64);
    let (mut target, mut made) = (0.0, 0u64);
    let mut points = Vec::new();
    for &(index, name, weight) in members {
        target += scale * share(weight);
        let mut replica = 0;
        while (made as f64) < target && (points.len() as u64) < MAX_RING {
            points.push((name_hash(name, replica), index));
            (made, replica) = (made + 1, replica + 1);
        }
    }
    // Ties (vanishingly rare) are broken by index, so the ring does not depend on the order the
    // points were made in.
    points.sort_unstable();
    points
}

/// Maglev's table of `size` slots (a prime): each endpoint has its permutation of the slots,
/// `(offset + i * skip) % size`, from two hashes of its name, and takes its next free slot in
/// turns; an endpoint of weight `w` takes a turn in `w / max weight` of the rounds, as Envoy
/// weighs them. Endpoints take their turns in the order of their names, so the table does not
/// depend on the order they were listed in; and the turns come from a queue of when each
/// endpoint's next one is due, so a light endpoint costs nothing in the rounds it sits out
/// (the fill is `size · log n`, not `size · n`).
fn maglev(members: &[(u32, &str, u64)], size: u64) -> Vec<u32> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    if members.is_empty() || size == 0 {
        return Vec::new();
    }
    let mut members = members.to_vec();
    members.sort_unstable_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(&b.0)));
    let max_weight = members.iter().map(|it| it.2).max().unwrap_or(1).max(1);
    struct Entry {
        index: u32,
        offset: u64,
        skip: u64,
        next: u64,
        weight: u64,
        turns: u64,
    }
    let mut entries: Vec<Entry> = members
        .iter()
        .map(|&(index, name, weight)| Entry {
            index,
            offset: name_hash(name, 0) % size,
            skip: name_hash(name, 1) % (size - 1).max(1) + 1,
            next: 0,
            weight: weight.max(1),
            turns: 0,
        })
        .collect();
    // An endpoint's k-th turn falls in the first round r (from 1) with r · weight at least
    // k · max weight: every round for the heaviest, every third for one of a third of it.
    let round_of = |entry: &Entry| u128::from(entry.turns * max_weight).div_ceil(u128::from(entry.weight)).max(1);
    let mut due: BinaryHeap<Reverse<(u128, usize)>> =
        entries.iter().enumerate().map(|(position, it)| Reverse((round_of(it), position))).collect();
    let mut slots = vec![u32::MAX; size as usize];
    let mut filled = 0;
    while filled < size {
        let Some(Reverse((_, position))) = due.pop() else { break };
        let entry = &mut entries[position];
        let mut slot = (entry.offset + entry.next * entry.skip) % size;
        while slots[slot as usize] != u32::MAX {
            entry.next += 1;
            slot = (entry.offset + entry.next * entry.skip) % size;
        }
        slots[slot as usize] = entry.index;
        entry.next += 1;
        entry.turns += 1;
        filled += 1;
        due.push(Reverse((round_of(entry), position)));
    }
    slots
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn shares(table: &Table, keys: u64) -> BTreeMap<u32, u64> {
        let mut shares = BTreeMap::new();
        for key in 0..keys {
            *shares.entry(table.pick(key, |_| true).expect("an endpoint")).or_insert(0) += 1;
        }
        shares
    }

    #[test]
    fn both_tables_spread_keys_by_weight_and_honour_their_sizes() {
        let members = [(0, "10.0.0.1:80", 1), (1, "10.0.0.2:80", 1), (2, "10.0.0.3:80", 2)];
        for kind in [HashTable::Ring { min_size: 1024 }, HashTable::Maglev { size: 65_537 }] {
            let table = Table::build(kind, &members);
            match &table {
                Table::Ring(points) => assert!((1024..1100).contains(&points.len()), "{}", points.len()),
                Table::Maglev(slots) => {
                    assert_eq!(slots.len(), 65_537);
                    let mut counts = BTreeMap::new();
                    for slot in slots {
                        *counts.entry(*slot).or_insert(0u64) += 1;
                    }
                    // Maglev's slots follow the weights to within a slot or two per round.
                    assert!(counts[&2].abs_diff(32_768) < 100 && counts[&0].abs_diff(16_384) < 100, "{counts:?}");
                }
            }
            let shares = shares(&table, 40_000);
            // A quarter, a quarter and a half of the keys, within the table's granularity.
            let tolerance = if matches!(kind, HashTable::Ring { .. }) { 2_500 } else { 800 };
            assert!(shares[&0].abs_diff(10_000) < tolerance && shares[&2].abs_diff(20_000) < tolerance, "{kind:?}: {shares:?}");
        }
    }

    #[test]
    fn keys_stay_when_another_endpoint_goes_and_move_on_when_theirs_is_out() {
        let three = [(0, "a:80", 1), (1, "b:80", 1), (2, "c:80", 1)];
        let two = [(0, "a:80", 1), (1, "b:80", 1)];
        for kind in [HashTable::Ring { min_size: 1024 }, HashTable::Maglev { size: 65_537 }] {
            let (before, after) = (Table::build(kind, &three), Table::build(kind, &two));
            let mut moved = 0;
            for key in 0..10_000u64 {
                let was = before.pick(key, |_| true).expect("an endpoint");
                let now = after.pick(key, |_| true).expect("an endpoint");
                moved += u64::from(was != 2 && was != now);
                // With `c` out of the same table, each of its keys goes to one other endpoint,
                // the same each time.
                let without = before.pick(key, |it| it != 2).expect("an endpoint");
                assert_ne!(without, 2);
                assert_eq!(without, before.pick(key, |it| it != 2).expect("an endpoint"));
                if was != 2 {
                    assert_eq!(without, was, "{kind:?}: key {key} moved although its endpoint is in");
                }
            }
            // Few of the other endpoints' keys move: the ring's points are shared out anew by
            // weight (as Envoy's are), Maglev's slots refilled.
            let bound = if matches!(kind, HashTable::Ring { .. }) { 1_500 } else { 600 };
            assert!(moved < bound, "{kind:?}: {moved} keys of the endpoints that stayed moved");
        }
    }

    #[test]
    fn a_maglev_table_does_not_depend_on_the_order_of_its_endpoints_and_heavy_weights_cost_no_rounds() {
        let listed = [(0, "a:80", 1), (1, "b:80", 1_000_000), (2, "c:80", 3)];
        let reordered = [(2, "c:80", 3), (0, "a:80", 1), (1, "b:80", 1_000_000)];
        let (Table::Maglev(one), Table::Maglev(other)) =
            (Table::build(HashTable::Maglev { size: 65_537 }, &listed), Table::build(HashTable::Maglev { size: 65_537 }, &reordered))
        else {
            panic!("Maglev tables")
        };
        assert_eq!(one, other);
        // Each endpoint takes a slot at least (its first turn is in the first round).
        assert!([0, 1, 2].iter().all(|index| one.contains(index)));
        assert!(one.iter().filter(|it| **it == 1).count() > 65_000);
    }

    #[test]
    fn a_ring_keeps_the_weights_proportions_with_many_light_endpoints_and_a_heavy_one() {
        let names: Vec<String> = (0..2000).map(|it| format!("10.0.{}.{}:80", it / 256, it % 256)).collect();
        let mut members: Vec<(u32, &str, u64)> = names.iter().enumerate().map(|(index, name)| (index as u32, name.as_str(), 1)).collect();
        members.push((2000, "heavy:80", 1_000_000));
        let Table::Ring(points) = Table::build(HashTable::Ring { min_size: 1024 }, &members) else { panic!("a ring") };
        let heavy = points.iter().filter(|it| it.1 == 2000).count() as f64 / points.len() as f64;
        assert!((heavy - 1_000_000.0 / 1_002_000.0).abs() < 0.001, "{heavy}");
        // Every light endpoint keeps its point.
        let lights: std::collections::BTreeSet<u32> = points.iter().map(|it| it.1).filter(|it| *it < 2000).collect();
        assert_eq!(lights.len(), 2000);
        assert!(points.len() as u64 <= MAX_RING);
    }

    #[test]
    fn empty_tables_pick_nothing() {
        for kind in [HashTable::Ring { min_size: 1024 }, HashTable::Maglev { size: 13 }] {
            assert_eq!(Table::build(kind, &[]).pick(7, |_| true), None);
            assert_eq!(Table::build(kind, &[(0, "a:80", 1)]).pick(7, |_| false), None);
        }
    }
}
