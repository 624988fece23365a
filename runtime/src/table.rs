//! Compiled lookup structures: static data laid out by meshc at build time.
//!
//! - [`StrIndex`]: a string-keyed static hash table (FNV-1a, open addressing, at most half
//!   full), whose slots meshc computed; a lookup hashes the key once and compares strings
//!   only when the slot's hash tag matches. The host dispatch and the path indexes are `StrIndex`es.
//! - [`IndexedTable`]: a route table too large for straight-line code. Every alternative (one
//!   `match` block of a route) is a candidate for a request only if its path condition allows
//!   the request's path: the path's exact entry, or else its longest prefix entry, is found by
//!   hashing, and links from each entry to the next shorter prefix it starts with give the
//!   rest. Alternatives without an exact or prefix path condition are candidates always.
//!   Candidates are tried in route order, so the first match still wins; the cost grows with
//!   the number of candidates, not with the number of routes.
//!
//! meshc computes the same hash when it lays out the slots (`codegen/src/emit/hash.rs`); the
//! same test vectors below and in codegen pin the two copies together.

use crate::__codegen::Regex;
use crate::head::RequestHead;
use crate::spec::Decision;

/// A string condition, as static data.
#[derive(Debug)]
pub enum Str {
    /// Equal.
    Exact(&'static str),
    /// Starts with.
    Prefix(&'static str),
    /// Matches (anchored) a regex.
    Regex(&'static Regex),
}

impl Str {
    /// Whether `value` satisfies the condition.
    pub fn test(&self, value: &str) -> bool {
        match self {
            Str::Exact(it) => bytes_eq(value.as_bytes(), it.as_bytes()),
            Str::Prefix(it) => value.len() >= it.len() && bytes_eq(&value.as_bytes()[..it.len()], it.as_bytes()),
            Str::Regex(it) => it.is_match(value),
        }
    }
}

/// A condition on something that may be absent (a header, a query parameter).
#[derive(Debug)]
pub enum Presence {
    /// Present with a matching value.
    Value(Str),
    /// Present.
    Present,
    /// Absent.
    Absent,
}

impl Presence {
    fn test(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Presence::Value(condition), Some(value)) => condition.test(value),
            (Presence::Present, Some(_)) | (Presence::Absent, None) => true,
            _ => false,
        }
    }
}

/// One condition of an alternative.
#[derive(Debug)]
pub enum Cond {
    /// The authority.
    Authority(Str),
    /// The path.
    Path(Str),
    /// The method.
    Method(Str),
    /// A header, by lower-case name.
    Header(&'static str, Presence),
    /// A query parameter.
    Query(&'static str, Presence),
}

impl Cond {
    /// Whether the request satisfies the condition.
    pub fn test(&self, head: &RequestHead<'_>) -> bool {
        match self {
            Cond::Authority(it) => it.test(head.authority()),
            Cond::Path(it) => it.test(head.path()),
            Cond::Method(it) => it.test(head.method()),
            Cond::Header(name, it) => it.test(head.header(name).as_deref()),
            Cond::Query(name, it) => it.test(head.query_param(name)),
        }
    }
}

/// One alternative: all its conditions must hold, and its path condition, when it is exact or
/// a prefix, which the index checks and `conditions` leaves out.
#[derive(Debug)]
pub struct Alternative {
    /// The conditions.
    pub conditions: &'static [Cond],
    /// What happens when it is the first that matches.
    pub decision: Decision<'static>,
}

/// The hash of a key in a static index: the key's 8-byte little-endian words folded by
/// multiply and rotate (a short or ragged tail is read as overlapping loads, as wyhash does),
/// seeded with the length, then murmur3's 64-bit finaliser so that the low bits that pick a
/// slot depend on every byte. The prefixes of one path hash independently, so a CPU overlaps
/// their computations.
#[inline]
pub fn key_hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let word = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(word)
    };
    let half = |at: usize| {
        let mut half = [0u8; 4];
        half.copy_from_slice(&bytes[at..at + 4]);
        u64::from(u32::from_le_bytes(half))
    };
    let mix = |hash: u64, word: u64| (hash ^ word).wrapping_mul(K).rotate_left(31);
    let len = bytes.len();
    let mut hash = (len as u64).wrapping_mul(K);
    if len >= 8 {
        let mut at = 0;
        while at + 8 <= len {
            hash = mix(hash, word(at));
            at += 8;
        }
        if at < len {
            hash = mix(hash, word(len - 8));
        }
    } else if len >= 4 {
        hash = mix(hash, half(0) | half(len - 4) << 32);
    } else if len > 0 {
        hash = mix(hash, u64::from(bytes[0]) | u64::from(bytes[len / 2]) << 8 | u64::from(bytes[len - 1]) << 16);
    }
    finalise(hash)
}

/// murmur3's 64-bit finaliser: every input bit reaches every output bit.
#[inline]
pub(crate) fn finalise(mut hash: u64) -> u64 {
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// Byte-string equality for the short strings of route tables, inline: overlapping 8-byte (or
/// 4-byte) loads from both ends instead of a call to `memcmp`, which costs more than the
/// comparison for strings this short.
#[inline]
pub fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len();
    if len != b.len() {
        return false;
    }
    let word = |bytes: &[u8], at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(word)
    };
    let half = |bytes: &[u8], at: usize| {
        let mut half = [0u8; 4];
        half.copy_from_slice(&bytes[at..at + 4]);
        u32::from_le_bytes(half)
    };
    match len {
        0 => true,
        1..=3 => a[0] == b[0] && a[len / 2] == b[len / 2] && a[len - 1] == b[len - 1],
        4..=7 => half(a, 0) == half(b, 0) && half(a, len - 4) == half(b, len - 4),
        8..=32 => {
            let mut at = 0;
            while at + 8 < len {
                if word(a, at) != word(b, at) {
                    return false;
                }
                at += 8;
            }
            word(a, len - 8) == word(b, len - 8)
        }
        _ => a == b,
    }
}

