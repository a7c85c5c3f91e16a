//! Pod CREATE latency through the rig's real kube-apiserver with spotkube's webhook
//! (issue 13). `make bench-admission`.
//!
//! One apiserver, one `spotkube-webhook` registered cluster-wide exactly as the chart
//! ships it (its `namespaceSelector` on the opt-in label, `failurePolicy`, timeout, …),
//! and three cases, each in its own namespace:
//!
//! - `none`: a namespace that is not opted in. The shipped selector keeps the apiserver
//!   from calling the webhook at all; the apiserver's own
//!   `apiserver_admission_webhook_admission_duration_seconds_count` proves it (calls per
//!   case are printed);
//! - `skip`: an opted-in namespace, the pod opted out (`spotkube.io/enabled: "false"`):
//!   the webhook is called and answers without a patch;
//! - `mutate`: an opted-in namespace: the webhook returns its full JSONPatch.
//!
//! The pod is the captured fixture's (`testdata/fixtures/admission/
//! pod-create-from-deployment.json`, without its owner, managed fields and what the
//! apiserver fills in), with `schedulerName: spotkube-scheduler`, which no scheduler
//! serves here, so no case's pods cause scheduling writes during the timed creates. Creates are sequential, one client, `$SPOTKUBE_BENCH_CREATES`
//! per case (default 100) in blocks of `$SPOTKUBE_BENCH_BLOCK` (default 25), the cases
//! alternating block by block, after one unmeasured warm-up block per case. Figures go
//! to stderr and to `$SPOTKUBE_BENCH_OUT` when set; nothing about time is asserted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use spotkube_rig::bench::{env_or, load_average, metric_sum, percentile};
use spotkube_rig::programs::{FailurePolicy, ProgramOptions, shipped_webhook};
use spotkube_rig::{Cluster, wait_for};

const WEBHOOK_NAME: &str = "bench.pods.spotkube.io";
const CASES: [&str; 3] = ["none", "skip", "mutate"];

/// The fixture's pod, ready to create in any namespace.
fn fixture_pod(opt_out: bool) -> anyhow::Result<Pod> {
    let path = spotkube_rig::tools::workspace_root()
        .join("testdata/fixtures/admission/pod-create-from-deployment.json");
    let review: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let mut pod = review["request"]["object"].clone();
    let meta = pod["metadata"].as_object_mut().expect("metadata");
    for key in [
        "namespace",
        "ownerReferences",
        "managedFields",
        "uid",
        "name",
    ] {
        meta.remove(key);
    }
    if opt_out {
        meta.insert(
            "annotations".into(),
            json!({"spotkube.io/enabled": "false"}),
        );
    }
    let spec = pod["spec"].as_object_mut().expect("spec");
    // Filled in by the apiserver's admission plugins (service account token volume,
    // priority, default tolerations): a client does not send them.
    for key in [
        "volumes",
        "serviceAccount",
        "serviceAccountName",
        "priority",
        "tolerations",
        "nodeName",
    ] {
        spec.remove(key);
    }
    for container in spec["containers"].as_array_mut().expect("containers") {
        container
            .as_object_mut()
            .expect("container")
            .remove("volumeMounts");
    }
    // No scheduler serves this name in the rig: the pods stay Pending in every case.
    // With the fixture's default-scheduler, the rig's scheduler would try (and fail)
    // to place the `none` and `skip` pods, writing a status and an Event for each
    // while the next creates are timed, and `mutate` (whose patch sets spotkube's
    // scheduler) would get a quieter apiserver than the others.
    spec.insert("schedulerName".into(), json!("spotkube-scheduler"));
    pod.as_object_mut().expect("pod").remove("status");
    Ok(serde_json::from_value(pod)?)
}

async fn namespace(client: &kube::Client, prefix: &str, opted_in: bool) -> anyhow::Result<String> {
    let name = format!("{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff);
    let mut ns = json!({"metadata": {"name": name}});
    if opted_in {
        ns["metadata"]["annotations"] = json!({"spotkube.io/enabled": "true"});
        ns["metadata"]["labels"] = json!({"spotkube.io/enabled": "true"});
    }
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(ns)?)
        .await?;
    let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &name);
    wait_for(
        "default ServiceAccount",
        Duration::from_secs(30),
        || async { Ok(sa.get_opt("default").await?.map(|_| ())) },
    )
    .await?;
    Ok(name)
}

async fn webhook_calls(cluster: &Cluster) -> anyhow::Result<f64> {
    let text = cluster.apiserver_metrics().await?;
    Ok(metric_sum(
        &text,
        "apiserver_admission_webhook_admission_duration_seconds_count",
        &[("name", WEBHOOK_NAME)],
    ))
}

