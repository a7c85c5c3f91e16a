//! `make bench-capacity`: the capacity loop under a burst, on the rig (real control plane,
//! kwok, a private moto with realistic Auto Scaling, the node registrar joining instances
//! after `SPOTKUBE_BENCH_JOIN_DELAY` seconds, default 2) with a release controller.
//!
//! `SPOTKUBE_BENCH_REBALANCES` (default 50) rebalance recommendations sent at once,
//! spread over three spot pools: 40 % / 40 % / 20 % of the nodes. Pool 1's MaxSize leaves
//! room for only half of its requests, so it also shows the cap. Measured: event sent →
//! request sent (each Node's `requestedAt`), request sent → replacement Node Ready (the
//! Node's Ready transition), and when the last request was sent. Checked: no group ever
//! above its MaxSize (sampled every 250 ms), exactly one instance launched per request
//! (no double requests; requests of one group in one pass share one SetDesiredCapacity),
//! every request either replaced or left `unavailable` at the cap.
//!
//! Ignored in `make test` (a benchmark, not a check of behaviour that `e2e_capacity`
//! does not already make); figures in BENCHMARKS.md.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use serde_json::Value;
use spotkube_rig::autoscaling::{self, LaunchTemplate};
use spotkube_rig::aws::{EventKind, Moto};
use spotkube_rig::faults::{POOL, env_count, quantile};
use spotkube_rig::{Cluster, Registrar, RegistrarOptions, wait_for};

const TYPE: &str = "m7g.large";
const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

/// What the bench saw of one at-risk Node while it existed.
#[derive(Debug, Default, Clone)]
struct Seen {
    requested_at: Option<jiff::Timestamp>,
    replacement_node: Option<String>,
    phase: Option<String>,
}

fn ready_since(node: &Node) -> Option<jiff::Timestamp> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