/// A static hash table from strings to values, laid out by meshc.
#[derive(Debug)]
pub struct StrIndex<T: 'static> {
    /// A power-of-two number of slots, each `(tag, index)`: `index` is 0 for an empty slot or
    /// an index into `entries` plus one, and `tag` the upper half of that key's hash, so that
    /// most probes that miss need no string comparison. A key's probe sequence starts at
    /// `hash & (len - 1)` and goes up, wrapping.
    pub slots: &'static [(u32, u32)],
    /// The keys and values, sorted by key.
    pub entries: &'static [(&'static str, T)],
}

impl<T> StrIndex<T> {
    /// The value of `key`.
    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<&T> {
        self.get_hashed(key_hash(key), key)
    }

    /// The value of `key`, whose [`key_hash`] the caller computed.
    #[inline]
    pub fn get_hashed(&self, hash: u64, key: &[u8]) -> Option<&T> {
        let mask = self.slots.len().wrapping_sub(1);
        let tag = (hash >> 32) as u32;
        let mut at = hash as usize & mask;
        // At most every slot once, although meshc keeps tables half empty.
        for _ in 0..self.slots.len() {
            let (slot_tag, index) = self.slots[at];
            if index == 0 {
                return None;
            }
            if slot_tag == tag {
                let (candidate, value) = self.entries.get(index as usize - 1)?;
                if bytes_eq(candidate.as_bytes(), key) {
                    return Some(value);
                }
            }
            at = (at + 1) & mask;
        }
        None
    }
}

/// How many candidate lists a lookup merges without allocating.
const MERGE_WIDTH: usize = 8;

/// An exact path or a path prefix of an [`IndexedTable`].
#[derive(Debug)]
pub struct PathEntry {
    /// The first of `alternatives`, held here so that the common lookup (one candidate list,
    /// whose first alternative matches) reads no list.
    pub first: u32,
    /// The alternatives (ascending, never empty) whose path condition is this one.
    pub alternatives: &'static [u32],
    /// The longest prefix in the table's `prefixes` that this path or prefix starts with
    /// (for a prefix, a shorter one), as an index into `prefixes.entries`; [`PathEntry::NONE`]
    /// when there is none.
    pub parent: u32,
}

impl PathEntry {
    /// No parent.
    pub const NONE: u32 = u32::MAX;
}

/// A route table as indexed static data.
#[derive(Debug)]
pub struct IndexedTable {
    /// Alternatives in route order.
    pub alternatives: &'static [Alternative],
    /// Exact paths.
    pub exact_paths: StrIndex<PathEntry>,
    /// The lengths of the exact paths as a bit set: bit `n` for length `n` below 63, bit 63
    /// for any longer one. A path whose length has no bit needs no exact probe.
    pub exact_lengths: u64,
    /// Path prefixes.
    pub prefixes: StrIndex<PathEntry>,
    /// The distinct lengths of `prefixes`, ascending.
    pub prefix_lengths: &'static [u32],
    /// Alternatives with no exact or prefix path condition, ascending.
    pub always: &'static [u32],
    /// The decision when none matches (a catch-all route's, or no route).
    pub otherwise: Decision<'static>,
}

