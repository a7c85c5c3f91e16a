//! The API load of an idle leader controller on a cluster of `$SPOTKUBE_BENCH_DEPLOYMENTS`
//! Deployments (default 200), over `$SPOTKUBE_BENCH_WINDOW` seconds (default 30).
//!
//! The controller runs as its own user, and FlowSchemas (API Priority and Fairness)
//! classify that user's requests: kube-apiserver counts each class in
//! `apiserver_flowcontrol_dispatched_requests_total{flow_schema}`, so the figures are
//! the controller's requests alone, whatever kube-controller-manager, the scheduler and
//! kwok do meanwhile. The figures go to `$SPOTKUBE_BENCH_OUT` when set; the test
//! asserts that an idle controller neither lists nor reads Deployments.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::flowcontrol::v1::{FlowSchema, PriorityLevelConfiguration};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DeleteParams, GetParams, PostParams};
use serde_json::json;
use spotkube_rig::aws::Moto;
use spotkube_rig::identity::client_kubeconfig;
use spotkube_rig::{Cluster, workloads};

/// The controller's user in this test (not in `system:masters`, which APF exempts
/// before any FlowSchema of ours could match).
const USER: &str = "spotkube-bench-controller";
/// The priority level the classes use: one of kube-apiserver's suggested levels.
const PRIORITY_LEVEL: &str = "workload-high";

/// The classes the controller's requests are counted in, most specific first:
/// FlowSchema name, and its rule (resource rules, or everything).
fn classes() -> Vec<(&'static str, serde_json::Value)> {
    let deployments = |verb: &str| {
        json!({"resourceRules": [{
            "verbs": [verb], "apiGroups": ["apps"], "resources": ["deployments"],
            "clusterScope": true, "namespaces": ["*"],
        }]})
    };
    vec![
        ("spotkube-bench-deployments-list", deployments("list")),
        ("spotkube-bench-deployments-get", deployments("get")),
        ("spotkube-bench-deployments-watch", deployments("watch")),
        (
            "spotkube-bench-leases",
            json!({"resourceRules": [{
                "verbs": ["*"], "apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                "clusterScope": true, "namespaces": ["*"],
            }]}),
        ),
        (
            "spotkube-bench-other",
            json!({
                "resourceRules": [{
                    "verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                    "clusterScope": true, "namespaces": ["*"],
                }],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            }),
        ),
    ]
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Counts per class from kube-apiserver's `/metrics`.
async fn dispatched(client: &kube::Client) -> anyhow::Result<BTreeMap<String, f64>> {
    // GET /metrics, built by kube's request builder (an empty path, object "metrics").
    let request = kube::core::Request::new("").get("metrics", &GetParams::default())?;
    let text = client.request_text(request).await?;
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_flowcontrol_dispatched_requests_total{")
        else {
            continue;
        };
        let Some(schema) = rest
            .split("flow_schema=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
        else {
            continue;
        };
        if !schema.starts_with("spotkube-bench-") {
            continue;
        }
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *counts.entry(schema.to_string()).or_default() += value;
    }
    Ok(counts)
}

/// The FlowSchemas of [`classes`] and the cluster-admin binding of [`USER`].
async fn classify_the_controller(client: &kube::Client) -> anyhow::Result<()> {
    Api::<PriorityLevelConfiguration>::all(client.clone())
        .get(PRIORITY_LEVEL)
        .await?;
    let schemas: Api<FlowSchema> = Api::all(client.clone());
    for (precedence, (name, rule)) in (10..).zip(classes()) {
        let mut rule = rule;
        rule["subjects"] = json!([{"kind": "User", "user": {"name": USER}}]);
        let schema: FlowSchema = serde_json::from_value(json!({
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
            "metadata": {"name": name},
            "spec": {
                "matchingPrecedence": precedence,
                "priorityLevelConfiguration": {"name": PRIORITY_LEVEL},
                "rules": [rule],
            },
        }))?;
        let _ = schemas.delete(name, &DeleteParams::default()).await;
        schemas.create(&PostParams::default(), &schema).await?;
    }
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": USER},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
    }))?;
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let _ = bindings.delete(USER, &DeleteParams::default()).await;
    bindings.create(&PostParams::default(), &binding).await?;
    Ok(())
}

#[tokio::test]
async fn an_idle_controller_neither_lists_nor_reads_deployments() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let test = cluster.namespace("api-load").await?;
    let result = async {
        let (count, window, warmup) = (
            env("SPOTKUBE_BENCH_DEPLOYMENTS", 200),
            env("SPOTKUBE_BENCH_WINDOW", 30),
            env("SPOTKUBE_BENCH_WARMUP", 15),
        );
        let deployments: Api<Deployment> = Api::namespaced(test.client.clone(), &test.name);
        futures::stream::iter(0..count)
            .map(|i| {
                let deployments = deployments.clone();
                // No replicas: the cluster holds the objects, not their pods.
                async move {
                    let d = workloads::deployment(&format!("idle-{i:05}"), 0);
                    deployments.create(&PostParams::default(), &d).await
                }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await?;

        classify_the_controller(&test.client).await?;
        let kubeconfig =
            client_kubeconfig(cluster, &format!("{}-controller", test.name), USER, &[])?;

        let moto = Moto::shared().await?;
        let queues = moto
            .create_queue_with_dlq(&format!("{}-events", test.name), 2)
            .await?;
        // Production timings: the default Lease (15 s) and scale-back interval (10 s).
        let mut options = moto.controller_options(&queues.url, &test.name);
        options.args.retain(|a| !a.starts_with("--lease-duration"));
        let options = options
            .arg("--lease-duration=15")
            .env("KUBECONFIG", kubeconfig.display().to_string());
        let controller = cluster.start_controller(options).await?;
        controller
            .wait_for_metric(
                r#"spotkube_controller_leader_tasks{task="scale-back"} 1"#,
                Duration::from_secs(60),
            )
            .await?;
        // Past the term's start (its one-time reads), into the steady state.
        tokio::time::sleep(Duration::from_secs(warmup)).await;
        let before = dispatched(&test.client).await?;
        tokio::time::sleep(Duration::from_secs(window)).await;
        let after = dispatched(&test.client).await?;

        let per_minute = |class: &str| {
            let delta = after.get(class).copied().unwrap_or(0.0)
                - before.get(class).copied().unwrap_or(0.0);
            delta * 60.0 / window as f64
        };
        let mut report = format!(
            "idle leader controller, {count} Deployments, {window} s window: API requests/min\n"
        );
        let mut total = 0.0;
        for (class, _) in classes() {
            let rate = per_minute(class);
            total += rate;
            let class = class.trim_start_matches("spotkube-bench-");
            report.push_str(&format!("  {class:<18} {rate:8.1}\n"));
        }
        report.push_str(&format!("  {:<18} {total:8.1}\n", "total"));
        eprint!("{report}");
        if let Some(out) = std::env::var_os("SPOTKUBE_BENCH_OUT") {
            std::fs::write(out, &report)?;
        }
        anyhow::ensure!(
            after.values().sum::<f64>() > 0.0,
            "no request of the controller was classified: {after:?}"
        );
        let reads = per_minute("spotkube-bench-deployments-list")
            + per_minute("spotkube-bench-deployments-get");
        anyhow::ensure!(
            reads == 0.0,
            "an idle controller read Deployments ({reads:.1}/min)\n{report}"
        );
        drop(controller);
        Ok(())
    }
    .await;
    test.report(result)
}
