//! AWS on 127.0.0.1: moto's server (wrapped by `tests/tools/moto_server.py`, which adds a
//! Pricing GetProducts stand-in, seeded per-AZ spot prices, an
//! InsufficientInstanceCapacity switch, DescribeInstanceTypes pagination, a throttling
//! switch, per-action call counters and the Spot Instance Advisor feed) plus helpers for
//! SQS, EventBridge-shaped events, EC2 instances and Auto Scaling groups.

use std::path::PathBuf;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_credential_types::Credentials;
use aws_sdk_ec2::types::{InstanceMarketOptionsRequest, InstanceType, MarketType, Placement};
use aws_smithy_http_client::tls;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::nodes::{Capacity, FakeNode};
use crate::ports::free_port;
use crate::process::{Managed, Spec};
use crate::programs::ProgramOptions;
use crate::tools::{Tools, workspace_root};
use crate::{RigError, nodes};

/// The region every rig AWS client uses.
pub const REGION: &str = "us-east-1";
/// An AMI id moto accepts (it ships a catalogue of real AMIs).
pub const TEST_AMI: &str = "ami-03cf127a";

fn aws_err(context: &str, e: impl std::fmt::Display) -> RigError {
    RigError::Aws(format!("{context}: {e}"))
}

/// A running moto server. Dropping it stops the process.
#[derive(Debug)]
pub struct Moto {
    pub process: Managed,
    /// `http://127.0.0.1:<port>` — what `AWS_ENDPOINT_URL` must be.
    pub endpoint: String,
    _dir: Option<tempfile::TempDir>,
}

/// An SQS queue and its dead-letter queue.
#[derive(Debug, Clone)]
pub struct Queues {
    pub url: String,
    pub arn: String,
    pub dlq_url: String,
    pub dlq_arn: String,
}

/// Where [`Moto::hold`] stops a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldAt {
    /// Before moto sees the call: it never happens.
    Request,
    /// After moto answered it with messages: the caller never hears.
    Answer,
}

/// What [`Moto::fault`] makes the calls answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 503 `ServiceUnavailable`, moto never sees the call: an endpoint outage.
    Unavailable,
    /// HTTP 400 with the service's throttling shape (SQS `RequestThrottled`).
    Throttle,
}

/// The SQS calls of a consumer (the controller's intake): what an SQS fault hits, while
/// the test's own SendMessage / GetQueueAttributes still work.
pub const SQS_CONSUMER_ACTIONS: &[&str] = &[
    "ReceiveMessage",
    "DeleteMessage",
    "DeleteMessageBatch",
    "ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch",
];

/// The EventBridge events spotkube's controller consumes (templates in the fixtures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    SpotInterruptionWarning,
    RebalanceRecommendation,
    /// `state`: pending, running, stopping, stopped, shutting-down, terminated.
    InstanceStateChange(&'static str),
    HealthScheduledChange,
}

impl EventKind {
    fn fixture(self) -> &'static str {
        match self {
            Self::SpotInterruptionWarning => "spot-interruption-warning.json",
            Self::RebalanceRecommendation => "rebalance-recommendation.json",
            Self::InstanceStateChange(_) => "instance-state-change.json",
            Self::HealthScheduledChange => "health-scheduled-change.json",
        }
    }
}

/// `$SPOTKUBE_FIXTURES`, else `<workspace>/testdata/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("SPOTKUBE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("testdata/fixtures"))
}

/// The exact event AWS sends for `kind`, for `instance_id` at `time`: the fixture with its
/// instance id replaced everywhere (detail, resources ARNs, Health entities), a fresh `id`
/// and `time`.
pub fn event(kind: EventKind, instance_id: &str, time: jiff::Timestamp) -> Result<Value, RigError> {
    let path = fixtures_dir().join("events").join(kind.fixture());
    let text = std::fs::read_to_string(&path).map_err(|e| RigError::io(&path, e))?;
    let template: Value =
        serde_json::from_str(&text).map_err(|e| aws_err(&path.display().to_string(), e))?;
    let fixture_id = template["detail"]["instance-id"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            template["resources"][0]
                .as_str()
                .map(|r| r.rsplit('/').next().unwrap_or(r).to_owned())
        })
        .ok_or_else(|| aws_err("fixture", format!("{} names no instance", path.display())))?;
    let mut event: Value = serde_json::from_str(&text.replace(&fixture_id, instance_id))
        .expect("valid json stays valid");
    event["id"] = json!(format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        rand::random::<u32>(),
        rand::random::<u16>(),
        rand::random::<u16>() & 0xfff,
        rand::random::<u16>() & 0xfff,
        rand::random::<u64>() & 0xffff_ffff_ffff
    ));
    event["time"] = json!(time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    if let EventKind::InstanceStateChange(state) = kind {
        event["detail"]["state"] = json!(state);
    }
    Ok(event)
}

