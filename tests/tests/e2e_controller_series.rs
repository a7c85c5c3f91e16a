//! A series of spot interruptions, one after the other, against one controller: every
//! one must be acted on (taint, then a Ready replacement elsewhere). The latencies it
//! observes — message sent → Node tainted, message sent → replacement Ready — are written
//! to `$SPOTKUBE_BENCH_OUT` when set (the benchmark in BENCHMARKS.md); they are recorded,
//! never asserted.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use spotkube_rig::aws::{EventKind, Moto};
use spotkube_rig::{
    Cluster, FakeNode, wait_for, wait_for_rollout, wait_for_schedulable_nodes, workloads,
};

const POOL: &str = "spotkube.test/pool";

fn deployment(name: &str, pool: &str) -> Deployment {
    let deployment = workloads::with_node_selector(workloads::deployment(name, 1), POOL, pool);
    workloads::with_grace_period(deployment, 1)
}

fn runs() -> usize {
    std::env::var("SPOTKUBE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

fn summary(name: &str, mut values: Vec<Duration>) -> String {
    values.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "| {name} | {} | {:.0} ms | {:.0} ms | {:.0} ms |",
        values.len(),
        ms(values[0]),
        ms(values[values.len() / 2]),
        ms(values[values.len() - 1])
    )
}

#[tokio::test]
async fn a_series_of_interruptions_is_each_acted_on() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let test = cluster
        .namespace_with("ctl-series", &[("spotkube.io/enabled", "true")])
        .await?;
    let result = async {
        let moto = Moto::shared().await?;
        let queues = moto
            .create_queue_with_dlq(&format!("{}-events", test.name), 2)
            .await?;
        let n = runs();
        // Every workload on its own doomed node, with a spare node in its pool.
        let mut doomed = Vec::new();
        let deployments: Api<Deployment> = Api::namespaced(test.client.clone(), &test.name);
        for i in 0..n {
            let pool = format!("{}-{i}", test.name);
            let node = FakeNode::spot("m7g.large", "us-east-1a").with_label(POOL, &pool);
            node.create(&test.client).await?;
            deployments
                .create(&PostParams::default(), &deployment(&format!("web-{i}"), &pool))
                .await?;
            doomed.push((node, pool));
        }
        for i in 0..n {
            wait_for_rollout(&test.client, &test.name, &format!("web-{i}"), Duration::from_secs(120))
                .await?;
        }
        for (_, pool) in &doomed {
            FakeNode::spot("m7g.large", "us-east-1b")
                .with_label(POOL, pool)
                .create(&test.client)
                .await?;
        }
        // Measure spotkube, not kwok: every spare is schedulable before the first event.
        for (_, pool) in &doomed {
            wait_for_schedulable_nodes(
                &test.client,
                &format!("{POOL}={pool}"),
                2,
                Duration::from_secs(60),
            )
            .await?;
        }
        let _controller = cluster
            .start_controller(moto.controller_options(&queues.url, &test.name))
            .await?;
        let nodes: Api<Node> = Api::all(test.client.clone());
        let pods: Api<Pod> = Api::namespaced(test.client.clone(), &test.name);
        let (mut to_taint, mut to_ready) = (Vec::new(), Vec::new());
        for (i, (node, _)) in doomed.iter().enumerate() {
            let sent = Instant::now();
            moto.send_event(
                &queues.url,
                EventKind::SpotInterruptionWarning,
                &node.instance_id,
                jiff::Timestamp::now(),
            )
            .await?;
            wait_for("node tainted", Duration::from_secs(30), || async {
                let n = nodes.get(&node.name).await?;
                let tainted = n.spec.and_then(|s| s.taints).is_some_and(|t| {
                    t.iter().any(|t| t.key == "spotkube.io/interruption" && t.effect == "NoSchedule")
                });
                Ok(tainted.then_some(()))
            })
            .await?;
            to_taint.push(sent.elapsed());
            let name = format!("web-{i}");
            wait_for("replacement Ready on another node", Duration::from_secs(60), || async {
                let list = pods.list(&ListParams::default().labels(&format!("app={name}"))).await?;
                let ready_elsewhere = list.items.iter().any(|p| {
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node.name.as_str())
                        && p.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                });
                Ok(ready_elsewhere.then_some(()))
            })
            .await?;
            to_ready.push(sent.elapsed());
        }
        assert_eq!(to_taint.len(), n);
        if let Some(out) = std::env::var_os("SPOTKUBE_BENCH_OUT") {
            let text = format!(
                "| measure (message sent → …) | runs | min | median | max |\n|---|---|---|---|---|\n{}\n{}\n",
                summary("Node tainted", to_taint),
                summary("replacement Ready on another node", to_ready)
            );
            std::fs::write(out, text)?;
        }
        Ok(())
    }
    .await;
    test.report(result)
}
