//! `make bench-fargate`: Fargate failover and the recovery loop on the rig (real control
//! plane + kwok, moto's SQS, the Fargate stand-in, a release `spotkube-controller`).
//!
//! A benchmark, ignored in `make test` (`e2e_fargate` checks the behaviour): it prints
//! figures (stderr, and appended to `$SPOTKUBE_BENCH_OUT` when set) and asserts only
//! correctness, never speed. Figures and machine notes in BENCHMARKS.md.
//!
//! 1. [`failover_burst`]: `$SPOTKUBE_BENCH_FARGATE_WORKLOADS` (default 20) single-replica
//!    `fallback: fargate` Deployments, each with a Service and pinned to its own spot
//!    node; the stand-in starts a Fargate pod `$SPOTKUBE_BENCH_FARGATE_DELAY` seconds
//!    (default 5) after it first sees it. One interruption warning per node, all sent at
//!    once. Measured: receipt → failover patch from the controller's histogram (bucket
//!    bounds) and as the bench sees it (send → the state annotation `fargate` seen by a
//!    Deployment watch); send → Fargate pod Ready minus the start delay (from the pod's
//!    Ready condition, 1 s resolution, and from a pod watch). Checked: every Deployment
//!    failed over once and settled on Fargate.
//! 2. [`recovery_loop_cost`]: `$SPOTKUBE_BENCH_FARGATE_IDLE` (default 1,000) Deployments
//!    of 0 replicas created already settled on Fargate (label, state, migrated-at and a
//!    record without a rollout), `--fargate-interval=5s`, each case over
//!    `$SPOTKUBE_BENCH_WINDOW` seconds (default 60): the controller idle with none of
//!    them (baseline), (a) with all of them and the cooldown not over
//!    (`--fargate-cooldown=1h`), (b) all due (`--fargate-cooldown=1s`) and no spot node
//!    their nodeSelector matches. Measured: the pass's API requests (the gauge
//!    `spotkube_controller_fargate_pass_requests`, sampled), the controller's CPU (utime +
//!    stime from /proc) and RSS, and all its API requests as kube-apiserver counts them
//!    (`apiserver_flowcontrol_dispatched_requests_total` of a FlowSchema matching only
//!    the controller's user). Checked: no workload leaves Fargate in (b).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::flowcontrol::v1::FlowSchema;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use spotkube_controller::fargate::FargateRecord;
use spotkube_rig::aws::{EventKind, Moto};
use spotkube_rig::bench::{cpu_time, load_average, metric_sum, rss_kib};
use spotkube_rig::fargate::{FargateOptions, FargateStandIn};
use spotkube_rig::faults::{env_count, histogram_quantile, metric_value, quantile};
use spotkube_rig::identity::client_kubeconfig;
use spotkube_rig::programs::ProgramOptions;
use spotkube_rig::{
    Cluster, FakeNode, Program, TestNamespace, ZONES, wait_for, wait_for_schedulable_nodes,
    workloads,
};
use spotkube_shared::fargate::FARGATE_SCHEDULER;

const POOL: &str = "spotkube.test/pool";
/// Pins each burst Deployment to its own node.
const SLOT: &str = "spotkube.test/slot";
/// The label of the bench's Fargate profile (on the pod template once failed over).
const PROFILE_LABEL: &str = "spotkube.io/fargate";
const STATE: &str = "spotkube.io/state";
const RECORD: &str = "spotkube.io/fargate";
const ON_FARGATE: &str = "spotkube.io/on-fargate";
/// The controller's own user, so kube-apiserver counts its requests apart.
const USER: &str = "spotkube-bench-fargate-controller";
const HISTOGRAM: &str = "spotkube_controller_fargate_receipt_to_failover_seconds";

/// One part at a time: the recovery loop follows every labelled Deployment of the
/// cluster, and the figures are the controller's alone.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn profile(ns: &str) -> String {
    format!("{ns}:{PROFILE_LABEL}=true")
}