impl Moto {
    /// Starts moto (with spotkube's additions) on a free port; logs go to `log_dir`.
    pub async fn start_in(log_dir: &std::path::Path) -> Result<Self, RigError> {
        crate::init();
        let tools = Tools::locate()?;
        for path in [&tools.python, &tools.moto_server] {
            if !path.exists() {
                return Err(RigError::MissingTool(path.clone()));
            }
        }
        let port = free_port();
        let process = Managed::spawn(
            Spec::new(format!("moto-{port}"), &tools.python)
                .arg(tools.moto_server.display().to_string())
                .arg(format!("--port={port}"))
                .arg(format!(
                    "--snapshot={}",
                    nodes::price_snapshot_path().display()
                ))
                .arg(format!(
                    "--spot-advisor={}",
                    fixtures_dir().join("spot-advisor-sample.json").display()
                ))
                .env("PYTHONUNBUFFERED", "1"),
            log_dir,
        )?;
        let mut moto = Self {
            process,
            endpoint: format!("http://127.0.0.1:{port}"),
            _dir: None,
        };
        moto.wait_ready().await?;
        Ok(moto)
    }

    /// Starts a private moto with its own temp dir for the log.
    pub async fn start() -> Result<Self, RigError> {
        let dir = tempfile::Builder::new()
            .prefix("spotkube-moto-")
            .tempdir()
            .map_err(|e| RigError::io(&std::env::temp_dir(), e))?;
        let mut moto = Self::start_in(dir.path()).await?;
        moto._dir = Some(dir);
        Ok(moto)
    }

