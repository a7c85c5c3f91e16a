//! The EC2 Spot Instance Advisor feed (`spot-advisor-data.json`, public, no credentials):
//! the "frequency of interruption" band of every instance type per region, which no AWS
//! API publishes. [`SpotAdvisor`] fetches it at most once per refresh interval, keeps
//! the last good copy when a fetch fails, and falls back to the price snapshot's bands
//! (saying so) when it never had one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::sync::Mutex;

use super::snapshot::{self, SnapshotLocation};
use crate::error::Error;

/// Where AWS publishes the feed (the Spot Instance Advisor web page reads it).
pub const DEFAULT_URL: &str = "https://spot-bid-advisor.s3.amazonaws.com/spot-advisor-data.json";
/// How long a fetched feed is used before it is fetched again: AWS updates it a few
/// times a day.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(60 * 60);
/// A fetch taking longer is a failed one: the ranking must not wait on it.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// What error messages call the feed.
const FEED: &str = "Spot Advisor feed";

/// The part of the feed spotkube reads; the real feed carries more keys, ignored here.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Feed {
    /// The interruption bands; [`Advice::band`] is an `index` here.
    pub ranges: Vec<Range>,
    /// Region → operating system (`Linux`, `Windows`) → instance type → advice.
    pub spot_advisor: BTreeMap<String, BTreeMap<String, BTreeMap<String, Advice>>>,
}

/// One interruption band.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Range {
    pub index: u8,
    /// For people: `<5%`, `5-10%`, ... `>20%`.
    pub label: String,
    /// The band's upper bound, in percent of instances interrupted per month.
    pub max: u32,
}

/// The advice for one instance type in one region and operating system.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Advice {
    /// The interruption band (an index of [`Feed::ranges`]).
    #[serde(rename = "r")]
    pub band: u8,
    /// Savings over on-demand, percent.
    #[serde(rename = "s")]
    pub savings_percent: f64,
}

impl Feed {
    pub fn parse(bytes: &[u8]) -> Result<Feed, Error> {
        let feed: Feed = serde_json::from_slice(bytes).map_err(|e| Error::Aws {
            operation: FEED,
            message: format!("not the feed's JSON: {e}"),
        })?;
        if feed.ranges.is_empty() {
            return Err(Error::Aws {
                operation: FEED,
                message: "no interruption ranges".into(),
            });
        }
        Ok(feed)
    }

    /// The Linux interruption band per type of `region`, `None` when the feed has no
    /// Linux advice there. A band the feed's `ranges` do not define is left out: the
    /// type then passes the band criterion as if unknown.
    pub fn linux_bands(&self, region: &str) -> Option<BTreeMap<String, u8>> {
        let advice = self.spot_advisor.get(region)?.get("Linux")?;
        Some(
            advice
                .iter()
                .filter(|(_, a)| self.ranges.iter().any(|r| r.index == a.band))
                .map(|(name, a)| (name.clone(), a.band))
                .collect(),
        )
    }
}

/// Interruption bands for one ranking.
#[derive(Debug, Clone, PartialEq)]
pub struct Bands {
    /// Instance type → band.
    pub by_type: BTreeMap<String, u8>,
    /// `None` when the bands come from the feed; else where they came from and why,
    /// for the ranking's provenance ([`spotkube_shared::ranking::PriceBook::bands_fallback`]).
    pub fallback: Option<String>,
}

/// `spotkube_ranking_spot_advisor_*`.
#[derive(Clone, Default)]
pub struct AdvisorMetrics {
    pub fetch_failures: Counter,
    pub last_success_seconds: Gauge,
    pub fallback: Gauge,
}

impl AdvisorMetrics {
    pub fn register(registry: &mut Registry) -> AdvisorMetrics {
        let m = AdvisorMetrics::default();
        let r = registry.sub_registry_with_prefix("spotkube_ranking_spot_advisor");
        r.register(
            "fetch_failures",
            "Spot Advisor feed fetches that failed (the last good copy stays in use)",
            m.fetch_failures.clone(),
        );
        r.register(
            "last_success_timestamp_seconds",
            "Unix time of the last successful Spot Advisor feed fetch (its age)",
            m.last_success_seconds.clone(),
        );
        r.register(
            "fallback",
            "1 while interruption bands come from the price snapshot: no feed was ever fetched",
            m.fallback.clone(),
        );
        m
    }
}

/// The last good copy of the feed.
struct Fetched {
    feed: Feed,
    at: Instant,
}

/// The feed, fetched over HTTP(S) and cached in memory.
pub struct SpotAdvisor {
    url: String,
    refresh: Duration,
    http: reqwest::Client,
    /// Whose bands apply when the feed has never been fetched.
    fallback: SnapshotLocation,
    metrics: AdvisorMetrics,
    last_good: Mutex<Option<Fetched>>,
}

