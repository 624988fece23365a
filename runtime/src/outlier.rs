//! Passive outlier detection (Envoy's `outlier_detection`): an endpoint that answers with
//! too many consecutive 5xx or gateway errors is ejected for the base ejection time times its
//! ejection multiplier (at most Envoy's `max_ejection_time`, 300 s, or the base time when that
//! is longer), then comes back on its own. The multiplier grows by one per ejection and
//! shrinks by one for each base ejection time the endpoint stays in.
//!
//! State is kept per endpoint address, so it survives endpoint-table swaps; ejection is
//! checked when an endpoint is picked, so no timer runs.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Envoy's default `max_ejection_time`.
const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// A cluster's detector settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierSpec {
    /// Consecutive 5xx answers (and failures) before ejection; `u32::MAX` disables it.
    pub consecutive_5xx: u32,
    /// Consecutive gateway errors (502, 503, 504, failures) before ejection; `u32::MAX`
    /// disables it.
    pub consecutive_gateway_errors: u32,
    /// The base ejection time, milliseconds.
    pub base_ejection_time_ms: u64,
    /// The most endpoints ejected at once, in percent (at least one may always be).
    pub max_ejection_percent: u32,
    /// Envoy's panic threshold, as Istio's `minHealthPercent` sets it: with fewer usable
    /// endpoints than this percentage, the cluster balances over all of them, ejected or not;
    /// at 0 (Istio's default) never, and a cluster with none usable answers 503 (`UH`).
    pub min_health_percent: u32,
}

/// What a try came to, as the detector counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// A non-5xx answer.
    Success,
    /// A 5xx answer other than a gateway error.
    ServerError,
    /// 502, 503, 504, or no answer at all (connection failure, reset, timeout).
    GatewayError,
}

#[derive(Debug, Default)]
struct EndpointState {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

/// The detector of one cluster.
#[derive(Debug, Default)]
pub struct Outliers {
    endpoints: Mutex<BTreeMap<String, EndpointState>>,
}

impl Outliers {
    /// Whether `endpoint` is ejected now.
    pub fn is_ejected(&self, endpoint: &str) -> bool {
        let endpoints = self.endpoints.lock().unwrap_or_else(|it| it.into_inner());
        endpoints.get(endpoint).and_then(|it| it.ejected_until).is_some_and(|until| Instant::now() < until)
    }

    /// Counts a try's outcome at `endpoint` of a cluster of `endpoint_count` endpoints;
    /// `true` when the endpoint was just ejected.
    pub fn observe(&self, spec: &OutlierSpec, endpoint: &str, observed: Observed, endpoint_count: usize) -> bool {
        let now = Instant::now();
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|it| it.into_inner());
        let ejected_now = endpoints.values().filter(|it| it.ejected_until.is_some_and(|until| now < until)).count();
        let state = endpoints.entry(endpoint.to_owned()).or_default();
        let base = Duration::from_millis(spec.base_ejection_time_ms);
        if let Some(back) = state.ejected_until.filter(|until| *until <= now) {
            // Back in: one step of the multiplier off per base ejection time served well.
            let steps = match base.as_nanos() {
                0 => u128::from(state.ejections),
                step => (now - back).as_nanos() / step,
            };
            let steps = u32::try_from(steps).unwrap_or(u32::MAX);
            state.ejections = state.ejections.saturating_sub(steps);
            if state.ejections == 0 {
                state.ejected_until = None;
            } else if steps > 0 {
                state.ejected_until = Some(back + base.saturating_mul(steps));
            }
        }
        match observed {
            Observed::Success => {
                state.consecutive_5xx = 0;
                state.consecutive_gateway = 0;
                return false;
            }
            Observed::ServerError => {
                state.consecutive_5xx += 1;
                state.consecutive_gateway = 0;
            }
            Observed::GatewayError => {
                state.consecutive_5xx += 1;
                state.consecutive_gateway += 1;
            }
        }
        let tripped = state.consecutive_5xx >= spec.consecutive_5xx || state.consecutive_gateway >= spec.consecutive_gateway_errors;
        let already = state.ejected_until.is_some_and(|until| now < until);
        let allowed = (ejected_now as u64 * 100) < u64::from(spec.max_ejection_percent) * endpoint_count as u64 || ejected_now == 0;
        if !tripped || already || !allowed {
            return false;
        }
        state.ejections += 1;
        state.consecutive_5xx = 0;
        state.consecutive_gateway = 0;
        let time = base.saturating_mul(state.ejections).min(MAX_EJECTION_TIME.max(base));
        state.ejected_until = Some(now + time);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: OutlierSpec = OutlierSpec {
        consecutive_5xx: 3,
        consecutive_gateway_errors: u32::MAX,
        base_ejection_time_ms: 50,
        max_ejection_percent: 50,
        min_health_percent: 0,
    };

