//! Shadowed routes (ISLE's `ShadowedError`, Istio's IST0130 and IST0131): a route is never
//! reached when every one of its alternatives is matched by an alternative of an earlier route.
//!
//! Coverage is proved, not guessed: exact values against exact values, prefixes against
//! prefixes and exact values, regexes against the exact values they match. Two different
//! regexes are never claimed to overlap (that is undecidable in general).

use std::collections::BTreeMap;

use meshc_codegen::ir::{Match, PresenceMatch, StringMatch, StringMatchKind};

use crate::source::Span;

/// An earlier route that covers a new one.
#[derive(Clone, Debug)]
pub(super) struct Covered {
    /// The names of the earlier routes that cover it together, in order.
    pub by: Vec<Span>,
    /// Whether every alternative is covered by an identical alternative.
    pub identical: bool,
}

/// The alternatives of the routes seen so far in one block.
#[derive(Debug, Default)]
pub(super) struct Shadow {
    earlier: Vec<(Match, u16, Span)>,
    regexes: Regexes,
}

impl Shadow {
    /// Adds a route's alternatives; returns the earlier route that covers it, if any.
    pub(super) fn add(&mut self, matches: &[Match], name: Span) -> Option<Covered> {
        let alternatives: Vec<Match> = if matches.is_empty() { vec![Match::default()] } else { matches.iter().map(normalise).collect() };
        let alternatives = &alternatives[..];
        let mut covered: Option<Covered> = None;
        let mut all_covered = true;
        for alternative in alternatives {
            let mask = mask(alternative);
            let regexes = &mut self.regexes;
            let found = self
                .earlier
                .iter()
                .position(|(earlier, earlier_mask, _)| *earlier_mask & !mask == 0 && covers(regexes, earlier, alternative));
            match found {
                Some(index) => {
                    let identical = self.earlier[index].0 == *alternative;
                    let by = self.earlier[index].2;
                    let entry = covered.get_or_insert(Covered { by: Vec::new(), identical });
                    entry.identical &= identical;
                    if !entry.by.contains(&by) {
                        entry.by.push(by);
                    }
                }
                None => all_covered = false,
            }
        }
        for alternative in alternatives {
            self.earlier.push((alternative.clone(), mask(alternative), name));
        }
        covered.filter(|_| all_covered)
    }
}

type Regexes = BTreeMap<String, Option<regex::Regex>>;

/// Whether every request `later` matches is matched by `earlier`.
fn covers(regexes: &mut Regexes, earlier: &Match, later: &Match) -> bool {
    let fields = [
        (&earlier.authority, &later.authority),
        (&earlier.path, &later.path),
        (&earlier.method, &later.method),
        (&earlier.service, &later.service),
        (&earlier.version, &later.version),
        (&earlier.group, &later.group),
    ];
    for (e, l) in fields {
        if let Some(e) = e {
            match l {
                Some(l) if implies(regexes, l, e) => {}
                _ => return false,
            }
        }
    }
    if earlier.port.is_some() && earlier.port != later.port {
        return false;
    }
    let headers =
        earlier.headers.iter().all(|e| later.headers.iter().any(|l| l.name == e.name && presence_implies(regexes, &l.kind, &e.kind)));
    headers && earlier.query.iter().all(|e| later.query.iter().any(|l| l.name == e.name && presence_implies(regexes, &l.kind, &e.kind)))
}

fn presence_implies(regexes: &mut Regexes, later: &PresenceMatch, earlier: &PresenceMatch) -> bool {
    match (later, earlier) {
        (PresenceMatch::Absent, PresenceMatch::Absent) => true,
        (PresenceMatch::Present | PresenceMatch::Value(_), PresenceMatch::Present) => true,
        (PresenceMatch::Value(l), PresenceMatch::Value(e)) => implies(regexes, l, e),
        _ => false,
    }
}

/// Whether every value `later` accepts is accepted by `earlier`.
fn implies(regexes: &mut Regexes, later: &StringMatch, earlier: &StringMatch) -> bool {
    use StringMatchKind::*;
    match (earlier.kind, later.kind) {
        (Exact, Exact) => earlier.value == later.value,
        (Prefix, Exact | Prefix) => later.value.starts_with(earlier.value.as_str()),
        (Regex, _) if earlier.value == ".*" => true,
        (Regex, Regex) => earlier.value == later.value,
        (Regex, Exact) => {
            let pattern = earlier.value.clone();
            let regex = regexes.entry(pattern).or_insert_with_key(|it| super::compile_regex(it).ok());
            regex.as_ref().is_some_and(|re| re.is_match(&later.value))
        }
        _ => false,
    }
}

/// Drops conditions that every request satisfies: every HTTP path starts with `/`, and
/// `.*` matches every path (Istio's usual catch-all spellings).
fn normalise(m: &Match) -> Match {
    let mut m = m.clone();
    let any_path = m.path.as_ref().is_some_and(|it| {
        (it.kind == StringMatchKind::Prefix && it.value == "/") || (it.kind == StringMatchKind::Regex && it.value == ".*")
    });
    if any_path {
        m.path = None;
    }
    m
}

