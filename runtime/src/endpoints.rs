//! Endpoints are data, not code: each cluster holds a table of endpoints that can be swapped
//! whole (from `--endpoints`, later from xDS) while requests keep picking from it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde::Deserialize;

use crate::consistent::Table;
use crate::spec::{ClusterSpec, EndpointSeed, HashTable};

/// One upstream endpoint: shared, so that the one a request picks is taken with a single
/// reference count rather than one per string it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint(Arc<EndpointData>);

/// What an [`Endpoint`] is.
#[derive(Debug, PartialEq, Eq)]
pub struct EndpointData {
    /// IP address or host name.
    pub address: Arc<str>,
    /// Port.
    pub port: u16,
    /// Load-balancing weight.
    pub weight: u32,
    /// Whether it may take new requests.
    pub routable: bool,
    /// `region/zone/subzone`, as far as known (empty when nothing is).
    pub locality: Arc<str>,
    /// `host:port`, made once: requests name their endpoint by it many times.
    authority: Arc<str>,
}

impl std::ops::Deref for Endpoint {
    type Target = EndpointData;

    fn deref(&self) -> &EndpointData {
        &self.0
    }
}

impl Endpoint {
    /// An endpoint at `address`:`port`.
    pub fn new(address: &str, port: u16, weight: u32, routable: bool, locality: &str) -> Endpoint {
        Endpoint::in_locality(address, port, weight, routable, Arc::from(locality))
    }

    /// An endpoint at `address`:`port` sharing the `locality` of others (an xDS assignment
    /// names it once for thousands of endpoints).
    pub fn in_locality(address: &str, port: u16, weight: u32, routable: bool, locality: Arc<str>) -> Endpoint {
        let authority = if address.contains(':') { format!("[{address}]:{port}") } else { format!("{address}:{port}") };
        Endpoint(Arc::new(EndpointData { address: Arc::from(address), port, weight, routable, locality, authority: Arc::from(authority) }))
    }

    /// This endpoint with another weight, health and locality, sharing its address and
    /// authority.
    pub fn reweighted(&self, weight: u32, routable: bool, locality: Arc<str>) -> Endpoint {
        let (address, port, authority) = (self.address.clone(), self.port, self.authority.clone());
        Endpoint(Arc::new(EndpointData { address, port, weight, routable, locality, authority }))
    }

    /// `host:port`, bracketing IPv6 addresses.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// `host:port`, shared.
    pub fn shared_authority(&self) -> Arc<str> {
        self.authority.clone()
    }

    /// A single address, such as the local application's.
    pub fn at(address: std::net::SocketAddr) -> Endpoint {
        Endpoint::new(&address.ip().to_string(), address.port(), 1, true, "")
    }

    fn from_seed(seed: &EndpointSeed) -> Endpoint {
        Endpoint::new(seed.address, seed.port, seed.weight, seed.routable, seed.locality)
    }

    /// Whether it takes new requests at all.
    pub fn takes_traffic(&self) -> bool {
        self.routable && self.weight > 0
    }
}

/// How far an endpoint is from the sidecar, as Istio's locality failover orders priorities:
/// 0 when region, zone and subzone all match the sidecar's `local` locality (as far as the
/// sidecar knows its own), one more for each trailing part that differs.
pub fn priority(local: &str, theirs: &str) -> usize {
    let local: Vec<&str> = local.split('/').collect();
    let matched = local.iter().zip(theirs.split('/')).take_while(|(ours, theirs)| !ours.is_empty() && **ours == *theirs).count();
    local.len() - matched
}

