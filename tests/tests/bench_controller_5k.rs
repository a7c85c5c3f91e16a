//! The controller and the extender on a large cluster (issue 13): `$SPOTKUBE_BENCH_NODES`
//! spot kwok nodes (default 100) and `$SPOTKUBE_BENCH_PODS` pods (default 1,000), then
//! `$SPOTKUBE_BENCH_WARNINGS` simultaneous spot interruption warnings (default 20).
//! `make bench-controller` runs it with 5,000 nodes, 50,000 pods and 200 warnings.
//!
//! Recorded, never asserted (figures to stderr and `$SPOTKUBE_BENCH_OUT`):
//! - VmRSS and CPU of `spotkube-controller` (the leader) and `spotkube-extender`: the
//!   peak while each lists every Node at its start (VmHWM: the initial list is the
//!   watcher's relist path, the same buffering and swap), in steady state after 30 s,
//!   and after the burst of warnings;
//! - API requests per minute of each while idle, from kube-apiserver's
//!   `apiserver_flowcontrol_dispatched_requests_total` for FlowSchemas that match each
//!   program's own user (as in `e2e_api_load.rs`);
//! - receipt → taint for every warning, from the controller's own
//!   `spotkube_controller_receipt_to_taint_seconds` histogram (bucket bounds), and per
//!   node from its SendMessage returning to its annotation (written with the taint, in
//!   one update) seen by a Node watch: an upper bound that adds SQS delivery.
//!
//! The pods are bound at creation (`spec.nodeName`, 10 per node by default) instead of
//! scheduled: scheduling 50,000 pods would take most of an hour on 2 cores, and neither
//! program keeps pods in memory. They live in a namespace that is not opted in, so the
//! warnings measure the taint path alone. Ignored by default: it is a benchmark.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::api::flowcontrol::v1::FlowSchema;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DeleteParams, GetParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use spotkube_rig::aws::{EventKind, Moto};
use spotkube_rig::bench::{
    cpu_time, create_spot_nodes, env_or, load_average, metric_sum, percentile, rss_kib,
    snapshot_ranking,
};
use spotkube_rig::identity::client_kubeconfig;
use spotkube_rig::programs::ProgramOptions;
use spotkube_rig::{Cluster, Program, wait_for};

const USERS: [(&str, &str); 2] = [
    ("controller", "spotkube-bench-5k-controller"),
    ("extender", "spotkube-bench-5k-extender"),
];

/// One FlowSchema per program user (all its requests), and cluster-admin for it.
async fn classify(client: &kube::Client) -> anyhow::Result<()> {
    let schemas: Api<FlowSchema> = Api::all(client.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    for (precedence, (_, user)) in (20..).zip(USERS) {
        let schema: FlowSchema = serde_json::from_value(json!({
            "metadata": {"name": user},
            "spec": {
                "matchingPrecedence": precedence,
                "priorityLevelConfiguration": {"name": "workload-high"},
                "rules": [{
                    "subjects": [{"kind": "User", "user": {"name": user}}],
                    "resourceRules": [{
                        "verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                        "clusterScope": true, "namespaces": ["*"],
                    }],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }],
            },
        }))?;
        let _ = schemas.delete(user, &DeleteParams::default()).await;
        schemas.create(&PostParams::default(), &schema).await?;
        let binding: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": {"name": user},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }))?;
        let _ = bindings.delete(user, &DeleteParams::default()).await;
        bindings.create(&PostParams::default(), &binding).await?;
    }
    Ok(())
}

/// Dispatched requests per program user so far.
async fn dispatched(client: &kube::Client) -> anyhow::Result<BTreeMap<&'static str, f64>> {
    let request = kube::core::Request::new("").get("metrics", &GetParams::default())?;
    let text = client.request_text(request).await?;
    Ok(USERS
        .iter()
        .map(|(program, user)| {
            (
                *program,
                metric_sum(
                    &text,
                    "apiserver_flowcontrol_dispatched_requests_total",
                    &[("flow_schema", user)],
                ),
            )
        })
        .collect())
}

/// VmHWM (peak resident memory) of a process, KiB.
fn hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "?".into())
}

fn memory_line(what: &str, programs: &[(&str, &Program)]) -> String {
    let mut line = format!("memory {what}:");
    for (name, program) in programs {
        let pid = program.process.pid().unwrap_or_default();
        line.push_str(&format!(
            " {name} VmRSS {} (peak VmHWM {});",
            mib(rss_kib(pid)),
            mib(hwm_kib(pid))
        ));
    }
    line.push('\n');
    line
}

#[tokio::test]
#[ignore = "benchmark: make bench-controller"]
async fn controller_and_extender_at_scale() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let test = cluster.namespace("ctl-5k").await?;
    test.report(bench(cluster, &test.name, &test.client).await)
}

