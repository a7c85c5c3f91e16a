//! Prometheus metrics of the extender.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::verbs::Outcome;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Verb {
    Filter,
    Prioritize,
}

impl Verb {
    /// The verb as in the URL path, the metric label and the request span.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Filter => "filter",
            Verb::Prioritize => "prioritize",
        }
    }
}

impl EncodeLabelValue for Verb {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: Verb,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum FilterReason {
    Interrupted,
    Policy,
    Unknown,
}

impl EncodeLabelValue for FilterReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            FilterReason::Interrupted => "interrupted",
            FilterReason::Policy => "policy",
            FilterReason::Unknown => "unknown",
        })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: FilterReason,
}

type HistogramFamily = Family<VerbLabels, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub struct Metrics {
    pub request_seconds: HistogramFamily,
    pub request_nodes: HistogramFamily,
    pub bad_requests: Family<VerbLabels, Counter>,
    /// Calls answered 503 because `--max-concurrent-requests` were in flight.
    pub overloaded: Counter,
    pub filtered_nodes: Family<ReasonLabels, Counter>,
    /// Prioritize calls answered with neutral scores because no ranking is loaded.
    pub no_ranking: Counter,
    pub ranking_loaded: Gauge,
    pub ranking_errors: Counter,
    pub cached_nodes: Gauge,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

fn nodes_histogram() -> Histogram {
    // 1 .. 16,384 nodes
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            request_seconds: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            request_nodes: Family::new_with_constructor(nodes_histogram as fn() -> Histogram),
            bad_requests: Family::default(),
            overloaded: Counter::default(),
            filtered_nodes: Family::default(),
            no_ranking: Counter::default(),
            ranking_loaded: Gauge::default(),
            ranking_errors: Counter::default(),
            cached_nodes: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("spotkube_extender");
        r.register(
            "request_duration_seconds",
            "Time to answer a filter / prioritize call",
            m.request_seconds.clone(),
        );
        r.register(
            "request_nodes",
            "Candidate nodes per call",
            m.request_nodes.clone(),
        );
        r.register(
            "bad_requests",
            "Calls answered 400 (body is not ExtenderArgs)",
            m.bad_requests.clone(),
        );
        r.register(
            "overloaded_requests",
            "Calls answered 503 because --max-concurrent-requests were in flight",
            m.overloaded.clone(),
        );
        r.register(
            "filtered_nodes",
            "Nodes removed by filter, by reason",
            m.filtered_nodes.clone(),
        );
        r.register(
            "prioritize_without_ranking",
            "Prioritize calls answered with neutral scores because no ranking is loaded (warning)",
            m.no_ranking.clone(),
        );
        r.register(
            "ranking_loaded",
            "1 when a valid ranking is loaded",
            m.ranking_loaded.clone(),
        );
        r.register(
            "ranking_errors",
            "Ranking ConfigMap contents that could not be read",
            m.ranking_errors.clone(),
        );
        r.register(
            "cached_nodes",
            "Nodes in the watch-backed cache",
            m.cached_nodes.clone(),
        );
        m
    }

    pub fn record(&self, verb: Verb, seconds: f64, outcome: &Outcome) {
        let labels = VerbLabels { verb };
        self.request_seconds.get_or_create(&labels).observe(seconds);
        self.request_nodes
            .get_or_create(&labels)
            .observe(outcome.nodes as f64);
        for (reason, n) in [
            (FilterReason::Interrupted, outcome.interrupted),
            (FilterReason::Policy, outcome.policy_excluded),
            (FilterReason::Unknown, outcome.unknown),
        ] {
            if n > 0 && verb == Verb::Filter {
                self.filtered_nodes
                    .get_or_create(&ReasonLabels { reason })
                    .inc_by(n as u64);
            }
        }
        if outcome.no_ranking {
            self.no_ranking.inc();
        }
    }
}