/// An immutable set of endpoints with the cumulative weights of the routable ones.
#[derive(Debug, Default)]
pub struct EndpointSet {
    endpoints: Vec<Endpoint>,
    /// (index into `endpoints`, cumulative weight up to and including it), routable only,
    /// the weights divided by their greatest common divisor.
    cumulative: Vec<(usize, u64)>,
    /// A step through `0..total` coprime with it, near the golden section of it, so that
    /// successive tickets land far apart in the cumulative weights: endpoints interleave
    /// instead of taking their whole weight in a row, and every cycle of `total` tickets
    /// visits each endpoint exactly its (reduced) weight times.
    stride: u64,
    /// When each endpoint joined the cluster, for those a replacement added (slow start);
    /// `None` for those there from the start.
    added: Vec<Option<Instant>>,
    /// The latest of `added`.
    last_added: Option<Instant>,
    /// The endpoints by locality priority, nearest first, when they are at more than one.
    tiers: Vec<EndpointSet>,
    /// The consistent-hash tables over the endpoints (a ring's, Maglev's), each built on the
    /// first pick that needs it.
    tables: [std::sync::OnceLock<(HashTable, Table)>; 2],
}

impl EndpointSet {
    /// A set from a list, with no locality priorities.
    pub fn new(endpoints: Vec<Endpoint>) -> EndpointSet {
        let added = vec![None; endpoints.len()];
        EndpointSet::build(endpoints, added, "")
    }

    /// A set from a list; endpoints are ordered into priorities by their distance from the
    /// sidecar's locality `local` (none when it is empty).
    fn build(endpoints: Vec<Endpoint>, added: Vec<Option<Instant>>, local: &str) -> EndpointSet {
        let routable = || endpoints.iter().enumerate().filter(|(_, it)| it.takes_traffic());
        let divisor = routable().fold(0, |divisor, (_, it)| gcd(divisor, u64::from(it.weight))).max(1);
        let mut total = 0u64;
        let mut cumulative = Vec::new();
        for (index, endpoint) in routable() {
            total += u64::from(endpoint.weight) / divisor;
            cumulative.push((index, total));
        }
        let mut stride = ((total as f64 * 0.618_033_988_75).round() as u64).max(1);
        while total > 1 && gcd(stride, total) != 1 {
            stride += 1;
        }
        let mut tiers = Vec::new();
        if !local.is_empty() {
            let priorities: Vec<usize> = endpoints.iter().map(|it| priority(local, &it.locality)).collect();
            let mut used: Vec<usize> = priorities.clone();
            used.sort_unstable();
            used.dedup();
            if used.len() > 1 {
                for level in used {
                    let members = (0..endpoints.len()).filter(|it| priorities[*it] == level);
                    let (list, when) = members.map(|it| (endpoints[it].clone(), added[it])).unzip();
                    tiers.push(EndpointSet::build(list, when, ""));
                }
            }
        }
        let last_added = added.iter().flatten().max().copied();
        EndpointSet { endpoints, cumulative, stride, added, last_added, tiers, tables: Default::default() }
    }

    /// Its endpoint lists: every endpoint, then each tier's.
    pub(crate) fn into_lists(self) -> Vec<Vec<Endpoint>> {
        let mut lists = vec![self.endpoints];
        lists.extend(self.tiers.into_iter().flat_map(EndpointSet::into_lists));
        lists
    }

