//! The webhook's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// Counters and histograms, registered once in a [`Registry`].
#[derive(Clone)]
pub struct Metrics {
    /// Admission requests by outcome (`patched`, `unchanged`, `skipped`, `invalid`,
    /// `too-large`, `error`).
    pub requests: Family<OutcomeLabels, Counter>,
    /// Handling time of admission requests, seconds.
    pub latency: Histogram,
    /// Patches by what they change (`affinity`, `tolerations`, ...).
    pub patches: Family<KindLabels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            requests: Family::default(),
            // 50 µs .. ~100 ms.
            latency: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.000_05, 2.0, 12,
            )),
            patches: Family::default(),
        };
        let sub = registry.sub_registry_with_prefix("spotkube_webhook");
        sub.register(
            "admission_requests",
            "Admission requests by outcome",
            m.requests.clone(),
        );
        sub.register(
            "admission_duration_seconds",
            "Time to handle an admission request",
            m.latency.clone(),
        );
        sub.register(
            "patches",
            "Pod patches by what they change",
            m.patches.clone(),
        );
        m
    }
}
