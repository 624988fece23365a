//! Local rate limits: token buckets, as Envoy's `local_ratelimit` filter keeps them, one per
//! route (or per workload for inbound requests), or one per source address.
//!
//! A bucket holds up to `max_tokens`, gains `tokens_per_fill` every `fill_interval_ms`, and a
//! request takes one token or is refused. Buckets fill lazily, when a request looks at them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many source addresses a per-source limit tracks. Past that, buckets that have filled
/// up again are forgotten first (a full bucket is what a new source gets, so nothing is
/// lost), then the one idle longest, so memory stays bounded and a flood of new addresses
/// cannot reset a busy source's bucket.
const MAX_SOURCES: usize = 10_000;

/// One rate limit and its buckets.
#[derive(Debug)]
pub struct RateLimit {
    max_tokens: u32,
    tokens_per_fill: u32,
    fill_interval: Duration,
    per_source: bool,
    buckets: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    shared: Bucket,
    by_source: BTreeMap<IpAddr, Bucket>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u32,
    /// When the bucket last gained tokens; `None` for a bucket never used, which is full.
    filled_at: Option<Instant>,
    /// When a request last looked at it.
    used_at: Option<Instant>,
}

impl Bucket {
    const FULL: Bucket = Bucket { tokens: u32::MAX, filled_at: None, used_at: None };

    fn take(&mut self, limit: &RateLimit, now: Instant) -> bool {
        self.used_at = Some(now);
        match self.filled_at {
            None => {
                self.tokens = limit.max_tokens;
                self.filled_at = Some(now);
            }
            Some(at) => {
                let interval = limit.fill_interval.as_nanos().max(1);
                let fills = now.saturating_duration_since(at).as_nanos() / interval;
                if fills > 0 {
                    let gained = fills.saturating_mul(u128::from(limit.tokens_per_fill));
                    self.tokens = u128::from(self.tokens).saturating_add(gained).min(u128::from(limit.max_tokens)) as u32;
                    // Keep the fill phase: the next fill is one interval after the last one due.
                    self.filled_at = Some(at + limit.fill_interval * u32::try_from(fills).unwrap_or(u32::MAX));
                }
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

impl RateLimit {
    /// A limit with full buckets.
    pub const fn new(max_tokens: u32, tokens_per_fill: u32, fill_interval_ms: u64, per_source: bool) -> RateLimit {
        RateLimit {
            max_tokens,
            tokens_per_fill,
            fill_interval: Duration::from_millis(fill_interval_ms),
            per_source,
            buckets: Mutex::new(Buckets { shared: Bucket::FULL, by_source: BTreeMap::new() }),
        }
    }

    /// The limit's settings: bucket size, tokens per fill, fill interval, and whether each
    /// source address has a bucket of its own.
    pub fn settings(&self) -> (u32, u32, Duration, bool) {
        (self.max_tokens, self.tokens_per_fill, self.fill_interval, self.per_source)
    }

    /// Takes a token for a request from `source`; `false` means the request is refused.
    pub fn admit(&self, source: IpAddr) -> bool {
        self.admit_at(source, Instant::now())
    }

    fn admit_at(&self, source: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|it| it.into_inner());
        if !self.per_source {
            return buckets.shared.take(self, now);
        }
        if !buckets.by_source.contains_key(&source) && buckets.by_source.len() >= MAX_SOURCES {
            let fills_to_full = self.max_tokens.div_ceil(self.tokens_per_fill.max(1));
            let refill = self.fill_interval.saturating_mul(fills_to_full);
            buckets.by_source.retain(|_, bucket| bucket.filled_at.is_some_and(|at| now.saturating_duration_since(at) < refill));
            if buckets.by_source.len() >= MAX_SOURCES {
                let idlest = buckets.by_source.iter().min_by_key(|(_, bucket)| bucket.used_at).map(|(address, _)| *address);
                if let Some(address) = idlest {
                    buckets.by_source.remove(&address);
                }
            }
        }
        buckets.by_source.entry(source).or_insert(Bucket::FULL).take(self, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_fill_rate() {
        let limit = RateLimit::new(3, 2, 100, false);
        let start = Instant::now();
        let peer: IpAddr = "10.0.0.1".parse().expect("address");
        let admitted = |at_ms: u64| limit.admit_at(peer, start + Duration::from_millis(at_ms));
        assert_eq!([admitted(0), admitted(1), admitted(2), admitted(3)], [true, true, true, false]);
        // One fill (two tokens) 100 ms after the first request.
        assert_eq!([admitted(99), admitted(100), admitted(101), admitted(102)], [false, true, true, false]);
        // Never more than the bucket holds, however long the pause.
        assert_eq!((0..5).map(|it| admitted(10_000 + it)).collect::<Vec<_>>(), [true, true, true, false, false]);
    }

    #[test]
    fn per_source_buckets_are_separate_and_bounded() {
        let limit = RateLimit::new(1, 1, 60_000, true);
        let a: IpAddr = "10.0.0.1".parse().expect("address");
        let b: IpAddr = "10.0.0.2".parse().expect("address");
        assert!(limit.admit(a));
        assert!(!limit.admit(a));
        assert!(limit.admit(b));
        for index in 0..(MAX_SOURCES as u32 + 10) {
            limit.admit(IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + index)));
        }
        assert!(limit.buckets.lock().expect("lock").by_source.len() <= MAX_SOURCES);
    }

    #[test]
    fn a_flood_of_new_sources_does_not_refill_a_busy_one() {
        let limit = RateLimit::new(1, 1, 60_000, true);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let source = |index: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + index));
        let busy: IpAddr = "10.0.0.1".parse().expect("address");
        assert!(limit.admit_at(busy, at(0)));
        for index in 0..(MAX_SOURCES as u32 - 1) {
            limit.admit_at(source(index), at(1 + u64::from(index)));
        }
        // The busy source keeps asking (and is refused): it is not the idlest when more
        // new addresses come, so its empty bucket stays.
        assert!(!limit.admit_at(busy, at(20_000)));
        for index in 0..10 {
            limit.admit_at(source(MAX_SOURCES as u32 + index), at(20_001 + u64::from(index)));
        }
        assert!(!limit.admit_at(busy, at(30_000)), "the busy source's bucket was reset");
        // Once buckets have filled up again they are forgotten first.
        assert!(limit.admit_at("10.9.9.9".parse().expect("address"), at(200_000)));
        assert_eq!(limit.buckets.lock().expect("lock").by_source.len(), 1);
    }
}
