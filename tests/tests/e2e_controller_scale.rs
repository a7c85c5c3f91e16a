//! The controller on a larger cluster: `$SPOTKUBE_SCALE_NODES` kwok nodes (default 50)
//! running `$SPOTKUBE_SCALE_PODS` pods (default 500). An interruption for the last
//! node created must still be acted on (the providerID index holds every node). The
//! controller's resident memory is written to `$SPOTKUBE_BENCH_OUT` when set (recorded,
//! never asserted).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, PostParams};
use spotkube_rig::aws::{EventKind, Moto};
use spotkube_rig::{Cluster, FakeNode, wait_for, workloads};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[tokio::test]
async fn an_interruption_is_acted_on_among_many_nodes_and_pods() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let test = cluster
        .namespace_with("ctl-scale", &[("spotkube.io/enabled", "true")])
        .await?;
    let result = async {
        let (n_nodes, n_pods) = (
            env("SPOTKUBE_SCALE_NODES", 50),
            env("SPOTKUBE_SCALE_PODS", 500),
        );
        let mut last = None;
        for i in 0..n_nodes {
            let node = FakeNode::spot(
                "m7g.2xlarge",
                ["us-east-1a", "us-east-1b", "us-east-1c"][i % 3],
            )
            .with_label("spotkube.test/pool", &test.name)
            .with_max_pods(((n_pods / n_nodes) * 2 + 10) as u32);
            node.create(&test.client).await?;
            last = Some(node);
        }
        let last = last.expect("at least one node");
        let deployments: Api<Deployment> = Api::namespaced(test.client.clone(), &test.name);
        let per = 10.min(n_pods).max(1);
        for d in 0..per {
            let deployment = workloads::with_node_selector(
                workloads::deployment(&format!("w{d}"), (n_pods / per) as i32),
                "spotkube.test/pool",
                &test.name,
            );
            deployments
                .create(&PostParams::default(), &deployment)
                .await?;
        }
        let moto = Moto::shared().await?;
        let queues = moto
            .create_queue_with_dlq(&format!("{}-events", test.name), 2)
            .await?;
        let controller = cluster
            .start_controller(moto.controller_options(&queues.url, &test.name))
            .await?;
        let pods: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(test.client.clone(), &test.name);
        wait_for("pods running", Duration::from_secs(600), || async {
            let running = pods
                .list(&ListParams::default().fields("status.phase=Running"))
                .await?
                .items
                .len();
            Ok((running >= n_pods / per * per).then_some(()))
        })
        .await?;
        let nodes: Api<Node> = Api::all(test.client.clone());
        moto.send_event(
            &queues.url,
            EventKind::SpotInterruptionWarning,
            &last.instance_id,
            jiff::Timestamp::now(),
        )
        .await?;
        wait_for("last node tainted", Duration::from_secs(60), || async {
            let n = nodes.get(&last.name).await?;
            Ok(n.spec
                .and_then(|s| s.taints)
                .is_some_and(|t| t.iter().any(|t| t.key == "spotkube.io/interruption"))
                .then_some(()))
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rss = controller.process.pid().and_then(rss_kib);
        if let (Some(out), Some(rss)) = (std::env::var_os("SPOTKUBE_BENCH_OUT"), rss) {
            std::fs::write(
                out,
                format!(
                    "controller VmRSS with {n_nodes} nodes / {n_pods} pods: {:.1} MiB\n",
                    rss as f64 / 1024.0
                ),
            )?;
        }
        Ok(())
    }
    .await;
    test.report(result)
}