fn report(text: &str) -> anyhow::Result<()> {
    eprint!("{text}");
    if let Some(out) = std::env::var_os("SPOTKUBE_BENCH_OUT") {
        let mut file = std::fs::OpenOptions::new().append(true).open(out)?;
        file.write_all(text.as_bytes())?;
    }
    Ok(())
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Deletes the namespace's Deployments and waits until none labelled on-Fargate is left
/// in the cluster, so the next part's controller does not follow them.
async fn cleanup(test: &TestNamespace) -> anyhow::Result<()> {
    let api: Api<Deployment> = Api::namespaced(test.client.clone(), &test.name);
    api.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    no_labelled_left(&test.client).await
}

async fn no_labelled_left(client: &kube::Client) -> anyhow::Result<()> {
    let all: Api<Deployment> = Api::all(client.clone());
    let params = ListParams::default().labels(&format!("{ON_FARGATE}=true"));
    wait_for(
        "no Deployment left on Fargate",
        Duration::from_secs(120),
        || async { Ok(all.list(&params).await?.items.is_empty().then_some(())) },
    )
    .await?;
    Ok(())
}

async fn leading(controller: &Program) -> anyhow::Result<()> {
    wait_for("the controller leads", Duration::from_secs(60), || async {
        let metrics = controller.metrics().await?;
        Ok((metric_value(&metrics, "spotkube_controller_leader") == Some(1.0)).then_some(()))
    })
    .await?;
    Ok(())
}

fn pod_ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

fn on_fargate_scheduler(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()) == Some(FARGATE_SCHEDULER)
}

fn settled_on_fargate(d: &Deployment) -> bool {
    let a = d.annotations();
    a.get(STATE).map(String::as_str) == Some("fargate")
        && a.get(RECORD).is_some_and(|r| !r.contains("\"rollout\""))
}

fn p(samples: &[Duration], q: f64) -> f64 {
    secs(quantile(samples, q))
}

#[tokio::test]
#[ignore = "benchmark: make bench-fargate"]
async fn failover_burst() -> anyhow::Result<()> {
    let _alone = ALONE.lock().await;
    let cluster = Cluster::shared().await?;
    no_labelled_left(&cluster.client().await?).await?;
    let test = cluster
        .namespace_with("bench-fg-burst", &[("spotkube.io/enabled", "true")])
        .await?;
    let result = burst(cluster, &test).await;
    let result = match (result, cleanup(&test).await) {
        (Ok(()), cleaned) => cleaned,
        (err, _) => err,
    };
    test.report(result)
}