/// The fields an alternative constrains; an earlier alternative can only cover a later one
/// that constrains at least the same fields.
fn mask(m: &Match) -> u16 {
    [
        m.authority.is_some(),
        m.path.is_some(),
        m.method.is_some(),
        m.service.is_some(),
        m.version.is_some(),
        m.group.is_some(),
        !m.headers.is_empty(),
        !m.query.is_empty(),
        m.port.is_some(),
    ]
    .iter()
    .enumerate()
    .fold(0, |acc, (bit, set)| acc | (u16::from(*set) << bit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::FileId;
    use meshc_codegen::ir::HeaderMatch;

    fn path(kind: StringMatchKind, value: &str) -> Match {
        Match { path: Some(StringMatch { kind, value: value.to_owned() }), ..Match::default() }
    }

    fn span(n: u32) -> Span {
        Span { file: FileId(0), start: n, end: n + 1 }
    }

    #[test]
    fn prefix_covers_longer_prefixes_and_exact_paths() {
        let mut shadow = Shadow::default();
        assert!(shadow.add(&[path(StringMatchKind::Prefix, "/api")], span(1)).is_none());
        let covered = shadow.add(&[path(StringMatchKind::Exact, "/api/users")], span(2)).unwrap();
        assert_eq!((covered.by, covered.identical), (vec![span(1)], false));
        assert!(shadow.add(&[path(StringMatchKind::Prefix, "/ap")], span(3)).is_none());
    }

    #[test]
    fn identical_matches_are_reported_as_such() {
        let mut shadow = Shadow::default();
        shadow.add(&[path(StringMatchKind::Exact, "/a")], span(1));
        assert!(shadow.add(&[path(StringMatchKind::Exact, "/a")], span(2)).unwrap().identical);
    }

    #[test]
    fn a_catch_all_covers_everything_after_it() {
        let mut shadow = Shadow::default();
        shadow.add(&[], span(1));
        assert!(shadow.add(&[path(StringMatchKind::Regex, "/x.*")], span(2)).is_some());
    }

    #[test]
    fn every_alternative_must_be_covered() {
        let mut shadow = Shadow::default();
        shadow.add(&[path(StringMatchKind::Prefix, "/a")], span(1));
        assert!(shadow.add(&[path(StringMatchKind::Exact, "/a/1"), path(StringMatchKind::Exact, "/b")], span(2)).is_none());
    }

    #[test]
    fn several_routes_may_cover_one_together() {
        let mut shadow = Shadow::default();
        shadow.add(&[path(StringMatchKind::Prefix, "/a")], span(1));
        shadow.add(&[path(StringMatchKind::Prefix, "/b")], span(2));
        let covered = shadow.add(&[path(StringMatchKind::Prefix, "/a/x"), path(StringMatchKind::Prefix, "/b/y")], span(3)).unwrap();
        assert_eq!(covered.by, vec![span(1), span(2)]);
    }

    #[test]
    fn more_conditions_narrow_a_route() {
        let mut shadow = Shadow::default();
        let jason = Match {
            headers: vec![HeaderMatch {
                name: "end-user".into(),
                kind: PresenceMatch::Value(StringMatch { kind: StringMatchKind::Exact, value: "jason".into() }),
            }],
            ..Match::default()
        };
        shadow.add(std::slice::from_ref(&jason), span(1));
        let present = Match { headers: vec![HeaderMatch { name: "end-user".into(), kind: PresenceMatch::Present }], ..Match::default() };
        // `present` matches more than `jason`, so it is not covered.
        assert!(shadow.add(&[present], span(2)).is_none());
        let both = Match { path: Some(StringMatch { kind: StringMatchKind::Prefix, value: "/".into() }), ..jason };
        assert!(shadow.add(&[both], span(3)).is_some());
    }

    #[test]
    fn a_root_prefix_is_a_catch_all() {
        let mut shadow = Shadow::default();
        shadow.add(&[path(StringMatchKind::Prefix, "/")], span(1));
        let canary = Match { headers: vec![HeaderMatch { name: "x-canary".into(), kind: PresenceMatch::Present }], ..Match::default() };
        assert!(shadow.add(&[canary], span(2)).is_some());
    }

    #[test]
    fn regexes_cover_the_exact_values_they_match() {
        let mut shadow = Shadow::default();
        shadow.add(&[path(StringMatchKind::Regex, "/v[0-9]+")], span(1));
        assert!(shadow.add(&[path(StringMatchKind::Exact, "/v2")], span(2)).is_some());
        assert!(shadow.add(&[path(StringMatchKind::Exact, "/v2/x")], span(3)).is_none());
        assert!(shadow.add(&[path(StringMatchKind::Regex, "/v[0-9]")], span(4)).is_none());
    }
}