    #[test]
    fn consecutive_errors_eject_for_a_while_and_a_success_resets_the_count() {
        let outliers = Outliers::default();
        assert!(!outliers.observe(&SPEC, "a", Observed::ServerError, 4));
        assert!(!outliers.observe(&SPEC, "a", Observed::GatewayError, 4));
        assert!(!outliers.observe(&SPEC, "a", Observed::Success, 4));
        assert!(!outliers.observe(&SPEC, "a", Observed::ServerError, 4));
        assert!(!outliers.observe(&SPEC, "a", Observed::ServerError, 4));
        assert!(outliers.observe(&SPEC, "a", Observed::ServerError, 4));
        assert!(outliers.is_ejected("a") && !outliers.is_ejected("b"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(!outliers.is_ejected("a"), "back after the ejection time");
    }

    #[test]
    fn ejections_lengthen_up_to_the_cap_and_shorten_again_after_good_service() {
        const LONG: OutlierSpec = OutlierSpec {
            consecutive_5xx: 1,
            consecutive_gateway_errors: u32::MAX,
            base_ejection_time_ms: 200_000,
            max_ejection_percent: 100,
            min_health_percent: 0,
        };
        let outliers = Outliers::default();
        let until = |outliers: &Outliers| {
            let endpoints = outliers.endpoints.lock().unwrap();
            endpoints["a"].ejected_until.map(|it| it.saturating_duration_since(Instant::now()))
        };
        assert!(outliers.observe(&LONG, "a", Observed::ServerError, 2));
        assert!(until(&outliers).unwrap() <= Duration::from_secs(200));
        // A second ejection would be 400 s: capped at 300 s.
        outliers.endpoints.lock().unwrap().get_mut("a").unwrap().ejected_until = Some(Instant::now());
        assert!(outliers.observe(&LONG, "a", Observed::ServerError, 2));
        let second = until(&outliers).unwrap();
        assert!(second > Duration::from_secs(200) && second <= MAX_EJECTION_TIME, "{second:?}");

        // Back for two base times: the multiplier drops from 2 to 0 and the next ejection is 200 s.
        let short = Outliers::default();
        assert!(short.observe(&LONG, "a", Observed::ServerError, 2));
        short.endpoints.lock().unwrap().get_mut("a").unwrap().ejections = 2;
        let back = Instant::now().checked_sub(Duration::from_millis(400_500)).unwrap();
        short.endpoints.lock().unwrap().get_mut("a").unwrap().ejected_until = Some(back);
        assert!(short.observe(&LONG, "a", Observed::ServerError, 2));
        assert_eq!(short.endpoints.lock().unwrap()["a"].ejections, 1);
        assert!(until(&short).unwrap() <= Duration::from_secs(200));
    }

    #[test]
    fn no_more_than_the_max_ejection_percent_is_ejected() {
        let outliers = Outliers::default();
        for endpoint in ["a", "b", "c", "d"] {
            for _ in 0..3 {
                outliers.observe(&SPEC, endpoint, Observed::ServerError, 4);
            }
        }
        let ejected = ["a", "b", "c", "d"].iter().filter(|it| outliers.is_ejected(it)).count();
        assert_eq!(ejected, 2, "50% of 4");
    }
}
