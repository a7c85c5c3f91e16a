//! The ranking reconcile: refresh the price ranking every interval and publish it
//! (only on change; a failed refresh keeps the last good one published), and republish
//! the last computed ranking within [`MARKS_CHECK`] when the offerings marked
//! unavailable change. The leader is the ConfigMap's only writer.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use spotkube_shared::ranking::{Criteria, Unavailable};
use tokio_util::sync::CancellationToken;

use crate::capacity::ice::IceCache;
use crate::pricing::refresher::{
    RefreshMetrics, Refreshed, Target, publish, refresh_once, unavailable_of,
};
use crate::pricing::{LatestBook, PriceSource};

/// How often the marks are compared with the published ones: a mark must reach the
/// extender in seconds, while prices are refreshed every few minutes.
pub const MARKS_CHECK: Duration = Duration::from_secs(2);

/// Refreshes every `interval` and publishes mark changes every [`MARKS_CHECK`] until
/// `cancel` fires. Run it on the leader only. Each gathered price book is kept in
/// `latest` (for the savings loop).
#[allow(clippy::too_many_arguments)]
pub async fn run<S: PriceSource + 'static>(
    client: Client,
    source: Arc<S>,
    criteria: Criteria,
    interval: Duration,
    target: Target,
    metrics: RefreshMetrics,
    latest: LatestBook,
    ice: IceCache,
    cancel: CancellationToken,
) {
    let every = Every {
        refresh: interval,
        marks: MARKS_CHECK,
    };
    run_every(
        client, source, criteria, every, target, metrics, latest, ice, cancel,
    )
    .await
}

/// The loop's two periods.
#[derive(Debug, Clone, Copy)]
struct Every {
    refresh: Duration,
    marks: Duration,
}

