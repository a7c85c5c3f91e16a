//! Load benchmark: filter and prioritize with 5,000 nodes, in names mode
//! (`nodeCacheCapable: true`) and full-object mode, over HTTP on 127.0.0.1.
//!
//! `cargo bench -p spotkube-extender --bench load` (release profile). Prints p50 / p99
//! latency of sequential calls and requests/s with 4 concurrent clients. The router is
//! served by [`spotkube_extender::server::serve`], as the program serves it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use k8s_openapi::api::core::v1::Node;
use prometheus_client::registry::Registry;
use serde_json::json;
use spotkube_extender::cache::Cluster;
use spotkube_extender::metrics::Metrics;
use spotkube_extender::server::{AppState, Limits, router};
use spotkube_shared::ranking::{RankedType, Ranking, SCHEMA_VERSION};

/// The program's allocator, so the figures are the program's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NODES: usize = 5000;
const SEQUENTIAL: usize = 400;
/// Names-mode calls take about a millisecond: enough of them for a stable p99.
const SEQUENTIAL_NAMES: usize = 2000;
const CONCURRENCY: usize = 4;
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(3);

fn nodes() -> Vec<Node> {
    let types = ["c7g.4xlarge", "m7g.large", "c6g.large", "r7g.large"];
    let zones = ["us-east-1a", "us-east-1b", "us-east-1c"];
    (0..NODES)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {
                    "name": format!("ip-10-0-{}-{}.ec2.internal", i / 250, i % 250),
                    "labels": {
                        "kubernetes.io/arch": "arm64",
                        "kubernetes.io/os": "linux",
                        "eks.amazonaws.com/capacityType": "SPOT",
                        "node.kubernetes.io/instance-type": types[i % 4],
                        "topology.kubernetes.io/zone": zones[i % 3],
                        "topology.kubernetes.io/region": "us-east-1",
                    },
                },
                "spec": {"providerID": format!("aws:///{}/i-{i:017x}", zones[i % 3])},
                "status": {
                    "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110"},
                    "allocatable": {"cpu": "3920m", "memory": "15Gi", "pods": "110"},
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }))
            .unwrap()
        })
        .collect()
}

fn ranking() -> Ranking {
    let entry = |rank: u32, t: &str| RankedType {
        rank,
        instance_type: t.into(),
        spot_usd_per_hour: 0.05,
        on_demand_usd_per_hour: 0.1,
        savings_percent: 50.0,
        vcpu: 4,
        memory_gib: 8.0,
        interruption_band: Some(0),
        score: 0.0125,
    };
    let zones = ["us-east-1a", "us-east-1b", "us-east-1c"].map(|z| {
        (
            z.to_string(),
            vec![entry(1, "c7g.4xlarge"), entry(2, "m7g.large")],
        )
    });
    Ranking {
        schema_version: SCHEMA_VERSION.into(),
        computed_at: jiff::Timestamp::now(),
        source: "bench".into(),
        region: None,
        criteria: None,
        zones: BTreeMap::from(zones),
        unavailable: Vec::new(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn measure(
    client: &reqwest::Client,
    url: &str,
    body: &Bytes,
    label: &str,
    sequential: usize,
) {
    // Warm-up.
    for _ in 0..20 {
        post(client, url, body).await;
    }
    let mut latencies = Vec::with_capacity(sequential);
    for _ in 0..sequential {
        let start = Instant::now();
        post(client, url, body).await;
        latencies.push(start.elapsed());
    }
    latencies.sort();
    let deadline = Instant::now() + THROUGHPUT_WINDOW;
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, url, body) = (client.clone(), url.to_string(), body.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    post(&client, &url, &body).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let started = Instant::now();
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    let rps = total as f64 / started.elapsed().as_secs_f64();
    println!(
        "| {label} | {:.1} KiB | {:.3} ms | {:.3} ms | {:.0} |",
        body.len() as f64 / 1024.0,
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        rps
    );
}

async fn post(client: &reqwest::Client, url: &str, body: &Bytes) {
    let resp = client.post(url).body(body.clone()).send().await.unwrap();
    assert!(resp.status().is_success());
    resp.bytes().await.unwrap();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    spotkube_shared::telemetry::install_crypto_provider();
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let cluster = Cluster::new(None);
    let nodes = nodes();
    cluster.replace_nodes(&nodes);
    cluster.set_ranking(Some(ranking()));
    let app = router(
        AppState {
            cluster: cluster.clone(),
            metrics,
        },
        // Full Node objects are part of the load.
        Limits {
            max_body_bytes: 64 << 20,
            ..Limits::default()
        },
    );
    // Served exactly as `spotkube-extender` serves it (axum-server, keep-alive,
    // TCP_NODELAY on accepted sockets), over plain HTTP as shipped.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        spotkube_extender::server::serve(listener, None, app, axum_server::Handle::new())
            .await
            .unwrap()
    });

    let pod = json!({"metadata": {"name": "web-1", "namespace": "demo", "annotations": {}},
        "spec": {"containers": [{"name": "app", "image": "pause"}]}});
    let names: Vec<String> = nodes
        .iter()
        .map(|n| n.metadata.name.clone().unwrap())
        .collect();
    let by_names = Bytes::from(
        serde_json::to_vec(&json!({"Pod": pod, "Nodes": null, "NodeNames": names})).unwrap(),
    );
    let by_objects = Bytes::from(
        serde_json::to_vec(
            &json!({"Pod": pod, "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": null}),
        )
        .unwrap(),
    );

    // The handler alone (parse, decide, serialize), without HTTP: what the scheduler's
    // timeout budget pays for beyond the network.
    println!("handler only (no HTTP), {SEQUENTIAL} calls:");
    println!("| call | p50 | p99 |");
    println!("| --- | --- | --- |");
    for (label, body, verb) in [
        (
            "prioritize (names)",
            &by_names,
            spotkube_extender::verbs::prioritize as fn(&Cluster, &[u8]) -> _,
        ),
        (
            "filter (names)",
            &by_names,
            spotkube_extender::verbs::filter,
        ),
        (
            "prioritize (full objects)",
            &by_objects,
            spotkube_extender::verbs::prioritize,
        ),
        (
            "filter (full objects)",
            &by_objects,
            spotkube_extender::verbs::filter,
        ),
    ] {
        let mut latencies: Vec<Duration> = (0..SEQUENTIAL)
            .map(|_| {
                let start = Instant::now();
                verb(&cluster, body).unwrap();
                start.elapsed()
            })
            .collect();
        latencies.sort();
        println!(
            "| {label} | {:.3} ms | {:.3} ms |",
            percentile(&latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3
        );
    }

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .build()
        .unwrap();
    println!(
        "{NODES} nodes, {SEQUENTIAL_NAMES} (names) / {SEQUENTIAL} (full objects) sequential calls for p50/p99, {CONCURRENCY} concurrent clients for {THROUGHPUT_WINDOW:?} for req/s"
    );
    println!("| call | body | p50 | p99 | req/s |");
    println!("| --- | --- | --- | --- | --- |");
    for (verb, body, mode, sequential) in [
        ("prioritize", &by_names, "names", SEQUENTIAL_NAMES),
        ("filter", &by_names, "names", SEQUENTIAL_NAMES),
        ("prioritize", &by_objects, "full objects", SEQUENTIAL),
        ("filter", &by_objects, "full objects", SEQUENTIAL),
    ] {
        measure(
            &client,
            &format!("http://{addr}/{verb}"),
            body,
            &format!("{verb} ({mode})"),
            sequential,
        )
        .await;
    }
}
