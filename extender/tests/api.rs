//! Component tests: the extender API served for real on 127.0.0.1 (plain HTTP and TLS),
//! driven with the ExtenderArgs captured from a real kube-scheduler
//! (`shared/fixtures/extender/`) and with generated 5,000-node payloads.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use spotkube_extender::cache::Cluster;
use spotkube_extender::metrics::Metrics;
use spotkube_extender::server::{AppState, DEFAULT_MAX_CONCURRENT_REQUESTS, Limits, router};
use spotkube_shared::extender_api::{ExtenderFilterResult, HostPriority};
use spotkube_shared::ranking::{RankedType, Ranking, SCHEMA_VERSION};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/fixtures/extender");

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn fixture_nodes() -> Vec<Node> {
    serde_json::from_value(fixture("filter-full-nodes.json")["Nodes"]["items"].clone()).unwrap()
}

struct Server {
    addr: SocketAddr,
    cluster: Cluster,
    registry: Arc<Registry>,
    http: reqwest::Client,
    scheme: &'static str,
}

/// Room for the 5,000 full Node objects of `five_thousand_nodes_in_both_modes`.
const FULL_OBJECTS: Limits = Limits {
    max_body_bytes: 64 << 20,
    max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
};

impl Server {
    async fn start() -> Server {
        Server::start_with(FULL_OBJECTS).await
    }