impl IndexedTable {
    /// The first matching alternative's decision.
    ///
    /// The candidates are the path-free alternatives and those of every exact path or prefix
    /// that the request's path equals or starts with. The path's entry is found with one probe
    /// when the path is an exact path of the table, else with one probe per prefix length,
    /// longest first, up to the first hit; the entry's parents are the shorter prefixes. The
    /// candidate lists are merged in route order, and the first candidate that matches wins.
    pub fn lookup(&self, head: &RequestHead<'_>) -> Decision<'static> {
        let path = head.path().as_bytes();
        let length_bit = 1u64 << path.len().min(63);
        let mut entry = if self.exact_lengths & length_bit != 0 { self.exact_paths.get(path) } else { None };
        if entry.is_none() {
            entry = self
                .prefix_lengths
                .iter()
                .rev()
                .filter(|length| **length as usize <= path.len())
                .find_map(|length| self.prefixes.get(&path[..*length as usize]));
        }
        // The common cases: no path-free alternatives, and a path under no other prefix.
        if self.always.is_empty() {
            match entry {
                None => return self.otherwise,
                Some(entry) if entry.parent == PathEntry::NONE => {
                    return match self.try_alternative(entry.first, head) {
                        Some(decision) => decision,
                        None => self.first_of(entry.alternatives.get(1..).unwrap_or_default(), head),
                    };
                }
                Some(_) => {}
            }
        }
        let mut fixed: [&'static [u32]; MERGE_WIDTH] = [&[]; MERGE_WIDTH];
        let mut lists: Vec<&'static [u32]> = Vec::new();
        let mut count = 0;
        for list in std::iter::once(self.always).chain(std::iter::successors(entry, |it| self.parent(it)).map(|it| it.alternatives)) {
            if list.is_empty() {
                continue;
            }
            if count < MERGE_WIDTH {
                fixed[count] = list;
                count += 1;
            } else {
                lists.push(list);
            }
        }
        match count {
            0 => return self.otherwise,
            // The common case: one list, already in route order.
            1 => return self.first_of(fixed[0], head),
            _ => {}
        }
        if !lists.is_empty() {
            // More candidate lists than the merge holds (a path under many nested prefixes):
            // visit the union in route order instead.
            let mut all: Vec<u32> = fixed.iter().chain(lists.iter()).flat_map(|it| it.iter().copied()).collect();
            all.sort_unstable();
            return all.into_iter().find_map(|it| self.try_alternative(it, head)).unwrap_or(self.otherwise);
        }
        // A k-way merge visits the candidates in route order.
        let mut positions = [0usize; MERGE_WIDTH];
        loop {
            let mut best: Option<(usize, u32)> = None;
            for (which, list) in fixed[..count].iter().enumerate() {
                if let Some(&candidate) = list.get(positions[which])
                    && best.is_none_or(|it| candidate < it.1)
                {
                    best = Some((which, candidate));
                }
            }
            let Some((which, candidate)) = best else { return self.otherwise };
            positions[which] += 1;
            if let Some(decision) = self.try_alternative(candidate, head) {
                return decision;
            }
        }
    }

    /// The decision of the first alternative of `list` (ascending) that matches.
    #[inline]
    fn first_of(&self, list: &[u32], head: &RequestHead<'_>) -> Decision<'static> {
        list.iter().find_map(|it| self.try_alternative(*it, head)).unwrap_or(self.otherwise)
    }

    fn parent(&self, entry: &PathEntry) -> Option<&PathEntry> {
        self.prefixes.entries.get(entry.parent as usize).map(|it| &it.1)
    }

    fn try_alternative(&self, index: u32, head: &RequestHead<'_>) -> Option<Decision<'static>> {
        let alternative = self.alternatives.get(index as usize)?;
        alternative.conditions.iter().all(|it| it.test(head)).then_some(alternative.decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Fault, Forward, HeaderOps, PathRewrite, Retries, RouteStats};

    fn leak<T>(value: T) -> &'static T {
        Box::leak(Box::new(value))
    }

    fn forward(route: &'static str) -> Decision<'static> {
        Decision::Forward(leak(Forward {
            route,
            stats: leak(RouteStats::new("table", route)),
            destinations: &[],
            timeout_ms: None,
            path_rewrite: PathRewrite::None,
            authority_rewrite: None,
            request_headers: HeaderOps::NONE,
            response_headers: HeaderOps::NONE,
            retries: Retries::NONE,
            fault: Fault::NONE,
            rate_limit: None,
            mirror: None,
        }))
    }

    fn route_of(decision: Decision<'static>) -> Option<&'static str> {
        match decision {
            Decision::Forward(it) => Some(it.route),
            _ => None,
        }
    }

    /// Builds the index the way meshc does, from alternatives in order.
    fn table(alternatives: Vec<(Vec<Cond>, &'static str)>) -> IndexedTable {
        let mut exact: std::collections::BTreeMap<&'static str, Vec<u32>> = Default::default();
        let mut prefixes: std::collections::BTreeMap<&'static str, Vec<u32>> = Default::default();
        let mut always = Vec::new();
        for (position, (conditions, _)) in alternatives.iter().enumerate() {
            let path = conditions.iter().find_map(|it| match it {
                Cond::Path(Str::Exact(it)) => Some((true, *it)),
                Cond::Path(Str::Prefix(it)) => Some((false, *it)),
                _ => None,
            });
            match path {
                Some((true, it)) => exact.entry(it).or_default().push(position as u32),
                Some((false, it)) => prefixes.entry(it).or_default().push(position as u32),
                None => always.push(position as u32),
            }
        }
        // The longest prefix that `key` starts with, shorter than `key` unless `or_equal`.
        let keys: Vec<&'static str> = prefixes.keys().copied().collect();
        let parent = |key: &str, or_equal: bool| {
            (0..=key.len())
                .rev()
                .filter(|length| or_equal || *length < key.len())
                .find_map(|length| key.get(..length).and_then(|prefix| keys.binary_search(&prefix).ok()))
                .map_or(PathEntry::NONE, |it| it as u32)
        };
        let rows = |map: std::collections::BTreeMap<&'static str, Vec<u32>>, or_equal: bool| {
            index(
                map.into_iter()
                    .map(|(key, list)| (key, PathEntry { first: list[0], alternatives: list.leak(), parent: parent(key, or_equal) }))
                    .collect(),
            )
        };
        let exact_lengths = exact.keys().fold(0u64, |bits, it| bits | 1 << it.len().min(63));
        let mut lengths: Vec<u32> = prefixes.keys().map(|it| it.len() as u32).collect();
        lengths.sort_unstable();
        lengths.dedup();
        IndexedTable {
            alternatives: alternatives
                .into_iter()
                .map(|(conditions, route)| Alternative { conditions: conditions.leak(), decision: forward(route) })
                .collect::<Vec<_>>()
                .leak(),
            exact_paths: rows(exact, true),
            exact_lengths,
            prefixes: rows(prefixes, false),
            prefix_lengths: lengths.leak(),
            always: always.leak(),
            otherwise: Decision::NoRoute,
        }
    }

    /// Lays out a static index the way meshc does.
    fn index<T>(entries: Vec<(&'static str, T)>) -> StrIndex<T> {
        let mut slots = vec![(0u32, 0u32); (entries.len() * 2).next_power_of_two()];
        let mask = slots.len() - 1;
        for (position, (key, _)) in entries.iter().enumerate() {
            let hash = key_hash(key.as_bytes());
            let mut at = hash as usize & mask;
            while slots[at].1 != 0 {
                at = (at + 1) & mask;
            }
            slots[at] = ((hash >> 32) as u32, position as u32 + 1);
        }
        StrIndex { slots: slots.leak(), entries: entries.leak() }
    }

    #[test]
    fn key_hash_matches_codegen() {
        // The same vectors are in codegen/src/emit/hash.rs: meshc lays out slots with them.
        for (key, expected) in HASH_VECTORS {
            assert_eq!(key_hash(key.as_bytes()), expected, "{key:?}");
        }
    }

    const HASH_VECTORS: [(&str, u64); 9] = [
        ("", 0x0000_0000_0000_0000),
        ("a", 0x9319_0fe0_ac70_8b6c),
        ("ab", 0x827e_0f84_4b71_ec45),
        ("abcd", 0xe041_660d_4b14_0cd2),
        ("abcdefg", 0xb84e_bd50_1a62_c385),
        ("/api/v1", 0x651b_de73_1ecc_3190),
        ("12345678", 0xaf44_b575_e947_fcec),
        ("123456789", 0xc94d_2555_85cf_0335),
        ("reviews.default.svc.cluster.local:9080", 0x96fa_7de2_03a9_0816),
    ];

    #[test]
    fn bytes_eq_is_slice_equality() {
        let samples: Vec<Vec<u8>> =
            (0..40).flat_map(|len| [vec![b'a'; len], (0..len as u8).collect(), (0..len as u8).rev().collect()]).collect();
        for a in &samples {
            for b in &samples {
                assert_eq!(bytes_eq(a, b), a == b, "{a:?} {b:?}");
            }
            // One byte different anywhere is seen.
            for at in 0..a.len() {
                let mut c = a.clone();
                c[at] ^= 1;
                assert!(!bytes_eq(a, &c), "{a:?} differs at {at}");
            }
        }
    }

    #[test]
    fn a_static_index_finds_its_keys_and_nothing_else() {
        let keys: Vec<&'static str> = (0..300).map(|it| &*format!("/k{it}").leak()).collect();
        let index = index(keys.iter().enumerate().map(|(value, key)| (*key, value)).collect());
        for (value, key) in keys.iter().enumerate() {
            assert_eq!(index.get(key.as_bytes()), Some(&value));
        }
        for missing in ["", "/k", "/k300", "/k1x", "\u{e9}"] {
            assert_eq!(index.get(missing.as_bytes()), None);
        }
        let empty: StrIndex<u32> = StrIndex { slots: &[(0, 0)], entries: &[] };
        assert_eq!(empty.get(b"/"), None);
        // A full table (meshc never makes one) still ends its probe.
        let tag = (key_hash(b"a") >> 32) as u32;
        let full: StrIndex<u32> = StrIndex { slots: leak([(tag, 1)]), entries: &[("a", 7)] };
        assert_eq!((full.get(b"a"), full.get(b"b")), (Some(&7), None));
    }

    #[test]
    fn paths_split_inside_a_character_are_not_a_problem() {
        let table = table(vec![(vec![Cond::Path(Str::Prefix("/\u{e9}"))], "accent"), (vec![Cond::Path(Str::Prefix("/x"))], "x")]);
        assert_eq!(lookup(&table, "/\u{e9}t\u{e9}", &[]), Some("accent"));
        assert_eq!(lookup(&table, "/\u{e8}", &[]), None);
        assert_eq!(lookup(&table, "/xy", &[]), Some("x"));
    }

    fn lookup(table: &IndexedTable, path: &str, headers: &[(&'static str, &'static str)]) -> Option<&'static str> {
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, http::HeaderValue::from_static(value));
        }
        route_of(table.lookup(&RequestHead::from_parts("GET", "h", path, None, &map)))
    }

    #[test]
    fn candidates_are_tried_in_route_order_across_index_kinds() {
        let table = table(vec![
            (vec![Cond::Path(Str::Prefix("/api/")), Cond::Header("x-canary", Presence::Present)], "canary"),
            (vec![Cond::Header("end-user", Presence::Value(Str::Exact("jason")))], "jason"),
            (vec![Cond::Path(Str::Exact("/api/v1"))], "exact"),
            (vec![Cond::Path(Str::Prefix("/api/"))], "api"),
            (vec![Cond::Path(Str::Prefix("/"))], "root"),
        ]);
        assert_eq!(lookup(&table, "/api/v1", &[("x-canary", "1")]), Some("canary"));
        assert_eq!(lookup(&table, "/api/v1", &[("end-user", "jason")]), Some("jason"));
        assert_eq!(lookup(&table, "/api/v1", &[]), Some("exact"));
        assert_eq!(lookup(&table, "/api/v2", &[]), Some("api"));
        assert_eq!(lookup(&table, "/other", &[("end-user", "jason")]), Some("jason"));
        assert_eq!(lookup(&table, "/other", &[]), Some("root"));
        assert_eq!(lookup(&table, "", &[]), None);
    }

    #[test]
    fn a_path_with_more_prefixes_than_the_merge_width_still_takes_the_first_match() {
        // Prefixes "/a", "/aa", ... longest first, so that route order is the reverse of length.
        let mut alternatives = Vec::new();
        for length in (1..=MERGE_WIDTH + 4).rev() {
            let prefix: &'static str = format!("/{}", "a".repeat(length)).leak();
            alternatives.push((vec![Cond::Path(Str::Prefix(prefix)), Cond::Header("pick", Presence::Value(Str::Exact(prefix)))], prefix));
        }
        alternatives.push((vec![Cond::Header("pick", Presence::Present)], "any"));
        let table = table(alternatives);
        let path = format!("/{}", "a".repeat(MERGE_WIDTH + 10));
        assert_eq!(lookup(&table, &path, &[("pick", "/aaa")]), Some("/aaa"));
        assert_eq!(lookup(&table, &path, &[("pick", "/a")]), Some("/a"));
        assert_eq!(lookup(&table, &path, &[("pick", "other")]), Some("any"));
        assert_eq!(lookup(&table, &path, &[]), None);
        assert_eq!(lookup(&table, "/b", &[("pick", "/a")]), Some("any"));
    }
}