    /// Every endpoint, routable or not.
    pub fn all(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// When the endpoint at `index` of [`EndpointSet::all`] joined, if a replacement added it.
    pub fn added(&self, index: usize) -> Option<Instant> {
        self.added.get(index).copied().flatten()
    }

    /// When the newest endpoint joined, if a replacement added any.
    pub fn last_added(&self) -> Option<Instant> {
        self.last_added
    }

    /// The endpoints by locality priority, nearest first; empty when all are at one.
    pub fn tiers(&self) -> &[EndpointSet] {
        &self.tiers
    }

    /// The endpoint at position `ticket` of the weighted cycle: successive tickets visit the
    /// routable endpoints in proportion to their weights. `None` when none is routable.
    pub fn pick(&self, ticket: u64) -> Option<&Endpoint> {
        let total = self.cumulative.last()?.1;
        let point = (u128::from(ticket % total) * u128::from(self.stride) % u128::from(total)) as u64;
        let slot = self.cumulative.partition_point(|it| it.1 <= point);
        self.cumulative.get(slot).map(|it| &self.endpoints[it.0])
    }

    /// The endpoint a consistent hash of `table`'s kind gives `key`.
    pub fn pick_hashed(&self, key: u64, table: HashTable) -> Option<&Endpoint> {
        self.pick_hashed_among(key, table, |_| true)
    }

    /// [`EndpointSet::pick_hashed`] among the endpoints `eligible` accepts: when a key's
    /// endpoint is out, its keys go on to another endpoint, each key always to the same one.
    pub fn pick_hashed_among(&self, key: u64, table: HashTable, eligible: impl Fn(&Endpoint) -> bool) -> Option<&Endpoint> {
        let eligible = |index: u32| self.endpoints.get(index as usize).is_some_and(&eligible);
        let slot = &self.tables[usize::from(matches!(table, HashTable::Maglev { .. }))];
        let built = slot.get_or_init(|| (table, self.hash_table(table)));
        if built.0 == table {
            return built.1.pick(key, eligible).map(|it| &self.endpoints[it as usize]);
        }
        // A cluster's table keeps its size; another size is built for the pick alone.
        self.hash_table(table).pick(key, eligible).map(|it| &self.endpoints[it as usize])
    }

    fn hash_table(&self, table: HashTable) -> Table {
        let members: Vec<(u32, &str, u64)> = self
            .endpoints
            .iter()
            .enumerate()
            .filter(|(_, it)| it.takes_traffic() && it.weight > 0)
            .map(|(index, it)| (index as u32, it.authority(), u64::from(it.weight)))
            .collect();
        Table::build(table, &members)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A cluster's live state: its endpoints and its round-robin position.
#[derive(Debug)]
pub struct ClusterEndpoints {
    set: RwLock<Arc<EndpointSet>>,
    next: AtomicU64,
    /// The sidecar's own locality, which orders endpoints into priorities.
    local: Arc<str>,
}

impl ClusterEndpoints {
    /// The state for a cluster, seeded from its compiled endpoints.
    pub fn seeded(spec: &ClusterSpec, local: &str) -> ClusterEndpoints {
        ClusterEndpoints::new(spec.endpoints.iter().map(Endpoint::from_seed).collect(), local)
    }

    /// The state for a list of endpoints, for a sidecar at locality `local` (maybe empty).
    pub fn new(endpoints: Vec<Endpoint>, local: &str) -> ClusterEndpoints {
        let added = vec![None; endpoints.len()];
        ClusterEndpoints {
            set: RwLock::new(Arc::new(EndpointSet::build(endpoints, added, local))),
            next: AtomicU64::new(0),
            local: Arc::from(local),
        }
    }

    /// The current set.
    pub fn current(&self) -> Arc<EndpointSet> {
        self.read().clone()
    }

    /// The current set, read in place: the set cannot be replaced while the guard is held,
    /// and the set's reference count is left alone (picking an endpoint needs no copy of it).
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Arc<EndpointSet>> {
        // A writer that panicked while holding the lock left a complete Arc behind; keep serving it.
        self.set.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces the set atomically, once the requests picking from the old one are done.
    /// Endpoints that were not in the old set count as added now (slow start). Returns the
    /// old set, so that the caller chooses where its endpoints are dropped, and the new one.
    pub fn replace(&self, endpoints: Vec<Endpoint>) -> (Arc<EndpointSet>, Arc<EndpointSet>) {
        let old = self.current();
        let now = Instant::now();
        let previous = old.all();
        // Pilot lists a cluster's endpoints in the same order every time, so most are found
        // at their old position; the others by address, through a map built on the first
        // miss, so that replacing n endpoints costs O(n), not O(n²) (10,000 of them took
        // 60 ms when each searched the old list).
        let mut by_address: Option<std::collections::HashMap<(&str, u16), usize>> = None;
        let added = endpoints
            .iter()
            .enumerate()
            .map(|(index, endpoint)| {
                // An xDS update shares the addresses of the endpoints it keeps, and `Arc`'s `==`
                // compares the pointers first.
                if previous.get(index).is_some_and(|it| it.port == endpoint.port && it.address == endpoint.address) {
                    return old.added(index);
                }
                let by_address = by_address
                    .get_or_insert_with(|| previous.iter().enumerate().map(|(index, it)| ((&*it.address, it.port), index)).collect());
                match by_address.get(&(&*endpoint.address, endpoint.port)) {
                    Some(index) => old.added(*index),
                    None => Some(now),
                }
            })
            .collect();
        let set = Arc::new(EndpointSet::build(endpoints, added, &self.local));
        match self.set.write() {
            Ok(mut guard) => *guard = set.clone(),
            Err(poisoned) => *poisoned.into_inner() = set.clone(),
        }
        (old, set)
    }

    /// The next round-robin ticket.
    pub fn ticket(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

/// A `--endpoints` file: endpoints to run the sidecar against instead of the snapshot's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointsFile {
    #[serde(default)]
    endpoint: Vec<FileEndpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEndpoint {
    service: String,
    address: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    weight: Option<u32>,
    service_port: Option<u16>,
    /// `region/zone/subzone`.
    locality: Option<String>,
}

/// Reads a `--endpoints` file and gives each cluster its endpoints: those naming the cluster's
/// service (and port, when given) whose labels include the cluster's subset labels. Every
/// cluster's snapshot endpoints are replaced, so a service the file does not list has none.
pub fn from_file(text: &str, clusters: &[ClusterSpec]) -> Result<Vec<Vec<Endpoint>>, String> {
    let file: EndpointsFile = toml::from_str(text).map_err(|err| err.to_string())?;
    let mut out = vec![Vec::new(); clusters.len()];
    for (index, entry) in file.endpoint.iter().enumerate() {
        let what = format!("endpoint {} (`{}`)", index + 1, entry.service);
        let (address, port) = split_address(&entry.address).ok_or_else(|| format!("{what}: `{}` is not `host:port`", entry.address))?;
        let mut matched_service = false;
        for (cluster, spec) in clusters.iter().enumerate() {
            if !spec.service_names.contains(&entry.service.as_str()) {
                continue;
            }
            matched_service = true;
            let port_fits = entry.service_port.is_none_or(|it| it == spec.port);
            let labels_fit = spec.subset_labels.iter().all(|(k, v)| entry.labels.get(*k).map(String::as_str) == Some(*v));
            if port_fits && labels_fit {
                out[cluster].push(Endpoint::new(
                    &address,
                    port,
                    entry.weight.unwrap_or(100),
                    true,
                    entry.locality.as_deref().unwrap_or(""),
                ));
            }
        }
        if !matched_service {
            let mut known: Vec<&str> = clusters.iter().filter_map(|it| it.service_names.first().copied()).collect();
            known.sort_unstable();
            known.dedup();
            return Err(format!("{what}: this sidecar calls no service by that name; it calls {}", known.join(", ")));
        }
    }
    Ok(out)
}

/// `10.0.0.1:80`, `[fd00::1]:80` or `host:80`.
fn split_address(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|it| *it > 0)?;
    let host = host.strip_prefix('[').and_then(|it| it.strip_suffix(']')).unwrap_or(host);
    (!host.is_empty() && !host.contains(char::is_whitespace)).then(|| (host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(address: &str, weight: u32, routable: bool) -> Endpoint {
        Endpoint::new(address, 80, weight, routable, "")
    }

    #[test]
    fn picks_follow_the_weights_and_skip_unroutable_endpoints() {
        let set = EndpointSet::new(vec![endpoint("a", 3, true), endpoint("b", 1, true), endpoint("c", 5, false), endpoint("d", 0, true)]);
        let picks: Vec<&str> = (0..8).map(|it| set.pick(it).unwrap().address.as_ref()).collect();
        assert_eq!(picks, ["a", "b", "a", "a", "a", "b", "a", "a"]);
        // Equal weights alternate, whatever their size.
        let set = EndpointSet::new(vec![endpoint("a", 100, true), endpoint("b", 100, true)]);
        let picks: Vec<&str> = (0..6).map(|it| set.pick(it).unwrap().address.as_ref()).collect();
        assert_eq!(picks, ["a", "b", "a", "b", "a", "b"]);
        // Each cycle of the reduced total visits each endpoint its weight's times, spread out.
        let set = EndpointSet::new(vec![endpoint("a", 70, true), endpoint("b", 20, true), endpoint("c", 10, true)]);
        let picks: Vec<&str> = (0..10).map(|it| set.pick(it).unwrap().address.as_ref()).collect();
        assert_eq!(["a", "b", "c"].map(|name| picks.iter().filter(|it| **it == name).count()), [7, 2, 1]);
        assert!(picks.windows(4).all(|it| it.iter().any(|name| *name != "a")), "{picks:?}");
        assert!(EndpointSet::new(vec![endpoint("c", 5, false)]).pick(0).is_none());
    }

    #[test]
    fn hashing_keeps_keys_in_place_while_another_endpoint_is_out() {
        let three = ClusterEndpoints::new(vec![endpoint("a", 1, true), endpoint("b", 1, true), endpoint("c", 1, true)], "");
        let set = three.current();
        for table in [HashTable::Ring { min_size: 1024 }, HashTable::Maglev { size: 65_537 }] {
            let mut counts = std::collections::BTreeMap::new();
            for key in 0..3000u64 {
                let key = key.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let before = set.pick_hashed(key, table).expect("an endpoint").address.clone();
                // With `c` out (ejected, failing its checks), its keys go elsewhere, and the
                // others' stay.
                let without = set.pick_hashed_among(key, table, |it| &*it.address != "c").expect("an endpoint");
                assert_ne!(&*without.address, "c");
                if &*before != "c" {
                    assert_eq!(before, without.address, "{table:?}: key {key} moved although its endpoint is in");
                }
                *counts.entry(before).or_insert(0) += 1;
            }
            // Roughly a third each.
            assert!(counts.values().all(|it| (750..=1250).contains(it)), "{table:?}: {counts:?}");
        }
    }

    #[test]
    fn priorities_count_the_trailing_parts_of_the_locality_that_differ() {
        assert_eq!(priority("us-east/us-east-1a/rack1", "us-east/us-east-1a/rack1"), 0);
        assert_eq!(priority("us-east/us-east-1a/rack1", "us-east/us-east-1a/rack2"), 1);
        assert_eq!(priority("us-east/us-east-1a/rack1", "us-east/us-east-1b"), 2);
        assert_eq!(priority("us-east/us-east-1a/rack1", "eu-west/us-east-1a/rack1"), 3);
        assert_eq!(priority("us-east/us-east-1a/rack1", ""), 3);
        // A sidecar that knows only its zone: the zone's endpoints come first.
        assert_eq!(priority("us-east/us-east-1a", "us-east/us-east-1a/rack9"), 0);
        assert_eq!(priority("us-east/us-east-1a", "us-east/us-east-1c"), 1);
    }

    #[test]
    fn a_sidecar_with_a_locality_sees_its_endpoints_in_priorities() {
        let at = |address: &str, locality: &str| Endpoint::new(address, 80, 1, true, locality);
        let list = vec![at("far", "eu/eu-1"), at("near", "us/us-1a"), at("zone", "us/us-1b"), at("near2", "us/us-1a")];
        let set = ClusterEndpoints::new(list.clone(), "us/us-1a").current();
        let tiers: Vec<Vec<&str>> = set.tiers().iter().map(|it| it.all().iter().map(|it| it.address.as_ref()).collect()).collect();
        assert_eq!(tiers, [vec!["near", "near2"], vec!["zone"], vec!["far"]]);
        // Without a locality, or with every endpoint at one priority, there are no tiers.
        assert!(ClusterEndpoints::new(list, "").current().tiers().is_empty());
        assert!(ClusterEndpoints::new(vec![at("a", "us/us-1a"), at("b", "us/us-1a")], "us/us-1a").current().tiers().is_empty());
    }

    #[test]
    fn a_replacement_marks_only_new_endpoints_as_added() {
        let cluster = ClusterEndpoints::new(vec![endpoint("a", 1, true)], "");
        assert_eq!(cluster.current().last_added(), None);
        cluster.replace(vec![endpoint("a", 1, true), endpoint("b", 1, true)]);
        let set = cluster.current();
        assert_eq!(set.added(0), None);
        assert!(set.added(1).is_some());
        assert_eq!(set.last_added(), set.added(1));
    }

    #[test]
    fn an_endpoint_keeps_when_it_joined_whether_or_not_it_moved() {
        let cluster = ClusterEndpoints::new(vec![endpoint("a", 1, true)], "");
        cluster.replace(vec![endpoint("a", 1, true), endpoint("b", 1, true)]);
        let joined = cluster.current().added(1);
        assert!(joined.is_some());
        // In place, then moved ahead of `a`, then behind a newcomer.
        cluster.replace(vec![endpoint("a", 2, true), endpoint("b", 1, true)]);
        assert_eq!((cluster.current().added(0), cluster.current().added(1)), (None, joined));
        cluster.replace(vec![endpoint("b", 1, true), endpoint("a", 1, true)]);
        assert_eq!((cluster.current().added(0), cluster.current().added(1)), (joined, None));
        cluster.replace(vec![endpoint("c", 1, true), endpoint("b", 1, true), endpoint("a", 1, true)]);
        let set = cluster.current();
        assert!(set.added(0).is_some_and(|it| Some(it) >= joined));
        assert_eq!((set.added(1), set.added(2)), (joined, None));
    }

    static SUBSET: [(&str, &str); 1] = [("version", "v2")];
    static SERVICE: [&str; 3] = ["reviews", "reviews.default", "reviews.default.svc.cluster.local"];
    static CLUSTERS: [ClusterSpec; 2] = [
        ClusterSpec::plain("outbound|9080||reviews.default.svc.cluster.local", &SERVICE),
        ClusterSpec { subset_labels: &SUBSET, ..ClusterSpec::plain("outbound|9080|v2|reviews.default.svc.cluster.local", &SERVICE) },
    ];

    #[test]
    fn an_endpoints_file_fills_every_cluster_its_labels_fit() {
        let text = "[[endpoint]]\nservice = \"reviews\"\naddress = \"127.0.0.1:9081\"\nlabels = { version = \"v1\" }\n\n[[endpoint]]\nservice = \"reviews.default\"\naddress = \"[::1]:9082\"\nlabels = { version = \"v2\" }\n";
        let out = from_file(text, &CLUSTERS).unwrap();
        assert_eq!(out[0].iter().map(Endpoint::authority).collect::<Vec<_>>(), ["127.0.0.1:9081", "[::1]:9082"]);
        assert_eq!(out[1].iter().map(Endpoint::authority).collect::<Vec<_>>(), ["[::1]:9082"]);
    }

    #[test]
    fn an_endpoints_file_with_a_stranger_or_a_bad_address_is_an_error() {
        let err = from_file("[[endpoint]]\nservice = \"ratings\"\naddress = \"127.0.0.1:1\"\n", &CLUSTERS).unwrap_err();
        assert!(err.contains("calls no service by that name; it calls reviews"), "{err}");
        let err = from_file("[[endpoint]]\nservice = \"reviews\"\naddress = \"127.0.0.1\"\n", &CLUSTERS).unwrap_err();
        assert!(err.contains("not `host:port`"), "{err}");
        assert!(from_file("[[endpoint]]\nservce = \"x\"\n", &CLUSTERS).is_err());
    }
}