    async fn start_with(limits: Limits) -> Server {
        spotkube_shared::telemetry::install_crypto_provider();
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let cluster = Cluster::new(None);
        let app = router(
            AppState {
                cluster: cluster.clone(),
                metrics,
            },
            limits,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Server {
            addr,
            cluster,
            registry: Arc::new(registry),
            http: reqwest::Client::new(),
            scheme: "http",
        }
    }

    async fn post(&self, verb: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
        let resp = self
            .http
            .post(format!("{}://{}/{verb}", self.scheme, self.addr))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn filter(&self, args: &Value) -> ExtenderFilterResult {
        let (status, body) = self.post("filter", args.to_string()).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn prioritize(&self, args: &Value) -> BTreeMap<String, i64> {
        let (status, body) = self.post("prioritize", args.to_string()).await;
        assert_eq!(status, 200, "{body}");
        let list: Vec<HostPriority> = serde_json::from_str(&body).unwrap();
        list.into_iter().map(|h| (h.host, h.score)).collect()
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).unwrap();
        out
    }
}

fn entry(rank: u32, instance_type: &str) -> RankedType {
    RankedType {
        rank,
        instance_type: instance_type.into(),
        spot_usd_per_hour: 0.03,
        on_demand_usd_per_hour: 0.08,
        savings_percent: 62.5,
        vcpu: 2,
        memory_gib: 8.0,
        interruption_band: Some(1),
        score: 0.015,
    }
}

/// m7g.large: rank 1 in us-east-1b, rank 6 in us-east-1a, not ranked in us-east-1c.
fn ranking() -> Ranking {
    let mut zones = BTreeMap::new();
    zones.insert(
        "us-east-1a".to_string(),
        [
            "c7g.4xlarge",
            "c7g.2xlarge",
            "c8g.xlarge",
            "c7g.xlarge",
            "m7g.2xlarge",
            "m7g.large",
        ]
        .iter()
        .enumerate()
        .map(|(i, t)| entry(i as u32 + 1, t))
        .collect(),
    );
    zones.insert("us-east-1b".to_string(), vec![entry(1, "m7g.large")]);
    zones.insert("us-east-1c".to_string(), vec![entry(1, "c7g.xlarge")]);
    Ranking {
        schema_version: SCHEMA_VERSION.into(),
        computed_at: "2026-11-22T04:00:00Z".parse().unwrap(),
        source: "test".into(),
        region: Some("us-east-1".into()),
        criteria: None,
        zones,
        unavailable: Vec::new(),
    }
}

fn interrupted(mut node: Node, kind: &str) -> Node {
    node.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(
            "spotkube.io/interruption".into(),
            json!({ "kind": kind }).to_string(),
        );
    node
}

#[tokio::test]
async fn filter_names_keeps_healthy_and_fails_interrupted_and_unknown() {
    let server = Server::start().await;
    let mut nodes = fixture_nodes();
    nodes[1] = interrupted(nodes[1].clone(), "spot-interruption");
    server.cluster.replace_nodes(&nodes);

    let result = server.filter(&fixture("filter-node-names.json")).await;
    assert_eq!(result.node_names.unwrap(), ["fake-node-1", "fake-node-3"]);
    assert!(result.nodes.is_none());
    assert_eq!(result.error, "");
    let reason = &result.failed_nodes["fake-node-2"];
    assert!(reason.contains("spot-interruption"), "{reason}");

    let mut args = fixture("filter-node-names.json");
    args["NodeNames"] = json!(["fake-node-1", "ghost"]);
    let result = server.filter(&args).await;
    assert_eq!(result.node_names.unwrap(), ["fake-node-1"]);
    assert_eq!(
        result.failed_nodes["ghost"],
        "node is not in spotkube's node cache"
    );
    let metrics = server.metrics();
    assert!(
        metrics.contains(r#"spotkube_extender_filtered_nodes_total{reason="interrupted"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"spotkube_extender_filtered_nodes_total{reason="unknown"} 1"#));
}

#[tokio::test]
async fn filter_full_nodes_returns_the_passing_objects() {
    let server = Server::start().await;
    let result = server.filter(&fixture("filter-full-nodes.json")).await;
    let names: Vec<_> = result
        .nodes
        .unwrap()
        .items
        .into_iter()
        .map(|n| n.metadata.name.unwrap())
        .collect();
    assert_eq!(names, ["fake-node-1", "fake-node-2", "fake-node-3"]);
    assert!(result.node_names.is_none());

    // Full-object mode judges the objects in the request, not the cache.
    let mut args = fixture("filter-full-nodes.json");
    args["Nodes"]["items"][2]["spec"]["taints"] =
        json!([{"key": "spotkube.io/interruption", "effect": "NoSchedule"}]);
    let result = server.filter(&args).await;
    let passed = result.nodes.unwrap().items;
    assert_eq!(passed.len(), 2);
    assert_eq!(
        passed[0],
        fixture_nodes()[0],
        "passing nodes come back unchanged"
    );
    assert!(result.failed_nodes["fake-node-3"].contains("taint"));
}

#[tokio::test]
async fn rebalancing_nodes_pass_the_filter() {
    let server = Server::start().await;
    let mut nodes = fixture_nodes();
    nodes[0] = interrupted(nodes[0].clone(), "rebalance-recommendation");
    server.cluster.replace_nodes(&nodes);
    let result = server.filter(&fixture("filter-node-names.json")).await;
    assert_eq!(result.node_names.unwrap().len(), 3);
}

#[tokio::test]
async fn policy_excludes_spot_for_on_demand_pods() {
    let server = Server::start().await;
    server.cluster.replace_nodes(&fixture_nodes());
    server.cluster.set_namespace(
        "demo",
        BTreeMap::from([("spotkube.io/enabled".to_string(), "true".to_string())]),
    );
    let mut args = fixture("filter-node-names.json");
    args["Pod"]["metadata"]["annotations"] = json!({"spotkube.io/capacity": "on-demand"});
    let result = server.filter(&args).await;
    assert!(result.node_names.unwrap().is_empty());
    assert_eq!(
        result.failed_nodes["fake-node-1"],
        "pod policy spotkube.io/capacity=on-demand excludes spot nodes"
    );

    // A `fargate` pod should never reach the extender; if one does, it is on-demand.
    args["Pod"]["metadata"]["annotations"] = json!({"spotkube.io/capacity": "fargate"});
    let result = server.filter(&args).await;
    assert!(result.node_names.unwrap().is_empty());
    assert_eq!(
        result.failed_nodes["fake-node-1"],
        "pod policy spotkube.io/capacity=fargate excludes spot nodes"
    );

    // spot-only keeps spot nodes.
    args["Pod"]["metadata"]["annotations"] = json!({"spotkube.io/capacity": "spot-only"});
    assert_eq!(server.filter(&args).await.node_names.unwrap().len(), 3);

    // A namespace that did not opt in is not policed.
    server.cluster.set_namespace("demo", BTreeMap::new());
    args["Pod"]["metadata"]["annotations"] = json!({"spotkube.io/capacity": "on-demand"});
    assert_eq!(server.filter(&args).await.node_names.unwrap().len(), 3);
}

#[tokio::test]
async fn daemonset_pods_are_not_kept_off_nodes_by_policy() {
    let server = Server::start().await;
    let mut nodes = fixture_nodes();
    nodes[1] = interrupted(nodes[1].clone(), "spot-interruption");
    server.cluster.replace_nodes(&nodes);
    server.cluster.set_namespace(
        "demo",
        BTreeMap::from([
            ("spotkube.io/enabled".to_string(), "true".to_string()),
            ("spotkube.io/capacity".to_string(), "on-demand".to_string()),
        ]),
    );
    let mut args = fixture("filter-node-names.json");
    args["Pod"]["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "DaemonSet",
        "name": "agent", "uid": "d5", "controller": true, "blockOwnerDeletion": true}]);
    let result = server.filter(&args).await;
    // The on-demand namespace excludes no spot node for it; an interruption still does.
    assert_eq!(result.node_names.unwrap(), ["fake-node-1", "fake-node-3"]);
    assert_eq!(result.failed_nodes.len(), 1);
    assert!(result.failed_nodes["fake-node-2"].contains("spot-interruption"));
}

#[tokio::test]
async fn prioritize_scores_by_rank_in_the_node_zone() {
    let server = Server::start().await;
    server.cluster.replace_nodes(&fixture_nodes());

    // No ranking: neutral scores and a warning metric, never an error.
    let scores = server
        .prioritize(&fixture("prioritize-node-names.json"))
        .await;
    assert_eq!(scores.values().copied().collect::<Vec<_>>(), [5, 5, 5]);
    assert!(
        server
            .metrics()
            .contains("spotkube_extender_prioritize_without_ranking_total 1")
    );

    server.cluster.set_ranking(Some(ranking()));
    let expected = BTreeMap::from([
        ("fake-node-1".to_string(), 5),  // us-east-1a: rank 6
        ("fake-node-2".to_string(), 10), // us-east-1b: rank 1
        ("fake-node-3".to_string(), 2),  // us-east-1c: spot, not ranked there
    ]);
    assert_eq!(
        server
            .prioritize(&fixture("prioritize-node-names.json"))
            .await,
        expected
    );
    assert_eq!(
        server
            .prioritize(&fixture("prioritize-full-nodes.json"))
            .await,
        expected
    );

    // Rebalance recommendation: 0. Unknown names: 0.
    let mut nodes = fixture_nodes();
    nodes[1] = interrupted(nodes[1].clone(), "rebalance-recommendation");
    server.cluster.apply_node(&nodes[1]);
    let mut args = fixture("prioritize-node-names.json");
    args["NodeNames"] = json!(["fake-node-2", "ghost"]);
    let scores = server.prioritize(&args).await;
    assert_eq!(
        scores,
        BTreeMap::from([("fake-node-2".to_string(), 0), ("ghost".to_string(), 0)])
    );
}

#[tokio::test]
async fn on_demand_nodes_score_below_unranked_spot() {
    let server = Server::start().await;
    let mut node = fixture_nodes()[0].clone();
    node.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("eks.amazonaws.com/capacityType".into(), "ON_DEMAND".into());
    server.cluster.replace_nodes(&[node]);
    server.cluster.set_ranking(Some(ranking()));
    let mut args = fixture("prioritize-node-names.json");
    args["NodeNames"] = json!(["fake-node-1"]);
    assert_eq!(server.prioritize(&args).await["fake-node-1"], 1);
}

#[tokio::test]
async fn bad_input_is_400_with_a_reason() {
    let server = Server::start().await;
    for verb in ["filter", "prioritize"] {
        let (status, body) = server.post(verb, "not json").await;
        assert_eq!(status, 400);
        assert!(
            body.starts_with("request body is not ExtenderArgs"),
            "{body}"
        );
        let (status, body) = server
            .post(
                verb,
                r#"{"Pod":{"metadata":{}},"Nodes":null,"NodeNames":null}"#,
            )
            .await;
        assert_eq!(
            (status, body.as_str()),
            (400, "ExtenderArgs carries neither Nodes nor NodeNames")
        );
        let (status, body) = server.post(verb, r#"{"NodeNames":["a"]}"#).await;
        assert_eq!(status, 400);
        assert!(body.contains("missing field `Pod`"), "{body}");
    }
    assert!(
        server
            .metrics()
            .contains(r#"spotkube_extender_bad_requests_total{verb="filter"} 3"#)
    );
}

fn generated_nodes(n: usize) -> Vec<Node> {
    let types = ["c7g.4xlarge", "m7g.large", "c6g.large", "r7g.large"];
    let zones = ["us-east-1a", "us-east-1b", "us-east-1c"];
    (0..n)
        .map(|i| {
            let mut node = fixture_nodes()[0].clone();
            node.metadata.name = Some(format!("node-{i:05}"));
            node.metadata.annotations = None;
            node.metadata.managed_fields = None;
            let labels = node.metadata.labels.as_mut().unwrap();
            labels.insert(
                "node.kubernetes.io/instance-type".into(),
                types[i % 4].into(),
            );
            labels.insert("topology.kubernetes.io/zone".into(), zones[i % 3].into());
            if i % 50 == 7 {
                node = interrupted(node, "spot-interruption");
            }
            node
        })
        .collect()
}

#[tokio::test]
async fn five_thousand_nodes_in_both_modes() {
    let server = Server::start().await;
    let nodes = generated_nodes(5000);
    server.cluster.replace_nodes(&nodes);
    server.cluster.set_ranking(Some(ranking()));
    let names: Vec<String> = nodes
        .iter()
        .map(|n| n.metadata.name.clone().unwrap())
        .collect();
    let pod = fixture("filter-node-names.json")["Pod"].clone();
    let by_names = json!({"Pod": pod, "Nodes": null, "NodeNames": names});
    let by_objects =
        json!({"Pod": pod, "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": null});

    let interrupted = (0..5000).filter(|i| i % 50 == 7).count();
    let result = server.filter(&by_names).await;
    assert_eq!(result.node_names.unwrap().len(), 5000 - interrupted);
    assert_eq!(result.failed_nodes.len(), interrupted);
    let result = server.filter(&by_objects).await;
    assert_eq!(result.nodes.unwrap().items.len(), 5000 - interrupted);
    assert_eq!(result.failed_nodes.len(), interrupted);

    let from_names = server.prioritize(&by_names).await;
    let from_objects = server.prioritize(&by_objects).await;
    assert_eq!(from_names.len(), 5000);
    assert_eq!(from_names, from_objects);
    // node-00000: c7g.4xlarge in us-east-1a = rank 1; node-00001: m7g.large in
    // us-east-1b = rank 1; node-00005: m7g.large in us-east-1c = unranked spot;
    // node-00007: interrupted = 0.
    assert_eq!(from_names["node-00000"], 10);
    assert_eq!(from_names["node-00001"], 10);
    assert_eq!(from_names["node-00005"], 2);
    assert_eq!(from_names["node-00007"], 0);
    // node-00004: c7g.4xlarge in us-east-1b, where only m7g.large is ranked.
    assert_eq!(from_names["node-00004"], 2);
}

/// The defaults are sized for node names (`nodeCacheCapable: true`): 5,000 of the
/// longest names with a 3 MiB Pod pass; 5,000 full Node objects are refused with 413.
#[tokio::test]
async fn default_body_limit_fits_five_thousand_longest_names_but_not_full_objects() {
    use clap::Parser as _;
    let defaults = spotkube_extender::Args::try_parse_from(["spotkube-extender"])
        .unwrap()
        .limits();
    let server = Server::start_with(defaults).await;
    let mut pod = fixture("filter-node-names.json")["Pod"].clone();
    // The largest Pod the API server accepts: a 3 MiB request body.
    pod["metadata"]["annotations"] =
        json!({"example.com/bulk": "x".repeat(3 * 1024 * 1024 - 4096)});
    // Node names are DNS subdomains: at most 253 characters.
    let names: Vec<String> = (0..5000)
        .map(|i| format!("{i:05}-{}", "a".repeat(247)))
        .collect();
    assert_eq!(names[0].len(), 253);
    let by_names = json!({"Pod": pod, "Nodes": null, "NodeNames": names}).to_string();
    assert!(by_names.len() > 4 << 20, "{} bytes", by_names.len());
    let (status, body) = server.post("filter", by_names).await;
    assert_eq!(status, 200, "{body}");

    let pod = fixture("filter-node-names.json")["Pod"].clone();
    let by_objects = json!({"Pod": pod, "Nodes": {"metadata": {}, "items": generated_nodes(5000)}, "NodeNames": null});
    let (status, _) = server.post("filter", by_objects.to_string()).await;
    assert_eq!(
        status, 413,
        "full Node objects need a raised --max-body-bytes"
    );
}

/// A call beyond `--max-concurrent-requests` is refused at once (503, Retry-After), and
/// counted; the call in flight is unaffected and the next one after it is served.
#[tokio::test]
async fn calls_beyond_the_concurrency_limit_are_refused_with_503() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = Server::start_with(Limits {
        max_concurrent_requests: 1,
        ..FULL_OBJECTS
    })
    .await;
    server.cluster.replace_nodes(&fixture_nodes());
    let body = fixture("filter-node-names.json").to_string();
    let url = format!("http://{}/filter", server.addr);

    // A call whose body is only half sent holds the one permit.
    let (head, tail) = body.split_at(body.len() / 2);
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(
        format!(
            "POST /filter HTTP/1.1\r\nhost: extender\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{head}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let refused = loop {
        let resp = server
            .http
            .post(&url)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        if resp.status() == 503 {
            break resp;
        }
        // The slow call's headers were not read yet.
        assert_eq!(resp.status(), 200);
        assert!(tokio::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(
        refused.text().await.unwrap(),
        "too many concurrent requests\n"
    );
    assert!(
        server
            .metrics()
            .contains("spotkube_extender_overloaded_requests_total 1"),
        "{}",
        server.metrics()
    );

    slow.write_all(tail.as_bytes()).await.unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"NodeNames\""), "{answer}");
    let (status, _) = server.post("filter", body).await;
    assert_eq!(status, 200, "the permit is back");
}

#[tokio::test]
async fn serves_over_tls_with_the_reloading_certificate() {
    spotkube_shared::telemetry::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let reloading = spotkube_shared::tls::ReloadingCert::load(&cert, &key).unwrap();

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let cluster = Cluster::new(None);
    cluster.replace_nodes(&fixture_nodes());
    let app = router(AppState { cluster, metrics }, FULL_OBJECTS);
    let handle = axum_server::Handle::new();
    let server = axum_server::bind_rustls(
        "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
        reloading.axum_config(),
    )
    .handle(handle.clone());
    tokio::spawn(async move { server.serve(app.into_make_service()).await.unwrap() });
    let addr = handle.listening().await.unwrap();

    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(
            reqwest::Certificate::from_pem(generated.cert.pem().as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    let resp = http
        .post(format!("https://{addr}/filter"))
        .body(fixture("filter-node-names.json").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let result: ExtenderFilterResult = resp.json().await.unwrap();
    assert_eq!(result.node_names.unwrap().len(), 3);

    // A client that does not trust the certificate is refused.
    let untrusting = reqwest::Client::builder().use_rustls_tls().build().unwrap();
    assert!(
        untrusting
            .post(format!("https://{addr}/filter"))
            .body("{}")
            .send()
            .await
            .is_err()
    );
}