#[tokio::test]
#[ignore = "benchmark: make bench-admission"]
async fn pod_create_latency_through_the_apiserver() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let test = cluster.namespace("adm-bench").await?;
    test.report(bench(cluster, &test.client).await)
}

async fn bench(cluster: &Cluster, client: &kube::Client) -> anyhow::Result<()> {
    let creates: usize = env_or("SPOTKUBE_BENCH_CREATES", 100);
    let block: usize = env_or("SPOTKUBE_BENCH_BLOCK", 25).max(1);

    // As the chart runs it: opted-in pods go to spotkube's scheduler (none runs here,
    // so the pods stay Pending and cost the default scheduler nothing).
    let webhook = cluster
        .start_webhook(ProgramOptions::default().arg("--scheduler-name=spotkube-scheduler"))
        .await?;
    let selector = shipped_webhook()?.namespace_selector.unwrap_or_default();
    cluster
        .register_webhook_selecting(
            "spotkube-bench",
            WEBHOOK_NAME,
            &webhook,
            selector,
            FailurePolicy::Ignore,
        )
        .await?;

    let mut namespaces = BTreeMap::new();
    namespaces.insert("none", namespace(client, "adm-none", false).await?);
    namespaces.insert("skip", namespace(client, "adm-skip", true).await?);
    namespaces.insert("mutate", namespace(client, "adm-mutate", true).await?);
    let plain = fixture_pod(false)?;
    let opted_out = fixture_pod(true)?;
    // The webhook's namespace cache must have seen the opted-in namespaces: wait until a
    // pod in `mutate` comes back patched.
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespaces["mutate"]);
    wait_for("webhook mutates", Duration::from_secs(30), || async {
        let pod = api.create(&PostParams::default(), &plain).await?;
        Ok(pod
            .metadata
            .annotations
            .unwrap_or_default()
            .keys()
            .any(|k| k.starts_with("spotkube.io/"))
            .then_some(()))
    })
    .await?;

    let mut latencies: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let mut calls: BTreeMap<&str, f64> = BTreeMap::new();
    let blocks = creates.div_ceil(block) + 1;
    let load_start = load_average();
    for round in 0..blocks {
        for k in 0..CASES.len() {
            // Rotate the order, so no case always follows the same one.
            let case_name = CASES[(k + round) % CASES.len()];
            let api: Api<Pod> = Api::namespaced(client.clone(), &namespaces[case_name]);
            let pod = if case_name == "skip" {
                &opted_out
            } else {
                &plain
            };
            let before = webhook_calls(cluster).await?;
            let mut block_latencies = Vec::with_capacity(block);
            for _ in 0..block {
                let started = Instant::now();
                let created = api.create(&PostParams::default(), pod).await?;
                block_latencies.push(started.elapsed());
                anyhow::ensure!(created.metadata.name.is_some(), "no name");
            }
            let after = webhook_calls(cluster).await?;
            // The first round warms up every case and is not counted.
            if round > 0 {
                latencies
                    .entry(case_name)
                    .or_default()
                    .extend(block_latencies);
                *calls.entry(case_name).or_default() += after - before;
            }
        }
    }
    let load_end = load_average();

    let mut report = format!(
        "pod CREATE through kube-apiserver, {} creates per case in blocks of {block}, \
         load {load_start} -> {load_end}\n\
         | case | webhook calls | p50 | p90 | p99 | mean |\n| --- | --- | --- | --- | --- | --- |\n",
        creates
    );
    let mut p = BTreeMap::new();
    for case in CASES {
        let mut l = latencies.remove(case).unwrap_or_default();
        l.sort();
        let mean = l.iter().sum::<Duration>() / l.len().max(1) as u32;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        p.insert(case, (ms(percentile(&l, 0.5)), ms(percentile(&l, 0.99))));
        report.push_str(&format!(
            "| {case} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |\n",
            calls.get(case).copied().unwrap_or_default(),
            ms(percentile(&l, 0.5)),
            ms(percentile(&l, 0.9)),
            ms(percentile(&l, 0.99)),
            ms(mean),
        ));
    }
    for case in ["skip", "mutate"] {
        report.push_str(&format!(
            "{case} vs none: p50 {:+.2} ms, p99 {:.2}x\n",
            p[case].0 - p["none"].0,
            p[case].1 / p["none"].1
        ));
    }
    eprint!("{report}");
    if let Some(out) = std::env::var_os("SPOTKUBE_BENCH_OUT") {
        std::fs::write(out, &report)?;
    }
    for ns in namespaces.values() {
        let _ = Api::<Namespace>::all(client.clone())
            .delete(ns, &DeleteParams::default())
            .await;
    }
    drop(webhook);
    Ok(())
}