async fn burst(cluster: &'static Cluster, test: &TestNamespace) -> anyhow::Result<()> {
    let n = env_count("SPOTKUBE_BENCH_FARGATE_WORKLOADS", 20);
    let delay = Duration::from_secs(env_count("SPOTKUBE_BENCH_FARGATE_DELAY", 5) as u64);
    let ns = test.name.as_str();
    let client = &test.client;
    let load_at_start = load_average();

    let stand_in = FargateStandIn::shared(cluster).await?;
    let _profile = stand_in.serve(
        profile(ns).parse()?,
        FargateOptions {
            start_delay: delay,
            ..FargateOptions::default()
        },
    );
    let webhook = cluster
        .start_webhook(ProgramOptions::default().arg(format!("--fargate-profile={}", profile(ns))))
        .await?;
    cluster
        .register_webhook(&format!("spotkube-{ns}"), &webhook, ns)
        .await?;
    let moto = Moto::shared().await?;
    let queues = moto
        .create_queue_with_dlq(&format!("{ns}-events"), 2)
        .await?;

    let nodes: Vec<FakeNode> = (0..n)
        .map(|i| {
            FakeNode::spot("m7g.large", ZONES[i % 3])
                .with_label(POOL, ns)
                .with_label(SLOT, i.to_string())
        })
        .collect();
    futures::stream::iter(nodes.iter())
        .map(|node| node.create(client))
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await?;
    wait_for_schedulable_nodes(client, &format!("{POOL}={ns}"), n, Duration::from_secs(120))
        .await?;
    let names: Vec<String> = (0..n).map(|i| format!("web-{i:03}")).collect();
    for (i, name) in names.iter().enumerate() {
        let d = workloads::with_node_selector(workloads::deployment(name, 1), SLOT, &i.to_string());
        let mut d = workloads::with_grace_period(d, 1);
        d.metadata.annotations = Some(BTreeMap::from([(
            "spotkube.io/fallback".to_string(),
            "fargate".to_string(),
        )]));
        workloads::create_with_service(client, ns, &d).await?;
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for(
        "every workload available on spot",
        Duration::from_secs(180),
        || async {
            let list = deployments.list(&ListParams::default()).await?;
            let available = list
                .items
                .iter()
                .filter(|d| {
                    d.status
                        .as_ref()
                        .and_then(|s| s.available_replicas)
                        .unwrap_or_default()
                        == 1
                })
                .count();
            Ok((available == n).then_some(()))
        },
    )
    .await?;

    let controller = cluster
        .start_controller(
            moto.controller_options(&queues.url, ns)
                .arg(format!("--fargate-profile={}", profile(ns)))
                .arg("--fargate-interval=5s")
                .arg("--visibility-timeout=30s"),
        )
        .await?;
    leading(&controller).await?;

    // When each Deployment is first seen in state `fargate`, and each Fargate pod Ready.
    let moved: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let ready: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let deployment_watch = {
        let moved = moved.clone();
        let api = deployments.clone();
        tokio::spawn(async move {
            let mut stream =
                std::pin::pin!(watcher(api, watcher::Config::default()).applied_objects());
            while let Some(Ok(d)) = stream.next().await {
                if d.annotations().get(STATE).map(String::as_str) == Some("fargate") {
                    moved
                        .lock()
                        .expect("moved")
                        .entry(d.name_any())
                        .or_insert_with(Instant::now);
                }
            }
        })
    };
    let pod_watch = {
        let ready = ready.clone();
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        tokio::spawn(async move {
            let mut stream =
                std::pin::pin!(watcher(api, watcher::Config::default()).applied_objects());
            while let Some(Ok(pod)) = stream.next().await {
                if on_fargate_scheduler(&pod) && pod_ready_since(&pod).is_some() {
                    let app = pod.labels().get("app").cloned().unwrap_or_default();
                    ready
                        .lock()
                        .expect("ready")
                        .entry(app)
                        .or_insert_with(Instant::now);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu0 = cpu_time(controller.process.pid().unwrap_or_default());

    let instance_ids: Vec<String> = nodes.iter().map(|n| n.instance_id.clone()).collect();
    let sent_at = jiff::Timestamp::now();
    let sent = Instant::now();
    moto.send_events_batched(
        &queues.url,
        EventKind::SpotInterruptionWarning,
        &instance_ids,
        sent_at,
    )
    .await?;
    let sent_in = sent.elapsed();

    let all_moved = wait_for(
        "every failover patch seen",
        Duration::from_secs(120),
        || async { Ok((moved.lock().expect("moved").len() >= n).then(|| sent.elapsed())) },
    )
    .await?;
    let all_ready = wait_for(
        "every Fargate pod Ready",
        delay + Duration::from_secs(180),
        || async { Ok((ready.lock().expect("ready").len() >= n).then(|| sent.elapsed())) },
    )
    .await?;
    let all_settled = wait_for(
        "every failover complete",
        Duration::from_secs(180),
        || async {
            let list = deployments.list(&ListParams::default()).await?;
            let settled = list.items.iter().filter(|d| settled_on_fargate(d)).count();
            Ok((settled == n).then(|| sent.elapsed()))
        },
    )
    .await?;
    let cpu = cpu_time(controller.process.pid().unwrap_or_default())
        .zip(cpu0)
        .map(|(a, b)| secs(a - b));
    deployment_watch.abort();
    pod_watch.abort();

    // Correctness: each workload failed over once and runs one Ready pod on Fargate.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut to_ready_condition = Vec::new();
    for name in &names {
        let list = pods
            .list(&ListParams::default().labels(&format!("app={name}")))
            .await?;
        let live: Vec<&Pod> = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let on_fargate: Vec<&&Pod> = live.iter().filter(|p| on_fargate_scheduler(p)).collect();
        anyhow::ensure!(
            on_fargate.len() == 1,
            "{name}: {} Fargate pods of {} live",
            on_fargate.len(),
            live.len()
        );
        let node = on_fargate[0]
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        anyhow::ensure!(node.starts_with("fargate-ip-"), "{name} on {node}");
        let since = pod_ready_since(on_fargate[0]).expect("Ready");
        to_ready_condition.push(since.duration_since(sent_at).as_secs_f64() - secs(delay));
    }
    let metrics = controller.metrics().await?;
    let failovers = metric_sum(
        &metrics,
        "spotkube_controller_fargate_transitions_total",
        &[("transition", "failover")],
    );
    let completed = metric_sum(
        &metrics,
        "spotkube_controller_fargate_transitions_total",
        &[("transition", "failover-complete")],
    );
    anyhow::ensure!(
        failovers == n as f64,
        "{failovers} failover transitions for {n} workloads"
    );
    let observed = metric_value(&metrics, &format!("{HISTOGRAM}_count")).unwrap_or_default();
    let sum = metric_value(&metrics, &format!("{HISTOGRAM}_sum")).unwrap_or_default();
    let bound = |q| {
        histogram_quantile(&metrics, HISTOGRAM, q)
            .map(|(le, _)| format!("≤ {le} s"))
            .unwrap_or_else(|| "?".into())
    };

    let (to_patch, to_ready): (Vec<Duration>, Vec<Duration>) = {
        let moved = moved.lock().expect("moved");
        let ready = ready.lock().expect("ready");
        (
            names
                .iter()
                .filter_map(|n| Some(moved.get(n)?.duration_since(sent)))
                .collect(),
            names
                .iter()
                .filter_map(|n| Some(ready.get(n)?.duration_since(sent).saturating_sub(delay)))
                .collect(),
        )
    };
    let mut condition = to_ready_condition.clone();
    condition.sort_by(f64::total_cmp);
    let nearest = |v: &[f64], q: f64| {
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    };
    report(&format!(
        "BENCH fargate failover: {n} single-replica `fallback: fargate` Deployments with a Service, each on its own spot node; \
         Fargate start delay D = {} s; {n} interruption warnings sent in {:.2} s (SendMessageBatch); load at start {load_at_start}, at end {}\n\
         BENCH fargate failover: receipt → failover patch (controller histogram): {observed} observed, mean {:.3} s, p50 {}, p99 {} (bucket bounds)\n\
         BENCH fargate failover: send → state `fargate` seen by a Deployment watch: p50 {:.3} s, p99 {:.3} s, max {:.3} s (last {:.2} s after the send)\n\
         BENCH fargate failover: send → Fargate pod Ready − D, pod Ready condition (1 s resolution): p50 {:.1} s, p99 {:.1} s, max {:.1} s\n\
         BENCH fargate failover: send → Fargate pod Ready − D, seen by a pod watch: p50 {:.2} s, p99 {:.2} s, max {:.2} s (all Ready {:.2} s after the send)\n\
         BENCH fargate failover: all {n} failovers complete (strategy restored, `--fargate-interval=5s`) {:.1} s after the send; \
         transitions failover {failovers}, failover-complete {completed}; controller CPU {:.2} s from the send to the last completion\n",
        delay.as_secs(),
        secs(sent_in),
        load_average(),
        sum / observed.max(1.0),
        bound(0.5),
        bound(0.99),
        p(&to_patch, 0.5),
        p(&to_patch, 0.99),
        p(&to_patch, 1.0),
        secs(all_moved),
        nearest(&condition, 0.5),
        nearest(&condition, 0.99),
        nearest(&condition, 1.0),
        p(&to_ready, 0.5),
        p(&to_ready, 0.99),
        p(&to_ready, 1.0),
        secs(all_ready),
        secs(all_settled),
        cpu.unwrap_or(f64::NAN),
    ))?;
    drop(controller);
    // AWS takes the instances: a Node left marked past its deadline would keep the next
    // part's leader busy (it is not what part 2 measures).
    let node_api: Api<Node> = Api::all(client.clone());
    for node in &nodes {
        node_api
            .delete(&node.name, &DeleteParams::default())
            .await?;
    }
    Ok(())
}

/// A FlowSchema that matches only [`USER`], and cluster-admin for it.
async fn classify(client: &kube::Client) -> anyhow::Result<()> {
    let schemas: Api<FlowSchema> = Api::all(client.clone());
    let schema: FlowSchema = serde_json::from_value(json!({
        "metadata": {"name": USER},
        "spec": {
            "matchingPrecedence": 20,
            "priorityLevelConfiguration": {"name": "workload-high"},
            "rules": [{
                "subjects": [{"kind": "User", "user": {"name": USER}}],
                "resourceRules": [{
                    "verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                    "clusterScope": true, "namespaces": ["*"],
                }],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            }],
        },
    }))?;
    let _ = schemas.delete(USER, &DeleteParams::default()).await;
    schemas.create(&PostParams::default(), &schema).await?;
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": USER},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
    }))?;
    let _ = bindings.delete(USER, &DeleteParams::default()).await;
    bindings.create(&PostParams::default(), &binding).await?;
    Ok(())
}

/// The controller's requests kube-apiserver has dispatched so far.
async fn dispatched(cluster: &Cluster) -> anyhow::Result<f64> {
    Ok(metric_sum(
        &cluster.apiserver_metrics().await?,
        "apiserver_flowcontrol_dispatched_requests_total",
        &[("flow_schema", USER)],
    ))
}

/// What one window of the controller cost.
struct Window {
    cpu_seconds_per_minute: f64,
    rss_mib: f64,
    requests_per_minute: f64,
    /// Every value the pass gauge showed, sampled every 2.5 s.
    pass_requests: BTreeSet<i64>,
    workloads: f64,
    load: String,
    /// The busiest `verb resource` classes of kube-apiserver (every client) in the window.
    busiest: String,
}

/// `apiserver_request_total` by `verb resource`, every client.
async fn requests_by_class(cluster: &Cluster) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = cluster.apiserver_metrics().await?;
    let mut classes = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |key: &str| {
            labels
                .split(',')
                .find_map(|l| l.strip_prefix(&format!("{key}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let class = format!("{} {}", label("verb"), label("resource"));
        *classes.entry(class).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    Ok(classes)
}

async fn window(cluster: &Cluster, controller: &Program, seconds: u64) -> anyhow::Result<Window> {
    let pid = controller.process.pid().unwrap_or_default();
    let requests0 = dispatched(cluster).await?;
    let classes0 = requests_by_class(cluster).await?;
    let cpu0 = cpu_time(pid);
    let started = Instant::now();
    let mut pass_requests = BTreeSet::new();
    let mut workloads = f64::NAN;
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let metrics = controller.metrics().await?;
        if let Some(v) = metric_value(&metrics, "spotkube_controller_fargate_pass_requests") {
            pass_requests.insert(v as i64);
        }
        workloads =
            metric_value(&metrics, "spotkube_controller_fargate_workloads").unwrap_or(f64::NAN);
    }
    let elapsed = secs(started.elapsed());
    let cpu = cpu_time(pid).zip(cpu0).map(|(a, b)| secs(a - b));
    let requests = dispatched(cluster).await? - requests0;
    let mut busiest: Vec<(String, f64)> = requests_by_class(cluster)
        .await?
        .into_iter()
        .map(|(class, n)| {
            let delta = n - classes0.get(&class).copied().unwrap_or(0.0);
            (class, delta * 60.0 / secs(started.elapsed()))
        })
        .filter(|(_, rate)| *rate >= 1.0)
        .collect();
    busiest.sort_by(|a, b| b.1.total_cmp(&a.1));
    let busiest = busiest
        .iter()
        .take(6)
        .map(|(class, rate)| format!("{class} {rate:.0}/min"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Window {
        cpu_seconds_per_minute: cpu.unwrap_or(f64::NAN) * 60.0 / elapsed,
        rss_mib: rss_kib(pid).map(|k| k as f64 / 1024.0).unwrap_or(f64::NAN),
        requests_per_minute: requests * 60.0 / elapsed,
        pass_requests,
        workloads,
        load: load_average(),
        busiest,
    })
}

fn window_line(what: &str, w: &Window) -> String {
    format!(
        "BENCH fargate recovery loop, {what}: workloads gauge {}, pass requests (gauge, sampled) {:?}; \
         controller CPU {:.2} s/min, RSS {:.1} MiB; all the controller's API requests (kube-apiserver, APF) {:.1}/min; load {}\n\
         BENCH fargate recovery loop, {what}: busiest request classes of kube-apiserver, every client: {}\n",
        w.workloads,
        w.pass_requests,
        w.cpu_seconds_per_minute,
        w.rss_mib,
        w.requests_per_minute,
        w.load,
        w.busiest
    )
}

/// A Deployment of 0 replicas as spotkube leaves one settled on Fargate: labelled, state
/// `fargate`, migrated now, the profile label on its template and a record without a
/// rollout. Its nodeSelector matches no Node.
fn settled(ns: &str, name: &str, record: &str, migrated: &str) -> Deployment {
    let d = workloads::with_node_selector(
        workloads::deployment(name, 0),
        POOL,
        &format!("{ns}-nowhere"),
    );
    let mut d = workloads::with_grace_period(d, 1);
    d.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(ON_FARGATE.into(), "true".into());
    d.metadata.annotations = Some(BTreeMap::from([
        ("spotkube.io/fallback".to_string(), "fargate".to_string()),
        (STATE.to_string(), "fargate".to_string()),
        ("spotkube.io/migrated-at".to_string(), migrated.to_string()),
        ("spotkube.io/reason".to_string(), "bench".to_string()),
        (RECORD.to_string(), record.to_string()),
    ]));
    if let Some(meta) = d.spec.as_mut().and_then(|s| s.template.metadata.as_mut()) {
        meta.labels
            .get_or_insert_with(BTreeMap::new)
            .insert(PROFILE_LABEL.into(), "true".into());
    }
    d
}

#[tokio::test]
#[ignore = "benchmark: make bench-fargate"]
async fn recovery_loop_cost() -> anyhow::Result<()> {
    let _alone = ALONE.lock().await;
    let cluster = Cluster::shared().await?;
    no_labelled_left(&cluster.client().await?).await?;
    let test = cluster
        .namespace_with("bench-fg-idle", &[("spotkube.io/enabled", "true")])
        .await?;
    let result = idle(cluster, &test).await;
    let result = match (result, cleanup(&test).await) {
        (Ok(()), cleaned) => cleaned,
        (err, _) => err,
    };
    test.report(result)
}

async fn idle(cluster: &'static Cluster, test: &TestNamespace) -> anyhow::Result<()> {
    let count = env_count("SPOTKUBE_BENCH_FARGATE_IDLE", 1000);
    let seconds = env_count("SPOTKUBE_BENCH_WINDOW", 60) as u64;
    let ns = test.name.as_str();
    let client = &test.client;
    classify(client).await?;
    let kubeconfig = client_kubeconfig(cluster, &format!("{ns}-controller"), USER, &[])?;
    let moto = Moto::shared().await?;
    let queues = moto
        .create_queue_with_dlq(&format!("{ns}-events"), 2)
        .await?;
    let options = |cooldown: &str| {
        let mut options = moto.controller_options(&queues.url, ns);
        // Production Lease timings, so its renewals count as in a cluster.
        options.args.retain(|a| !a.starts_with("--lease-duration"));
        options
            .arg("--lease-duration=15")
            .arg(format!("--fargate-profile={}", profile(ns)))
            .arg("--fargate-interval=5s")
            .arg(format!("--fargate-cooldown={cooldown}"))
            .env("KUBECONFIG", kubeconfig.display().to_string())
    };
    let gauge = |metrics: &str, name: &str| metric_value(metrics, name).unwrap_or(f64::NAN);
    let mut text = format!(
        "BENCH fargate recovery loop: {count} Deployments (0 replicas) settled on Fargate, `--fargate-interval=5s`, windows of {seconds} s; load at start {}\n",
        load_average()
    );

    // Baseline: the leader with nothing on Fargate.
    let controller = cluster.start_controller(options("1h")).await?;
    leading(&controller).await?;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let baseline = window(cluster, &controller, seconds).await?;
    text.push_str(&window_line("baseline (nothing on Fargate)", &baseline));

    // (a) Every workload on Fargate, the cooldown not over.
    let record = serde_json::to_string(&FargateRecord {
        labels: BTreeMap::from([(PROFILE_LABEL.to_string(), "true".to_string())]),
        before: BTreeMap::from([(PROFILE_LABEL.to_string(), None)]),
        rollout: None,
    })?;
    let migrated = jiff::Timestamp::now().to_string();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let d = settled(ns, &format!("fg-{i:04}"), &record, &migrated);
            let api = deployments.clone();
            async move { api.create(&PostParams::default(), &d).await }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    text.push_str(&format!(
        "BENCH fargate recovery loop: {count} Deployments created in {:.1} s\n",
        secs(started.elapsed())
    ));
    wait_for(
        "every Deployment observed",
        Duration::from_secs(300),
        || async {
            let list = deployments.list(&ListParams::default()).await?;
            let observed = list
                .items
                .iter()
                .filter(|d| {
                    d.status.as_ref().and_then(|s| s.observed_generation) == d.metadata.generation
                })
                .count();
            Ok((observed == count).then_some(()))
        },
    )
    .await?;
    wait_for(
        "the loop follows every workload",
        Duration::from_secs(120),
        || async {
            let metrics = controller.metrics().await?;
            Ok(
                (gauge(&metrics, "spotkube_controller_fargate_workloads") == count as f64)
                    .then_some(()),
            )
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cooling = window(cluster, &controller, seconds).await?;
    text.push_str(&window_line(
        "(a) cooldown not over (--fargate-cooldown=1h)",
        &cooling,
    ));
    drop(controller);

    // (b) Every workload due, no spot node matching: a new leader with a 1 s cooldown.
    let controller = cluster.start_controller(options("1s")).await?;
    leading(&controller).await?;
    wait_for(
        "a pass over every due workload",
        Duration::from_secs(120),
        || async {
            let metrics = controller.metrics().await?;
            let following =
                gauge(&metrics, "spotkube_controller_fargate_workloads") == count as f64;
            let surveyed = gauge(&metrics, "spotkube_controller_fargate_pass_requests") >= 1.0;
            Ok((following && surveyed).then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let due = window(cluster, &controller, seconds).await?;
    text.push_str(&window_line(
        "(b) all due, no spot room (--fargate-cooldown=1s)",
        &due,
    ));
    let metrics = controller.metrics().await?;
    let recoveries = metric_sum(
        &metrics,
        "spotkube_controller_fargate_transitions_total",
        &[("transition", "recovery")],
    );
    let list = deployments.list(&ListParams::default()).await?;
    let still = list.items.iter().filter(|d| settled_on_fargate(d)).count();
    anyhow::ensure!(
        recoveries == 0.0 && still == count,
        "{recoveries} recoveries, {still}/{count} still on Fargate without spot room"
    );
    text.push_str(&format!(
        "BENCH fargate recovery loop: (b) no recovery started, all {count} still settled on Fargate; load at end {}\n",
        load_average()
    ));
    report(&text)?;
    drop(controller);
    Ok(())
}