async fn bench(cluster: &Cluster, ns: &str, client: &kube::Client) -> anyhow::Result<()> {
    let n_nodes: usize = env_or("SPOTKUBE_BENCH_NODES", 100);
    let n_pods: usize = env_or("SPOTKUBE_BENCH_PODS", 1000);
    let n_warnings: usize = env_or("SPOTKUBE_BENCH_WARNINGS", 20).min(n_nodes);
    let idle_window: u64 = env_or("SPOTKUBE_BENCH_WINDOW", 60);
    let mut report = format!(
        "{n_nodes} nodes, {n_pods} pods, {n_warnings} warnings; load at start {}\n",
        load_average()
    );

    let started = Instant::now();
    let per_node = n_pods.div_ceil(n_nodes.max(1)) as u32;
    let nodes = create_spot_nodes(client, ns, 2, n_nodes, per_node + 10).await?;
    report.push_str(&format!(
        "{n_nodes} nodes Ready after {:.0} s\n",
        started.elapsed().as_secs_f64()
    ));
    let started = Instant::now();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    futures::stream::iter(0..n_pods)
        .map(|i| {
            let pods = pods.clone();
            let node = nodes[i % nodes.len()].name.clone();
            async move {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("p-{i:06}"), "labels": {"app": "bench"}},
                    "spec": {
                        "nodeName": node,
                        "containers": [{
                            "name": "app", "image": "registry.k8s.io/pause:3.10",
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                        }],
                    },
                }))?;
                pods.create(&PostParams::default(), &pod).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await?;
    report.push_str(&format!(
        "{n_pods} pods created (bound) in {:.0} s\n",
        started.elapsed().as_secs_f64()
    ));

    classify(client).await?;
    let moto = Moto::shared().await?;
    let queues = moto
        .create_queue_with_dlq(&format!("{ns}-events"), 2)
        .await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "spotkube-ranking"},
            "data": {"ranking.json": snapshot_ranking().await?},
        }))?,
    )
    .await?;

    // Each program as its own user, with production timings (Lease 15 s).
    let kubeconfig = |program: &str| {
        let user = USERS.iter().find(|(p, _)| *p == program).expect("user").1;
        client_kubeconfig(cluster, &format!("{ns}-{program}"), user, &[])
    };
    let mut options = moto.controller_options(&queues.url, ns);
    options.args.retain(|a| !a.starts_with("--lease-duration"));
    let options = options.arg("--lease-duration=15").env(
        "KUBECONFIG",
        kubeconfig("controller")?.display().to_string(),
    );
    let controller_started = Instant::now();
    let controller = cluster.start_controller(options).await?;
    let controller_cpu0 = cpu_time(controller.process.pid().unwrap_or_default());
    let extender = cluster
        .start_extender(
            ProgramOptions::default()
                .arg(format!("--ranking-configmap={ns}/spotkube-ranking"))
                .env("KUBECONFIG", kubeconfig("extender")?.display().to_string()),
        )
        .await?;
    extender
        .wait_for_metric(
            "spotkube_extender_ranking_loaded 1",
            Duration::from_secs(120),
        )
        .await?;
    controller
        .wait_for_metric(
            r#"spotkube_controller_leader_tasks{task="scale-back"} 1"#,
            Duration::from_secs(120),
        )
        .await?;
    report.push_str(&format!(
        "controller ready and leading after {:.1} s (cpu {:?})\n",
        controller_started.elapsed().as_secs_f64(),
        controller_cpu0
    ));
    let programs = [("controller", &controller), ("extender", &extender)];
    report.push_str(&memory_line("after the initial list", &programs));

    // Steady state: 30 s of warm-up, then an idle window.
    tokio::time::sleep(Duration::from_secs(30)).await;
    report.push_str(&memory_line("steady, 30 s after start", &programs));
    let cpu_before: Vec<_> = programs
        .iter()
        .map(|(_, p)| cpu_time(p.process.pid().unwrap_or_default()))
        .collect();
    let requests_before = dispatched(client).await?;
    tokio::time::sleep(Duration::from_secs(idle_window)).await;
    let requests_after = dispatched(client).await?;
    for ((name, program), before) in programs.iter().zip(&cpu_before) {
        let after = cpu_time(program.process.pid().unwrap_or_default());
        let cpu = after
            .zip(*before)
            .map(|(a, b)| (a - b).as_secs_f64() / idle_window as f64 * 100.0);
        let requests = requests_after.get(name).copied().unwrap_or_default()
            - requests_before.get(name).copied().unwrap_or_default();
        report.push_str(&format!(
            "idle {idle_window} s: {name} CPU {:.2} % of a core, API requests {:.1}/min\n",
            cpu.unwrap_or(f64::NAN),
            requests * 60.0 / idle_window as f64
        ));
    }
    report.push_str(&memory_line("steady, after the idle window", &programs));

    // The burst: warnings for `n_warnings` nodes spread over the cluster, all sent at
    // once (16 SendMessage calls in flight).
    let step = (n_nodes / n_warnings.max(1)).max(1);
    let targets: Vec<_> = nodes.iter().step_by(step).take(n_warnings).collect();
    let controller_pid = controller.process.pid().unwrap_or_default();
    // The targets get a label, and a watch on that label records when each one's
    // interruption annotation (written with the taint, in one update) first appears.
    let node_api: Api<Node> = Api::all(client.clone());
    for node in &targets {
        node_api
            .patch(
                &node.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"spotkube.test/target": "true"}}})),
            )
            .await?;
    }
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch = {
        let seen = seen.clone();
        let api = node_api.clone();
        tokio::spawn(async move {
            let config = watcher::Config::default().labels("spotkube.test/target=true");
            let mut stream = std::pin::pin!(watcher(api, config).applied_objects());
            while let Some(Ok(node)) = stream.next().await {
                let marked = node
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key("spotkube.io/interruption"));
                if marked {
                    let name = node.metadata.name.unwrap_or_default();
                    seen.lock()
                        .expect("seen")
                        .entry(name)
                        .or_insert_with(Instant::now);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let burst_cpu0 = cpu_time(controller_pid);
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let sent = Instant::now();
    futures::stream::iter(targets.iter())
        .map(|node| {
            let sent_at = sent_at.clone();
            let queue_url = &queues.url;
            async move {
                moto.send_event(
                    queue_url,
                    EventKind::SpotInterruptionWarning,
                    &node.instance_id,
                    jiff::Timestamp::now(),
                )
                .await?;
                sent_at
                    .lock()
                    .expect("sent")
                    .insert(node.name.clone(), Instant::now());
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    let send_took = sent.elapsed();
    let all_tainted = wait_for(
        "every warned node tainted",
        Duration::from_secs(300),
        || async {
            let n = seen.lock().expect("seen").len();
            Ok((n >= targets.len()).then(|| sent.elapsed()))
        },
    )
    .await?;
    watch.abort();
    // Per node: from its SendMessage returning to its annotation seen by the watch, an
    // upper bound of receipt → taint (it adds SQS delivery and the watch's latency).
    let mut send_to_taint: Vec<Duration> = {
        let seen = seen.lock().expect("seen");
        let sent_at = sent_at.lock().expect("sent");
        sent_at
            .iter()
            .filter_map(|(name, at)| Some(seen.get(name)?.saturating_duration_since(*at)))
            .collect()
    };
    send_to_taint.sort();
    let burst_cpu = cpu_time(controller_pid).zip(burst_cpu0).map(|(a, b)| a - b);
    let metrics = controller.metrics().await?;
    let histogram = "spotkube_controller_receipt_to_taint_seconds";
    let count = metric_sum(&metrics, &format!("{histogram}_count"), &[]);
    let sum = metric_sum(&metrics, &format!("{histogram}_sum"), &[]);
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&format!("{histogram}_bucket{{le=\""))?;
            let (le, value) = rest.split_once("\"}")?;
            Some((
                le.parse::<f64>().unwrap_or(f64::INFINITY),
                value.split_whitespace().next()?.parse().ok()?,
            ))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let p99_bound = buckets
        .iter()
        .find(|(_, c)| *c >= (count * 0.99).ceil())
        .map(|(le, _)| *le);
    let within_1s = buckets.iter().rfind(|(le, _)| *le <= 1.0).copied();
    report.push_str(&format!(
        "send -> taint per node (SendMessage returned -> annotation seen by a watch): \
         p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {}\n",
        percentile(&send_to_taint, 0.5).as_secs_f64() * 1e3,
        percentile(&send_to_taint, 0.99).as_secs_f64() * 1e3,
        send_to_taint
            .last()
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3,
        send_to_taint.len(),
    ));
    report.push_str(&format!(
        "burst: {n_warnings} warnings sent in {:.2} s; every node tainted (annotation seen) \
         {:.2} s after the first send; controller CPU {:.2} s\n\
         receipt -> taint (controller histogram): {count} observed, mean {:.0} ms, \
         p99 <= {} s (bucket bound), {} within {} s\n",
        send_took.as_secs_f64(),
        all_tainted.as_secs_f64(),
        burst_cpu.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN),
        sum / count.max(1.0) * 1e3,
        p99_bound.map(|b| format!("{b:.3}")).unwrap_or("?".into()),
        within_1s.map(|b| b.1).unwrap_or_default(),
        within_1s
            .map(|b| format!("{:.3}", b.0))
            .unwrap_or("?".into()),
    ));
    report.push_str(&format!(
        "receipt -> taint buckets: {}\n",
        buckets
            .iter()
            .map(|(le, c)| format!("<={le}:{c}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    report.push_str(&memory_line("after the burst", &programs));
    report.push_str(&format!("load at end {}\n", load_average()));
    eprint!("{report}");
    if let Some(out) = std::env::var_os("SPOTKUBE_BENCH_OUT") {
        std::fs::write(out, &report)?;
    }
    drop(extender);
    drop(controller);
    Ok(())
}
