//! The interpreted route matcher: route tables as run-time data, matched by trying every
//! route in order, as a configuration-driven proxy does.
//!
//! Its conditions serve routes that arrive at run time (xDS overrides, `overrides.rs`), and
//! its router is the baseline the compiled tables are measured against. It shares no code with them on purpose: the agreement tests
//! compare the two.

use std::collections::HashMap;

use crate::head::RequestHead;

/// A string condition.
#[derive(Debug, Clone)]
pub enum StrMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Matches a regex (anchored by whoever built it).
    Regex(Regex),
}

impl StrMatch {
    fn test(&self, value: &str) -> bool {
        match self {
            StrMatch::Exact(it) => value == it,
            StrMatch::Prefix(it) => value.starts_with(it.as_str()),
            StrMatch::Regex(it) => it.is_match(value),
        }
    }
}

/// A regex with one search cache, shared by every thread that matches it (one at a time),
/// so that its memory is what it takes compiled plus that one cache, whatever the number of
/// workers; regex's own pool would keep a cache for each thread. regex's engine, used
/// directly, reports both sizes, so that a route configuration's regexes can be held to a
/// budget (`overrides.rs`).
#[derive(Debug)]
pub struct Regex {
    regex: regex_automata::meta::Regex,
    /// Boxed: a cache is large next to the other conditions.
    cache: Box<std::sync::Mutex<regex_automata::meta::Cache>>,
}

impl Regex {
    /// Wraps a compiled regex.
    pub fn new(regex: regex_automata::meta::Regex) -> Regex {
        let cache = Box::new(std::sync::Mutex::new(regex.create_cache()));
        Regex { regex, cache }
    }

    /// The compiled regex.
    pub fn regex(&self) -> &regex_automata::meta::Regex {
        &self.regex
    }

    /// Whether `value` matches.
    pub fn is_match(&self, value: &str) -> bool {
        let input = regex_automata::Input::new(value).earliest(true);
        // A thread that panicked while matching left a usable cache: searches reset it.
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.regex.search_half_with(&mut cache, &input).is_some()
    }
}

impl Clone for Regex {
    fn clone(&self) -> Regex {
        Regex::new(self.regex.clone())
    }
}

/// A condition on a value that may be absent.
#[derive(Debug, Clone)]
pub enum PresenceMatch {
    /// Present and matching.
    Value(StrMatch),
    /// Present.
    Present,
    /// Absent.
    Absent,
}

/// One condition.
#[derive(Debug, Clone)]
pub enum Condition {
    /// The authority.
    Authority(StrMatch),
    /// The path.
    Path(StrMatch),
    /// The method.
    Method(StrMatch),
    /// A header, by lower-case name.
    Header(String, PresenceMatch),
    /// A query parameter.
    Query(String, PresenceMatch),
    /// The path with its query, as Envoy's `:path` header holds it.
    PathAndQuery(StrMatch),
    /// The opposite of a condition (Envoy's `invert_match`).
    Not(Box<Condition>),
}

impl Condition {
    pub(crate) fn test(&self, head: &RequestHead<'_>) -> bool {
        let presence = |condition: &PresenceMatch, value: Option<&str>| match (condition, value) {
            (PresenceMatch::Value(it), Some(value)) => it.test(value),
            (PresenceMatch::Present, Some(_)) | (PresenceMatch::Absent, None) => true,
            _ => false,
        };
        match self {
            Condition::Authority(it) => it.test(head.authority()),
            Condition::Path(it) => it.test(head.path()),
            Condition::Method(it) => it.test(head.method()),
            Condition::Header(name, it) => presence(it, head.header(name).as_deref()),
            Condition::Query(name, it) => presence(it, head.query_param(name)),
            Condition::PathAndQuery(it) => match head.query() {
                Some(query) => it.test(&format!("{}?{query}", head.path())),
                None => it.test(head.path()),
            },
            Condition::Not(it) => !it.test(head),
        }
    }
}

/// What a route does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Forward to clusters, by name, with weights summing to 100.
    Forward {
        /// `(cluster, weight)`.
        destinations: Vec<(String, u32)>,
        /// Overall timeout, milliseconds.
        timeout_ms: Option<u64>,
    },
    /// Answer locally (a direct response or a redirect) with this status.
    Answer {
        /// The status code.
        status: u16,
    },
}

/// A route: alternatives (ORed) of conditions (ANDed); none means every request.
#[derive(Debug, Clone)]
pub struct Route {
    /// The route's name.
    pub name: String,
    /// Alternatives.
    pub matches: Vec<Vec<Condition>>,
    /// What it does.
    pub action: Action,
}

impl Route {
    fn matches(&self, head: &RequestHead<'_>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|conditions| conditions.iter().all(|it| it.test(head)))
    }
}

/// Route tables by host.
#[derive(Debug, Default, Clone)]
pub struct Router {
    hosts: HashMap<String, usize>,
    tables: Vec<Vec<Route>>,
}

impl Router {
    /// An empty router.
    pub fn new() -> Router {
        Router::default()
    }

    /// Adds a table reached by `hosts`; returns its index.
    pub fn add_table(&mut self, hosts: impl IntoIterator<Item = String>, routes: Vec<Route>) -> usize {
        let index = self.tables.len();
        self.tables.push(routes);
        for host in hosts {
            self.hosts.entry(host).or_insert(index);
        }
        index
    }

    /// The table and route a request takes: the first route of its host's table that matches.
    pub fn select(&self, head: &RequestHead<'_>) -> Option<(usize, &Route)> {
        let table = *self.hosts.get(head.authority())?;
        self.tables[table].iter().find(|it| it.matches(head)).map(|it| (table, it))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_route_of_the_host_wins() {
        let mut router = Router::new();
        let action = Action::Answer { status: 200 };
        let jason = Route {
            name: "jason".to_owned(),
            matches: vec![vec![Condition::Header("end-user".to_owned(), PresenceMatch::Value(StrMatch::Exact("jason".to_owned())))]],
            action: action.clone(),
        };
        let rest = Route { name: "rest".to_owned(), matches: Vec::new(), action };
        router.add_table(["reviews:9080".to_owned()], vec![jason, rest]);
        let mut headers = http::HeaderMap::new();
        let head = RequestHead::from_parts("GET", "reviews:9080", "/", None, &headers);
        assert_eq!(router.select(&head).map(|it| it.1.name.as_str()), Some("rest"));
        headers.insert("end-user", http::HeaderValue::from_static("jason"));
        let head = RequestHead::from_parts("GET", "reviews:9080", "/", None, &headers);
        assert_eq!(router.select(&head).map(|it| it.1.name.as_str()), Some("jason"));
        let head = RequestHead::from_parts("GET", "ratings:9080", "/", None, &headers);
        assert!(router.select(&head).is_none());
    }
}