#[tokio::test]
#[ignore = "benchmark: make bench-capacity"]
async fn a_burst_of_rebalances_across_three_pools() -> anyhow::Result<()> {
    let total = env_count("SPOTKUBE_BENCH_REBALANCES", 50);
    let join_delay = Duration::from_secs(env_count("SPOTKUBE_BENCH_JOIN_DELAY", 2) as u64);
    let sizes = [total * 2 / 5, total * 2 / 5, total - 2 * (total * 2 / 5)];
    // Pool 1 can grow by half its nodes only.
    let max: Vec<usize> = vec![sizes[0] * 2, sizes[1] + sizes[1] / 2, sizes[2] * 2];
    let cluster = Cluster::shared().await?;
    let test = cluster
        .namespace_with("bench-capacity", &[("spotkube.io/enabled", "true")])
        .await?;
    let result = async {
        let moto = Moto::start().await?;
        let queues = moto
            .create_queue_with_dlq(&format!("{}-events", test.name), 3)
            .await?;
        LaunchTemplate::new("bench-lt", TYPE).create(&moto).await?;
        let groups: Vec<String> = (0..3).map(|i| format!("{}-p{i}", test.name)).collect();
        for (i, group) in groups.iter().enumerate() {
            let pool = format!("p{i}");
            let size = (0, max[i] as i32, sizes[i] as i32);
            autoscaling::spot_pool_group(group, "bench-lt", &pool, TYPE, &ZONES, size)
                .create(&moto)
                .await?;
        }
        let registrar = Registrar::start(
            &moto,
            test.client.clone(),
            RegistrarOptions::default()
                .join_delay(join_delay)
                .label(POOL, test.name.clone()),
        )
        .await;
        let mut doomed: Vec<String> = Vec::new();
        for group in &groups {
            doomed.extend(autoscaling::instance_ids(
                &autoscaling::group(&moto, group).await?,
            ));
        }
        let nodes_of = wait_for("every node joined", Duration::from_secs(120), || async {
            let joined = registrar.joined();
            Ok(doomed
                .iter()
                .map(|i| joined.get(i).cloned())
                .collect::<Option<Vec<String>>>())
        })
        .await?;
        let controller = cluster
            .start_controller(
                moto.controller_options(&queues.url, &test.name)
                    .arg("--capacity-interval=1s")
                    .arg(format!("--capacity-max-drains={total}"))
                    .arg("--visibility-timeout=30s"),
            )
            .await?;
        let nodes: Api<Node> = Api::all(test.client.clone());

        let sent = jiff::Timestamp::now();
        let started = Instant::now();
        moto.send_events_batched(&queues.url, EventKind::RebalanceRecommendation, &doomed, sent)
            .await?;
        let sent_in = started.elapsed();
        let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
        let mut above_max = Vec::new();
        // Every instance each group ever had: launches beyond the initial ones are the
        // replacements, one per request if nothing was asked twice.
        let mut ever: Vec<std::collections::BTreeSet<String>> = vec![Default::default(); 3];
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            for node in &nodes_of {
                let Some(n) = nodes.get_opt(node).await? else {
                    continue;
                };
                let Some(request) = n
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("spotkube.io/capacity-request"))
                else {
                    continue;
                };
                let request: Value = serde_json::from_str(request)?;
                let entry = seen.entry(node.clone()).or_default();
                if let Some(at) = request["requestedAt"].as_str() {
                    entry.requested_at.get_or_insert(at.parse()?);
                }
                if let Some(r) = request["replacementNode"].as_str() {
                    entry.replacement_node = Some(r.to_string());
                }
                entry.phase = request["phase"].as_str().map(str::to_string);
            }
            for (i, group) in groups.iter().enumerate() {
                let g = autoscaling::group(&moto, group).await?;
                let desired = g.desired_capacity().unwrap_or_default() as usize;
                ever[i].extend(autoscaling::instance_ids(&g));
                if desired > max[i] {
                    above_max.push((group.clone(), desired));
                }
            }
            let mut done = 0;
            for node in &nodes_of {
                let gone = nodes.get_opt(node).await?.is_none();
                let entry = seen.get(node);
                let replaced = gone && entry.is_some_and(|e| e.replacement_node.is_some());
                let capped = entry.is_some_and(|e| e.phase.as_deref() == Some("unavailable"));
                done += usize::from(replaced || capped);
            }
            if done == nodes_of.len() {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{done}/{} done after 600 s",
                nodes_of.len()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let finished = started.elapsed();

        anyhow::ensure!(above_max.is_empty(), "above MaxSize: {above_max:?}");
        let requested: Vec<&Seen> = seen.values().filter(|s| s.requested_at.is_some()).collect();
        let capped = seen
            .values()
            .filter(|s| s.phase.as_deref() == Some("unavailable"))
            .count();
        let set_desired = moto.calls("SetDesiredCapacity").await? as usize;
        let launched: usize = (0..3).map(|i| ever[i].len() - sizes[i]).sum();
        anyhow::ensure!(
            launched == requested.len(),
            "{launched} instances launched for {} requests",
            requested.len()
        );
        let room: usize = (0..3).map(|i| (max[i] - sizes[i]).min(sizes[i])).sum();
        anyhow::ensure!(
            requested.len() == room && capped == total - room,
            "{} requested, {capped} capped; expected {room} and {}",
            requested.len(),
            total - room
        );
        let to_request: Vec<Duration> = requested
            .iter()
            .map(|s| s.requested_at.unwrap().duration_since(sent).unsigned_abs())
            .collect();
        let mut to_ready = Vec::new();
        for s in &requested {
            let node = s.replacement_node.as_ref().expect("replaced");
            let ready = ready_since(&nodes.get(node).await?).expect("Ready");
            to_ready.push(ready.duration_since(s.requested_at.unwrap()).unsigned_abs());
        }
        let last_request = to_request.iter().max().copied().unwrap_or_default();
        for (group, _) in groups.iter().zip(0..) {
            let g = autoscaling::group(&moto, group).await?;
            eprintln!(
                "BENCH capacity group {group}: desired {} max {} instances {}",
                g.desired_capacity().unwrap_or_default(),
                g.max_size().unwrap_or_default(),
                autoscaling::instance_ids(&g).len()
            );
        }
        let metrics = controller.metrics().await?;
        let pending = spotkube_rig::faults::metric_value(
            &metrics,
            "spotkube_controller_capacity_pending_requests",
        );
        eprintln!(
            "BENCH capacity: {total} rebalances over 3 pools sent in {:.2} s; {} requests sent, {capped} capped at MaxSize, {launched} instances launched with {set_desired} SetDesiredCapacity calls, no group above MaxSize; \
             sent → request p50 {:.2} s p99 {:.2} s, last request {:.2} s after the send; \
             request → replacement Ready (join delay {} s) p50 {:.1} s p99 {:.1} s; all replaced and drained in {:.1} s; pending gauge at the end {pending:?}",
            sent_in.as_secs_f64(),
            requested.len(),
            quantile(&to_request, 0.5).as_secs_f64(),
            quantile(&to_request, 0.99).as_secs_f64(),
            last_request.as_secs_f64(),
            join_delay.as_secs(),
            quantile(&to_ready, 0.5).as_secs_f64(),
            quantile(&to_ready, 0.99).as_secs_f64(),
            finished.as_secs_f64(),
        );
        Ok(())
    }
    .await;
    test.report(result)
}