impl SpotAdvisor {
    pub fn new(
        url: String,
        refresh: Duration,
        fallback: SnapshotLocation,
        metrics: AdvisorMetrics,
    ) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("spotkube-controller/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Invalid(format!("HTTP client for the {FEED}: {e}")))?;
        Ok(SpotAdvisor {
            url,
            refresh,
            http,
            fallback,
            metrics,
            last_good: Mutex::new(None),
        })
    }

    /// The bands of `region`: from the feed (fetched again once the last copy is older
    /// than the refresh interval; a failed fetch keeps the last good copy), else from
    /// the price snapshot, which is logged and noted in [`Bands::fallback`].
    pub async fn bands(&self, region: &str) -> Result<Bands, Error> {
        let mut last_good = self.last_good.lock().await;
        if last_good
            .as_ref()
            .is_none_or(|f| f.at.elapsed() >= self.refresh)
        {
            match self.fetch().await {
                Ok(feed) => {
                    *last_good = Some(Fetched {
                        feed,
                        at: Instant::now(),
                    });
                    self.metrics
                        .last_success_seconds
                        .set(jiff::Timestamp::now().as_second());
                }
                Err(error) => {
                    self.metrics.fetch_failures.inc();
                    let kept_since = last_good.as_ref().map(|f| f.at.elapsed().as_secs());
                    tracing::warn!(url = %self.url, %error, ?kept_since, "fetching the Spot Advisor feed failed");
                }
            }
        }
        let had_feed = last_good.is_some();
        let from_feed = last_good.as_ref().and_then(|f| f.feed.linux_bands(region));
        drop(last_good);
        if let Some(by_type) = from_feed {
            self.metrics.fallback.set(0);
            return Ok(Bands {
                by_type,
                fallback: None,
            });
        }
        let why = match had_feed {
            true => format!("the {FEED} has no Linux advice for {region}"),
            false => format!("the {FEED} could not be fetched"),
        };
        let by_type = snapshot::interruption_bands(&self.fallback, region)?;
        let snapshot = match &self.fallback {
            SnapshotLocation::Embedded => "the embedded price snapshot".to_string(),
            SnapshotLocation::File(path) => format!("the price snapshot {}", path.display()),
        };
        tracing::warn!(url = %self.url, "{why}: interruption bands come from {snapshot}");
        self.metrics.fallback.set(1);
        Ok(Bands {
            by_type,
            fallback: Some(format!("interruption bands from {snapshot}: {why}")),
        })
    }

    async fn fetch(&self) -> Result<Feed, Error> {
        let failed = |e: reqwest::Error| Error::Aws {
            operation: FEED,
            message: with_causes(&e),
        };
        let response = self
            .http
            .get(&self.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(failed)?;
        let body = response.bytes().await.map_err(failed)?;
        Feed::parse(&body)
    }
}

/// reqwest's own message names only the outermost layer ("error sending request").
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use axum::http::StatusCode;

    use super::*;

