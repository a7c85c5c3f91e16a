//! Notifications end to end: a spot interruption for a node running a single-replica
//! Deployment reaches a loopback Slack and generic webhook receiver, naming the node
//! and the Deployment, each notification once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use spotkube_rig::aws::{EventKind, Moto};
use spotkube_rig::{
    Cluster, FakeNode, wait_for, wait_for_rollout, wait_for_schedulable_nodes, workloads,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const POOL: &str = "spotkube.test/pool";
/// In both webhook URLs, as a Slack webhook's path or a token: never to be logged.
const SECRET: &str = "s3cr3t-t0ken";

/// A loopback HTTP/1.1 receiver that records every POST (path, JSON body) and
/// answers 200. Enough HTTP for a JSON webhook client: headers, Content-Length,
/// keep-alive.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Receiver {
    async fn start() -> anyhow::Result<(Receiver, String)> {
        let receiver = Receiver::default();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let accepting = receiver.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(accepting.clone().serve(stream));
            }
        });
        Ok((receiver, base))
    }

    async fn serve(self, stream: TcpStream) {
        let mut stream = BufReader::new(stream);
        loop {
            let mut request_line = String::new();
            if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                return;
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            let mut length = 0;
            loop {
                let mut header = String::new();
                if stream.read_line(&mut header).await.unwrap_or(0) == 0 {
                    return;
                }
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if stream.read_exact(&mut body).await.is_err() {
                return;
            }
            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
            self.got.lock().unwrap().push((path, body));
            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
            if stream.get_mut().write_all(ok).await.is_err() {
                return;
            }
        }
    }

    /// The bodies posted to a path starting with `prefix`.
    fn bodies(&self, prefix: &str) -> Vec<Value> {
        let got = self.got.lock().unwrap();
        got.iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .map(|(_, b)| b.clone())
            .collect()
    }
}

/// The generic notifications of `kind` about `object_kind` `name`.
fn generic(receiver: &Receiver, kind: &str, object_kind: &str, name: &str) -> Vec<Value> {
    receiver
        .bodies("/hook")
        .into_iter()
        .filter(|b| {
            b["kind"] == kind && b["object"]["kind"] == object_kind && b["object"]["name"] == name
        })
        .collect()
}

/// The Slack messages whose text contains every one of `parts`.
fn slack(receiver: &Receiver, parts: &[&str]) -> Vec<String> {
    receiver
        .bodies("/slack")
        .into_iter()
        .filter_map(|b| b["text"].as_str().map(String::from))
        .filter(|text| parts.iter().all(|p| text.contains(p)))
        .collect()
}

#[tokio::test]
async fn an_interruption_is_notified_naming_the_node_and_the_surged_deployment()
-> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let moto = Moto::shared().await?;
    let test = cluster
        .namespace_with("notify", &[("spotkube.io/enabled", "true")])
        .await?;
    let ns = test.name.clone();
    test.report(
        async {
            let queues = moto
                .create_queue_with_dlq(&format!("{ns}-events"), 2)
                .await?;
            let doomed = FakeNode::spot("m7g.large", "us-east-1a").with_label(POOL, &ns);
            doomed.create(&test.client).await?;
            let web = workloads::with_grace_period(
                workloads::with_node_selector(workloads::deployment("web", 1), POOL, &ns),
                1,
            );
            workloads::create_with_service(&test.client, &ns, &web).await?;
            wait_for_rollout(&test.client, &ns, "web", Duration::from_secs(60)).await?;
            FakeNode::spot("m7g.large", "us-east-1b")
                .with_label(POOL, &ns)
                .create(&test.client)
                .await?;
            wait_for_schedulable_nodes(
                &test.client,
                &format!("{POOL}={ns}"),
                2,
                Duration::from_secs(60),
            )
            .await?;

            let (receiver, base) = Receiver::start().await?;
            let controller = cluster
                .start_controller(
                    moto.controller_options(&queues.url, &ns)
                        .arg("--visibility-timeout=3s")
                        .arg("--message-deadline=2s")
                        .arg(format!("--slack-webhook-url={base}/slack/T0/B0/{SECRET}"))
                        .arg("--cluster-name=rig")
                        // The env twin works as the flag does.
                        .env(
                            "SPOTKUBE_NOTIFY_WEBHOOK_URL",
                            format!("{base}/hook?token={SECRET}"),
                        ),
                )
                .await?;
            moto.send_event(
                &queues.url,
                EventKind::SpotInterruptionWarning,
                &doomed.instance_id,
                jiff::Timestamp::now(),
            )
            .await?;

            let node = doomed.name.as_str();
            let workload = format!("{ns}/web");
            wait_for(
                "interruption and surge notified at both sinks",
                Duration::from_secs(20),
                || async {
                    let generic_done = !generic(&receiver, "interruption", "Node", node).is_empty()
                        && !generic(&receiver, "surge_started", "Deployment", "web").is_empty();
                    let slack_done = !slack(&receiver, &["Spot interruption", node]).is_empty()
                        && !slack(&receiver, &["Surge started", &workload]).is_empty();
                    Ok((generic_done && slack_done).then_some(()))
                },
            )
            .await?;
            let surge_finished = wait_for(
                "replacement Ready notified",
                Duration::from_secs(60),
                || async {
                    let found = generic(&receiver, "surge_finished", "Deployment", "web");
                    Ok((!found.is_empty()).then_some(found))
                },
            )
            .await?;
            anyhow::ensure!(surge_finished[0]["object"]["namespace"] == ns.as_str());
            // Past a visibility timeout: a redelivery would have come by now.
            tokio::time::sleep(Duration::from_secs(4)).await;

            let interruption = generic(&receiver, "interruption", "Node", node);
            let surge = generic(&receiver, "surge_started", "Deployment", "web");
            anyhow::ensure!(
                interruption.len() == 1 && surge.len() == 1,
                "each once, got {:#?}",
                receiver.bodies("/hook")
            );
            anyhow::ensure!(interruption[0]["node"] == node, "{}", interruption[0]);
            anyhow::ensure!(interruption[0]["reason"] == "SpotInterruption");
            anyhow::ensure!(interruption[0]["cluster"] == "rig");
            anyhow::ensure!(
                surge[0]["object"]["namespace"] == ns.as_str(),
                "{}",
                surge[0]
            );
            anyhow::ensure!(
                surge[0]["reason"] == "SurgeRestart" || surge[0]["reason"] == "SurgeScale",
                "{}",
                surge[0]
            );
            let slack_interruption = slack(&receiver, &["Spot interruption", node]);
            let slack_surge = slack(&receiver, &["Surge started", &workload]);
            anyhow::ensure!(
                slack_interruption.len() == 1 && slack_surge.len() == 1,
                "each once, got {:#?}",
                receiver.bodies("/slack")
            );
            anyhow::ensure!(slack_interruption[0].contains("(cluster `rig`)"));

            let metrics = controller.metrics().await?;
            for sink in ["slack", "webhook"] {
                let sent = format!(
                    "spotkube_controller_notifications_total{{sink=\"{sink}\",outcome=\"sent\"}}"
                );
                anyhow::ensure!(metrics.contains(&sent), "no {sent} in\n{metrics}");
            }
            let log = std::fs::read_to_string(controller.process.log_path())?;
            anyhow::ensure!(
                log.contains("notifications on"),
                "no startup line in\n{log}"
            );
            anyhow::ensure!(!log.contains(SECRET), "a webhook URL was logged:\n{log}");
            Ok(())
        }
        .await,
    )
}