#[allow(clippy::too_many_arguments)]
async fn run_every<S: PriceSource + 'static>(
    client: Client,
    source: Arc<S>,
    criteria: Criteria,
    every: Every,
    target: Target,
    metrics: RefreshMetrics,
    latest: LatestBook,
    ice: IceCache,
    cancel: CancellationToken,
) {
    let configmap = format!("{}/{}", target.namespace, target.name);
    let mut refresh = tokio::time::interval(every.refresh);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut check = tokio::time::interval(every.marks);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The marks the ConfigMap lists as far as this loop knows; `None` until a write
    // succeeded (then the next check writes the last computed ranking again).
    let mut published: Option<Vec<Unavailable>> = None;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = refresh.tick() => {
                let marks = unavailable_of(&ice.marked());
                metrics.refreshes.inc();
                match refresh_once(&client, &target, source.as_ref(), &criteria, &latest, marks.clone()).await {
                    Ok(outcome) => {
                        published = Some(marks);
                        metrics
                            .last_success_seconds
                            .set(jiff::Timestamp::now().as_second());
                        if outcome == Refreshed::Written {
                            metrics.writes.inc();
                            tracing::info!(source = source.name(), %configmap, "ranking changed; published");
                        } else {
                            tracing::debug!("ranking unchanged");
                        }
                    }
                    Err(e) => {
                        metrics.failures.inc();
                        tracing::error!(
                            error = format!("{e:#}"),
                            "ranking refresh failed; the last good ranking stays published"
                        );
                    }
                }
            }
            _ = check.tick() => {
                // Expired marks have left `marked()`, so a lapse is a change too.
                let marks = unavailable_of(&ice.marked());
                if published.as_ref() == Some(&marks) {
                    continue;
                }
                // No ranking computed yet: the first refresh publishes the marks.
                let Some(gathered) = latest.get() else { continue };
                match publish(&client, &target, gathered.ranking.clone(), marks.clone()).await {
                    Ok(outcome) => {
                        if outcome == Refreshed::Written {
                            metrics.writes.inc();
                            tracing::info!(unavailable = marks.len(), %configmap, "unavailable offerings changed; published");
                        }
                        published = Some(marks);
                    }
                    Err(e) => tracing::warn!(
                        error = format!("{e:#}"),
                        "publishing the unavailable offerings failed; retrying at the next check"
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};
    use spotkube_shared::ranking::{CONFIGMAP_KEY, InstanceTypeInfo, PriceBook, Ranking};

    use super::*;
    use crate::capacity::CapacityType;
    use crate::capacity::ice::{Offering, Reason};
    use crate::error::Error;
    use crate::pricing::SpotPrices;

    /// An API server holding one ConfigMap: GET reads it, PATCH (apply) replaces it.
    #[derive(Clone, Default)]
    struct FakeApi {
        stored: Arc<Mutex<Option<Value>>>,
        writes: Arc<AtomicUsize>,
    }

    impl FakeApi {
        fn client(&self) -> Client {
            let api = self.clone();
            let service = tower::service_fn(move |request: Request<Body>| {
                let api = api.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let body = body.collect_bytes().await.unwrap_or_default();
                    let stored = api.stored.lock().unwrap().clone();
                    let (status, answer) = match (parts.method, stored) {
                        (Method::GET, Some(cm)) => (200, cm),
                        (Method::GET, None) => (
                            404,
                            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                   "reason": "NotFound", "code": 404, "message": "not found"}),
                        ),
                        (Method::PATCH, _) => {
                            let cm: Value = serde_json::from_slice(&body).unwrap();
                            *api.stored.lock().unwrap() = Some(cm.clone());
                            api.writes.fetch_add(1, Ordering::SeqCst);
                            (200, cm)
                        }
                        (method, _) => panic!("unexpected {method} {}", parts.uri),
                    };
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                            .unwrap(),
                    )
                }
            });
            Client::new(service, "default")
        }

        fn ranking(&self) -> Option<Ranking> {
            let cm = self.stored.lock().unwrap().clone()?;
            Some(Ranking::from_json(cm["data"][CONFIGMAP_KEY].as_str()?).unwrap())
        }

        async fn wait_for(&self, what: &str, ok: impl Fn(&Ranking) -> bool) -> Ranking {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                if let Some(r) = self.ranking().filter(|r| ok(r)) {
                    return r;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "never published: {what}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// One rankable type in one zone; counts the price fetches.
    #[derive(Default)]
    struct CountingSource {
        fetches: AtomicUsize,
    }

    impl PriceSource for CountingSource {
        fn name(&self) -> &'static str {
            "test"
        }

        async fn price_book(&self, _: &Criteria) -> Result<PriceBook, Error> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let info = InstanceTypeInfo {
                vcpu: 2,
                memory_gib: 8.0,
                architectures: vec!["arm64".into()],
                ..Default::default()
            };
            Ok(PriceBook {
                types: BTreeMap::from([("m7g.large".to_string(), info)]),
                spot: BTreeMap::from([(
                    "us-east-1a".to_string(),
                    BTreeMap::from([("m7g.large".to_string(), 0.03)]),
                )]),
                on_demand: BTreeMap::from([("m7g.large".to_string(), 0.08)]),
                ..Default::default()
            })
        }

        async fn spot_prices(&self, _: &[String]) -> Result<SpotPrices, Error> {
            Ok(SpotPrices::new())
        }
    }

    #[test]
    fn marks_are_listed_with_the_wire_strings() {
        let ice = IceCache::default();
        let expires = ice.mark(
            Offering::new("c7g.large", "us-east-1b", CapacityType::OnDemand),
            Reason::SpotInterruption,
        );
        assert_eq!(
            unavailable_of(&ice.marked()),
            [Unavailable {
                instance_type: "c7g.large".into(),
                zone: "us-east-1b".into(),
                capacity_type: "on-demand".into(),
                reason: "spot-interruption".into(),
                expires,
            }]
        );
    }

    #[tokio::test]
    async fn a_mark_is_published_at_the_next_check_and_lapses_without_a_price_fetch() {
        let api = FakeApi::default();
        let source = Arc::new(CountingSource::default());
        let ice = IceCache::new(Duration::from_millis(1500));
        let cancel = CancellationToken::new();
        let every = Every {
            // Never again within the test: only the check may write.
            refresh: Duration::from_secs(3600),
            marks: Duration::from_millis(100),
        };
        let task = tokio::spawn(run_every(
            api.client(),
            source.clone(),
            Criteria::default(),
            every,
            Target::default(),
            RefreshMetrics::default(),
            LatestBook::default(),
            ice.clone(),
            cancel.clone(),
        ));
        let first = api.wait_for("the ranking", |_| true).await;
        assert!(first.unavailable.is_empty());
        assert_eq!(first.rank_of("us-east-1a", "m7g.large"), Some(1));

        let offering = Offering::new("m7g.large", "us-east-1a", CapacityType::Spot);
        let expires = ice.mark(offering, Reason::CapacityError);
        let marked = api
            .wait_for("the mark", |r| !r.unavailable.is_empty())
            .await;
        assert_eq!(
            marked.unavailable,
            [Unavailable {
                instance_type: "m7g.large".into(),
                zone: "us-east-1a".into(),
                capacity_type: "spot".into(),
                reason: "capacity-error".into(),
                expires,
            }]
        );
        assert!(marked.is_unavailable(
            "us-east-1a",
            "m7g.large",
            CapacityType::Spot,
            jiff::Timestamp::now()
        ));
        // The same ranking, not a recomputed one.
        assert_eq!(
            (marked.computed_at, &marked.zones),
            (first.computed_at, &first.zones)
        );

        api.wait_for("the lapse", |r| r.unavailable.is_empty())
            .await;
        // Checks went on after the lapse; an unchanged set is not written again.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(api.writes.load(Ordering::SeqCst), 3, "ranking, mark, lapse");
        assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
        cancel.cancel();
        task.await.unwrap();
    }
}