    const SAMPLE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/fixtures/spot-advisor-sample.json"
    );

    fn sample() -> Vec<u8> {
        std::fs::read(SAMPLE).unwrap()
    }

    #[test]
    fn the_sample_feed_gives_linux_bands_per_type() {
        let feed = Feed::parse(&sample()).unwrap();
        assert_eq!(
            feed.ranges.iter().map(|r| r.max).collect::<Vec<_>>(),
            [5, 11, 16, 22, 100]
        );
        assert_eq!(feed.ranges[4].label, ">20%");
        let advice = feed.spot_advisor["us-east-1"]["Linux"]["c7g.4xlarge"];
        assert_eq!((advice.band, advice.savings_percent), (0, 71.0));
        let bands = feed.linux_bands("us-east-1").unwrap();
        assert_eq!(bands.len(), 96);
        assert_eq!(bands["c6i.4xlarge"], 3);
        assert_eq!(bands["c7i.large"], 4);
        assert_eq!(feed.linux_bands("eu-west-9"), None);
    }

    #[test]
    fn bands_outside_the_ranges_and_other_systems_are_not_read() {
        let feed = Feed::parse(
            br#"{"ranges": [{"index": 0, "label": "<5%", "max": 5}],
                 "instance_types": {"m7g.large": {"cores": 2, "ram_gb": 8.0, "emr": true}},
                 "spot_advisor": {"us-east-1": {
                     "Linux": {"m7g.large": {"s": 60, "r": 0}, "c7g.large": {"s": 50, "r": 7}},
                     "Windows": {"m5.large": {"s": 40, "r": 0}}}}}"#,
        )
        .unwrap();
        assert_eq!(
            feed.linux_bands("us-east-1").unwrap(),
            BTreeMap::from([("m7g.large".to_string(), 0)])
        );
        assert!(Feed::parse(br#"{"ranges": [], "spot_advisor": {}}"#).is_err());
        assert!(Feed::parse(b"<html>Access Denied</html>").is_err());
    }

    /// A feed on 127.0.0.1 that answers the sample while `up`, else 503, and counts GETs.
    struct Server {
        url: String,
        up: Arc<AtomicBool>,
        gets: Arc<AtomicUsize>,
    }

    async fn serve() -> Server {
        let up = Arc::new(AtomicBool::new(true));
        let gets = Arc::new(AtomicUsize::new(0));
        let (u, g) = (up.clone(), gets.clone());
        let app = axum::Router::new().route(
            "/spot-advisor-data.json",
            axum::routing::get(move || {
                let (up, gets) = (u.clone(), g.clone());
                async move {
                    gets.fetch_add(1, Ordering::SeqCst);
                    match up.load(Ordering::SeqCst) {
                        true => (StatusCode::OK, sample()),
                        false => (StatusCode::SERVICE_UNAVAILABLE, b"down".to_vec()),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Server {
            url: format!("http://{addr}/spot-advisor-data.json"),
            up,
            gets,
        }
    }

    fn advisor(url: &str, refresh: Duration, metrics: &AdvisorMetrics) -> SpotAdvisor {
        spotkube_shared::telemetry::install_crypto_provider();
        SpotAdvisor::new(
            url.into(),
            refresh,
            SnapshotLocation::Embedded,
            metrics.clone(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn the_feed_is_fetched_once_per_refresh_interval() {
        let server = serve().await;
        let metrics = AdvisorMetrics::default();
        let advisor = advisor(&server.url, Duration::from_secs(3600), &metrics);
        let first = advisor.bands("us-east-1").await.unwrap();
        assert_eq!(first.fallback, None);
        assert_eq!(first.by_type["c6i.4xlarge"], 3);
        assert_eq!(advisor.bands("us-east-1").await.unwrap(), first);
        assert_eq!(server.gets.load(Ordering::SeqCst), 1, "cached in between");
        assert!(metrics.last_success_seconds.get() > 0);
        assert_eq!(metrics.fallback.get(), 0);
    }

    #[tokio::test]
    async fn a_failed_fetch_keeps_the_last_good_copy() {
        let server = serve().await;
        let metrics = AdvisorMetrics::default();
        let advisor = advisor(&server.url, Duration::from_millis(1), &metrics);
        let good = advisor.bands("us-east-1").await.unwrap();
        server.up.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(advisor.bands("us-east-1").await.unwrap(), good);
        assert_eq!(
            server.gets.load(Ordering::SeqCst),
            2,
            "the stale copy was refetched"
        );
        assert_eq!(metrics.fetch_failures.get(), 1);
        assert_eq!(metrics.fallback.get(), 0);
    }

    #[tokio::test]
    async fn without_any_feed_the_snapshot_bands_apply_and_say_so() {
        let server = serve().await;
        server.up.store(false, Ordering::SeqCst);
        let metrics = AdvisorMetrics::default();
        let advisor = advisor(&server.url, Duration::from_secs(3600), &metrics);
        let bands = advisor.bands("us-east-1").await.unwrap();
        assert_eq!(
            bands.fallback.as_deref(),
            Some(
                "interruption bands from the embedded price snapshot: \
                 the Spot Advisor feed could not be fetched"
            )
        );
        // The snapshot's bands: far more types than the sample feed's 96.
        assert_eq!(bands.by_type.len(), 894);
        assert_eq!(bands.by_type["c6i.4xlarge"], 3);
        assert_eq!(metrics.fetch_failures.get(), 1);
        assert_eq!(metrics.fallback.get(), 1);
        // The feed comes back: the next call, even within the interval, uses it.
        server.up.store(true, Ordering::SeqCst);
        let bands = advisor.bands("us-east-1").await.unwrap();
        assert_eq!((bands.fallback, bands.by_type.len()), (None, 96));
        assert_eq!(metrics.fallback.get(), 0);
    }

    #[tokio::test]
    async fn a_region_the_feed_lacks_takes_the_snapshot_bands() {
        let server = serve().await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.json");
        std::fs::write(
            &path,
            r#"{"instance_specs": {}, "regions": {"eu-west-9": {"on_demand_usd_per_hour": {},
                "spot": {"m7g.large": {"savings_percent": 50, "interruption_band": 1}}}}}"#,
        )
        .unwrap();
        let metrics = AdvisorMetrics::default();
        spotkube_shared::telemetry::install_crypto_provider();
        let advisor = SpotAdvisor::new(
            server.url.clone(),
            Duration::from_secs(3600),
            SnapshotLocation::File(path.clone()),
            metrics.clone(),
        )
        .unwrap();
        let bands = advisor.bands("eu-west-9").await.unwrap();
        assert_eq!(
            bands.by_type,
            BTreeMap::from([("m7g.large".to_string(), 1)])
        );
        assert_eq!(
            bands.fallback.unwrap(),
            format!(
                "interruption bands from the price snapshot {}: \
                 the Spot Advisor feed has no Linux advice for eu-west-9",
                path.display()
            )
        );
        assert_eq!(
            (metrics.fetch_failures.get(), metrics.fallback.get()),
            (0, 1)
        );
        // Neither knows the region: that is an error, not an empty band list.
        let err = advisor.bands("mars-1").await.unwrap_err();
        assert_eq!(err.to_string(), "price snapshot has no region \"mars-1\"");
    }
}