    /// The moto every test of this test binary shares (call [`Moto::reset`] or use unique
    /// names per test). Stopped when the test binary exits.
    pub async fn shared() -> Result<&'static Moto, RigError> {
        static SHARED: OnceCell<Moto> = OnceCell::const_new();
        SHARED
            .get_or_try_init(|| async {
                let dir = tempfile::Builder::new()
                    .prefix("spotkube-moto-")
                    .tempdir()
                    .map_err(|e| RigError::io(&std::env::temp_dir(), e))?;
                crate::process::remove_at_exit(dir.path().to_path_buf());
                let mut moto = Self::start_in(dir.path()).await?;
                moto._dir = Some(dir);
                Ok(moto)
            })
            .await
    }

    async fn wait_ready(&mut self) -> Result<(), RigError> {
        let http = reqwest::Client::new();
        let url = format!("{}/spotkube/health", self.endpoint);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.process.exited() {
                return Err(RigError::Exited {
                    name: self.process.name().into(),
                    status,
                    log: self.process.log_path().to_path_buf(),
                });
            }
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(RigError::NotReady {
            name: self.process.name().into(),
            last: "no answer".into(),
            log: self.process.log_path().to_path_buf(),
        })
    }

    /// Where this moto serves the Spot Instance Advisor feed.
    pub fn spot_advisor_url(&self) -> String {
        format!("{}/spotkube/spot-advisor-data.json", self.endpoint)
    }

    /// Environment for a program that should talk to this moto, the Spot Advisor feed
    /// included: nothing the rig starts reaches the internet.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("SPOTKUBE_SPOT_ADVISOR_URL".into(), self.spot_advisor_url()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("AWS_REGION".into(), REGION.into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }

    /// Runs `spotkube-controller rank --source aws --output json` against this moto (Spot
    /// Advisor bands from its feed), with `extra` flags and `env` on top of
    /// [`Moto::env`], and decodes the ranking it prints.
    pub async fn rank(
        &self,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<spotkube_shared::ranking::Ranking, RigError> {
        let binary = crate::tools::program_binary("spotkube-controller");
        let output = tokio::process::Command::new(&binary)
            .args(["rank", "--source", "aws", "--output", "json"])
            .args(extra)
            .envs(self.env())
            .envs(env.iter().copied())
            .env("SPOTKUBE_LOG_FORMAT", "text")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| RigError::io(&binary, e))?;
        if !output.status.success() {
            return Err(aws_err(
                "rank",
                String::from_utf8_lossy(&output.stderr).to_string(),
            ));
        }
        let text = String::from_utf8_lossy(&output.stdout);
        spotkube_shared::ranking::Ranking::from_json(&text)
            .map_err(|e| aws_err("rank output", e.to_string()))
    }

    /// `spotkube-controller run` consuming `queue_url` from this moto, its Lease in
    /// `lease_namespace` (short, so failover tests stay quick), SDK retries off. Append
    /// more flags with [`ProgramOptions::arg`].
    pub fn controller_options(&self, queue_url: &str, lease_namespace: &str) -> ProgramOptions {
        let options = ProgramOptions::default()
            .arg("run")
            .arg(format!("--queue-url={queue_url}"))
            .arg("--aws-disable-retries")
            .arg(format!("--lease-namespace={lease_namespace}"))
            .arg("--lease-duration=3");
        self.env()
            .into_iter()
            .fold(options, |options, (k, v)| options.env(k, v))
    }

    /// SDK config: endpoint = moto, static credentials, us-east-1, retries disabled
    /// (a moto 500 retried three times turns a clear failure into a slow one), rustls on ring.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client)
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new(REGION))
            .credentials_provider(Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "spotkube-rig",
            ))
            .retry_config(RetryConfig::disabled())
            .load()
            .await
    }

    pub async fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk_config().await)
    }

    pub async fn ec2(&self) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&self.sdk_config().await)
    }

    pub async fn autoscaling(&self) -> aws_sdk_autoscaling::Client {
        aws_sdk_autoscaling::Client::new(&self.sdk_config().await)
    }

    pub async fn pricing(&self) -> aws_sdk_pricing::Client {
        aws_sdk_pricing::Client::new(&self.sdk_config().await)
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, RigError> {
        let resp = reqwest::Client::new()
            .post(format!("{}{path}", self.endpoint))
            .json(&body)
            .send()
            .await
            .map_err(|e| aws_err(path, e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| aws_err(path, e))?;
        if !status.is_success() {
            return Err(aws_err(path, format!("HTTP {status}: {text}")));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Serves `feed` (a whole Spot Advisor document) at [`Moto::spot_advisor_url`] until
    /// the next call or [`reset`](Moto::reset).
    pub async fn serve_spot_advisor(&self, feed: &Value) -> Result<(), RigError> {
        self.post("/spotkube/spot-advisor", feed.clone()).await?;
        Ok(())
    }

    /// Takes the Spot Advisor feed down: it answers 503 until the next
    /// [`serve_spot_advisor`](Moto::serve_spot_advisor) or [`reset`](Moto::reset).
    pub async fn spot_advisor_outage(&self) -> Result<(), RigError> {
        let url = format!("{}/spotkube/spot-advisor", self.endpoint);
        let resp = reqwest::Client::new()
            .delete(&url)
            .send()
            .await
            .map_err(|e| aws_err(&url, e))?;
        if !resp.status().is_success() {
            return Err(aws_err(&url, format!("HTTP {}", resp.status())));
        }
        Ok(())
    }

    /// Clears moto's backends and restores the seeded prices and the Spot Advisor feed /
    /// clears the ICE switch.
    pub async fn reset(&self) -> Result<(), RigError> {
        self.post("/moto-api/reset", Value::Null).await?;
        self.post("/spotkube/reset", Value::Null).await?;
        Ok(())
    }

    /// Adds a newest spot price point for `instance_type` in `zone` (Linux/UNIX).
    pub async fn seed_spot_price(
        &self,
        instance_type: &str,
        zone: &str,
        usd_per_hour: f64,
    ) -> Result<(), RigError> {
        self.post(
            "/spotkube/spot-prices",
            json!({ "prices": [{ "instance_type": instance_type, "availability_zone": zone, "price": usd_per_hour }] }),
        )
        .await?;
        Ok(())
    }

    /// RunInstances / CreateFleet fail with InsufficientInstanceCapacity for these
    /// capacities: `"m7g.large"` (every AZ) or `"m7g.large@us-east-1b"`.
    pub async fn set_insufficient_capacity(&self, capacity: &[&str]) -> Result<(), RigError> {
        self.post("/spotkube/ice", json!({ "capacity": capacity }))
            .await?;
        Ok(())
    }

    /// The next `count` calls of `action` (EC2 `Action`, e.g. `"DescribeSpotPriceHistory"`,
    /// or a Pricing operation, e.g. `"GetProducts"`) fail as AWS throttles them: HTTP 400
    /// `RequestLimitExceeded` (EC2) / `ThrottlingException` (Pricing). Counts add up.
    pub async fn throttle(&self, action: &str, count: u32) -> Result<(), RigError> {
        self.post(
            "/spotkube/throttle",
            json!({ "action": action, "count": count }),
        )
        .await?;
        Ok(())
    }

    /// How many calls of `action` this moto has answered (throttled ones included) since it
    /// started or was last [`reset`](Moto::reset).
    pub async fn calls(&self, action: &str) -> Result<u64, RigError> {
        let resp = reqwest::Client::new()
            .get(format!("{}/spotkube/calls", self.endpoint))
            .query(&[("action", action)])
            .send()
            .await
            .map_err(|e| aws_err("calls", e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| aws_err("calls", e))?;
        if !status.is_success() {
            return Err(aws_err("calls", format!("HTTP {status}: {text}")));
        }
        serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["count"].as_u64())
            .ok_or_else(|| aws_err("calls", format!("unexpected answer {text}")))
    }

    /// Every call of `actions` fails as `fault` says for `length` from now (see
    /// `moto_server.py`, switch 8); faulted calls are also counted as `faulted:<action>`
    /// in [`Moto::calls`]. Per moto process: use a private [`Moto::start`].
    pub async fn fault(
        &self,
        actions: &[&str],
        fault: Fault,
        length: Duration,
    ) -> Result<(), RigError> {
        let mode = match fault {
            Fault::Unavailable => "unavailable",
            Fault::Throttle => "throttle",
        };
        self.post(
            "/spotkube/fault",
            json!({ "actions": actions, "mode": mode, "seconds": length.as_secs_f64() }),
        )
        .await?;
        Ok(())
    }

    /// Ends every [`Moto::fault`] now.
    pub async fn clear_faults(&self) -> Result<(), RigError> {
        reqwest::Client::new()
            .delete(format!("{}/spotkube/fault", self.endpoint))
            .send()
            .await
            .map_err(|e| aws_err("clear faults", e))?;
        Ok(())
    }

    /// Holds the next call of the SQS (or other JSON-protocol) `action`: at
    /// [`HoldAt::Request`] before moto sees it, at [`HoldAt::Answer`] once moto answered
    /// it with messages. Holds are per moto process: use a private [`Moto::start`].
    pub async fn hold(&self, action: &str, at: HoldAt) -> Result<(), RigError> {
        let at = match at {
            HoldAt::Request => "request",
            HoldAt::Answer => "answer",
        };
        self.post("/spotkube/hold", json!({ "action": action, "at": at }))
            .await?;
        Ok(())
    }

    /// The actions whose calls are held now.
    pub async fn held(&self) -> Result<Vec<String>, RigError> {
        let resp = reqwest::Client::new()
            .get(format!("{}/spotkube/hold", self.endpoint))
            .send()
            .await
            .map_err(|e| aws_err("held", e))?;
        let value: Value = resp.json().await.map_err(|e| aws_err("held", e))?;
        Ok(value["held"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(String::from))
            .collect())
    }

    /// Releases every hold (a held request is answered 503 without reaching moto).
    pub async fn release(&self) -> Result<(), RigError> {
        reqwest::Client::new()
            .delete(format!("{}/spotkube/hold", self.endpoint))
            .send()
            .await
            .map_err(|e| aws_err("release", e))?;
        Ok(())
    }

    /// Clears the InsufficientInstanceCapacity switch.
    pub async fn clear_insufficient_capacity(&self) -> Result<(), RigError> {
        reqwest::Client::new()
            .delete(format!("{}/spotkube/ice", self.endpoint))
            .send()
            .await
            .map_err(|e| aws_err("clear ice", e))?;
        Ok(())
    }

    /// Creates `<name>-dlq` and `<name>` with a redrive policy (`max_receive` receives before
    /// a message moves to the DLQ), as the controller's manifests document.
    pub async fn create_queue_with_dlq(
        &self,
        name: &str,
        max_receive: u32,
    ) -> Result<Queues, RigError> {
        use aws_sdk_sqs::types::QueueAttributeName;
        let sqs = self.sqs().await;
        let dlq_url = sqs
            .create_queue()
            .queue_name(format!("{name}-dlq"))
            .send()
            .await
            .map_err(|e| aws_err("create dlq", aws_sdk_sqs::error::DisplayErrorContext(e)))?
            .queue_url
            .unwrap_or_default();
        let dlq_arn = self.queue_arn(&sqs, &dlq_url).await?;
        let redrive =
            json!({ "deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive.to_string() })
                .to_string();
        let url = sqs
            .create_queue()
            .queue_name(name)
            .attributes(QueueAttributeName::RedrivePolicy, redrive)
            .send()
            .await
            .map_err(|e| aws_err("create queue", aws_sdk_sqs::error::DisplayErrorContext(e)))?
            .queue_url
            .unwrap_or_default();
        let arn = self.queue_arn(&sqs, &url).await?;
        Ok(Queues {
            url,
            arn,
            dlq_url,
            dlq_arn,
        })
    }

    async fn queue_arn(&self, sqs: &aws_sdk_sqs::Client, url: &str) -> Result<String, RigError> {
        use aws_sdk_sqs::types::QueueAttributeName;
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| aws_err("queue arn", aws_sdk_sqs::error::DisplayErrorContext(e)))?;
        attrs
            .attributes
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .ok_or_else(|| aws_err("queue arn", "missing"))
    }

    /// Puts `body` on the queue, as EventBridge's SQS target does (the body is the event).
    pub async fn send_message(&self, queue_url: &str, body: &str) -> Result<String, RigError> {
        let out = self
            .sqs()
            .await
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| aws_err("send message", aws_sdk_sqs::error::DisplayErrorContext(e)))?;
        Ok(out.message_id.unwrap_or_default())
    }

    /// Builds the event (see [`event`]) and puts it on the queue; returns the event.
    pub async fn send_event(
        &self,
        queue_url: &str,
        kind: EventKind,
        instance_id: &str,
        time: jiff::Timestamp,
    ) -> Result<Value, RigError> {
        let event = event(kind, instance_id, time)?;
        self.send_message(queue_url, &event.to_string()).await?;
        Ok(event)
    }

    /// Builds one event of `kind` per instance and puts them on the queue ten to a
    /// `SendMessageBatch` call, the calls concurrent: many warnings arriving within the
    /// same second, as a mass interruption delivers them. Each is still its own message.
    pub async fn send_events_batched(
        &self,
        queue_url: &str,
        kind: EventKind,
        instance_ids: &[String],
        time: jiff::Timestamp,
    ) -> Result<(), RigError> {
        use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
        use futures::StreamExt;
        let sqs = self.sqs().await;
        let mut batches = Vec::new();
        for (b, chunk) in instance_ids.chunks(10).enumerate() {
            let mut entries = Vec::new();
            for (i, id) in chunk.iter().enumerate() {
                let entry = SendMessageBatchRequestEntry::builder()
                    .id(format!("e{b}-{i}"))
                    .message_body(event(kind, id, time)?.to_string())
                    .build()
                    .map_err(|e| aws_err("batch entry", e))?;
                entries.push(entry);
            }
            batches.push(entries);
        }
        let results: Vec<Result<(), RigError>> =
            futures::stream::iter(batches.into_iter().map(|entries| {
                let sqs = sqs.clone();
                async move {
                    let out = sqs
                        .send_message_batch()
                        .queue_url(queue_url)
                        .set_entries(Some(entries))
                        .send()
                        .await
                        .map_err(|e| {
                            aws_err("send batch", aws_sdk_sqs::error::DisplayErrorContext(e))
                        })?;
                    match out.failed.first() {
                        Some(f) => Err(aws_err("send batch", format!("{f:?}"))),
                        None => Ok(()),
                    }
                }
            }))
            .buffer_unordered(32)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Approximate number of messages visible + in flight on a queue.
    pub async fn queue_depth(&self, queue_url: &str) -> Result<u64, RigError> {
        use aws_sdk_sqs::types::QueueAttributeName;
        let attrs = self
            .sqs()
            .await
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| aws_err("queue depth", aws_sdk_sqs::error::DisplayErrorContext(e)))?
            .attributes
            .unwrap_or_default();
        let get = |k: &QueueAttributeName| {
            attrs
                .get(k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(get(&QueueAttributeName::ApproximateNumberOfMessages)
            + get(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible))
    }

    /// Launches `count` instances of `instance_type` in `zone` (spot or on-demand) and returns
    /// their ids — name kwok nodes after them with [`crate::FakeNode::with_instance_id`].
    pub async fn run_instances(
        &self,
        instance_type: &str,
        zone: &str,
        spot: bool,
        count: i32,
    ) -> Result<Vec<String>, RigError> {
        let mut request = self
            .ec2()
            .await
            .run_instances()
            .image_id(TEST_AMI)
            .instance_type(InstanceType::from(instance_type))
            .placement(Placement::builder().availability_zone(zone).build())
            .min_count(count)
            .max_count(count);
        if spot {
            request = request.instance_market_options(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .build(),
            );
        }
        let out = request
            .send()
            .await
            .map_err(|e| aws_err("run instances", aws_sdk_ec2::error::DisplayErrorContext(e)))?;
        Ok(out
            .instances
            .unwrap_or_default()
            .into_iter()
            .filter_map(|i| i.instance_id)
            .collect())
    }

    /// Creates an Auto Scaling group `name` of `desired` instances of `instance_type` over
    /// `zones` (through a launch template `<name>-lt`); returns the instance ids (moto's
    /// instances are InService at once).
    pub async fn create_asg(
        &self,
        name: &str,
        instance_type: &str,
        zones: &[&str],
        desired: i32,
    ) -> Result<Vec<String>, RigError> {
        use aws_sdk_autoscaling::types::LaunchTemplateSpecification;
        use aws_sdk_ec2::types::RequestLaunchTemplateData;
        let template = format!("{name}-lt");
        self.ec2()
            .await
            .create_launch_template()
            .launch_template_name(&template)
            .launch_template_data(
                RequestLaunchTemplateData::builder()
                    .image_id(TEST_AMI)
                    .instance_type(InstanceType::from(instance_type))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                aws_err(
                    "create launch template",
                    aws_sdk_ec2::error::DisplayErrorContext(e),
                )
            })?;
        let asg = self.autoscaling().await;
        asg.create_auto_scaling_group()
            .auto_scaling_group_name(name)
            .launch_template(
                LaunchTemplateSpecification::builder()
                    .launch_template_name(&template)
                    .version("$Latest")
                    .build(),
            )
            .set_availability_zones(Some(zones.iter().map(|z| z.to_string()).collect()))
            .min_size(0)
            .max_size(desired.max(1) * 4)
            .desired_capacity(desired)
            .send()
            .await
            .map_err(|e| {
                aws_err(
                    "create asg",
                    aws_sdk_autoscaling::error::DisplayErrorContext(e),
                )
            })?;
        let groups = asg
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
            .map_err(|e| {
                aws_err(
                    "describe asg",
                    aws_sdk_autoscaling::error::DisplayErrorContext(e),
                )
            })?;
        Ok(groups
            .auto_scaling_groups
            .unwrap_or_default()
            .into_iter()
            .flat_map(|g| g.instances.unwrap_or_default())
            .filter_map(|i| i.instance_id)
            .collect())
    }

    /// Launches one EC2 instance in moto and returns the matching fake Node (providerID =
    /// that instance), ready to `.create(&client)`.
    pub async fn launch_node(
        &self,
        instance_type: &str,
        zone: &str,
        capacity: Capacity,
    ) -> Result<FakeNode, RigError> {
        let ids = self
            .run_instances(instance_type, zone, capacity == Capacity::Spot, 1)
            .await?;
        let id = ids
            .into_iter()
            .next()
            .ok_or_else(|| aws_err("run instances", "no instance returned"))?;
        Ok(FakeNode::ec2(instance_type, zone, capacity).with_instance_id(id))
    }

    /// Instance id → availability zone, for naming kwok nodes after moto's instances.
    pub async fn instance_zone(&self, instance_id: &str) -> Result<String, RigError> {
        let out = self
            .ec2()
            .await
            .describe_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map_err(|e| {
                aws_err(
                    "describe instances",
                    aws_sdk_ec2::error::DisplayErrorContext(e),
                )
            })?;
        out.reservations
            .unwrap_or_default()
            .into_iter()
            .flat_map(|r| r.instances.unwrap_or_default())
            .find_map(|i| i.placement.and_then(|p| p.availability_zone))
            .ok_or_else(|| aws_err("describe instances", format!("{instance_id} not found")))
    }
}
