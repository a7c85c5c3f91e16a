//! Opt-in costs nothing outside opted-in namespaces: the webhook is registered with the
//! shipped `namespaceSelector`, which selects the `spotkube.io/enabled: "true"` label,
//! and the shipped controller (under its shipped RBAC) mirrors the user's annotation to
//! that label. A plain namespace's pods never reach the webhook (its own request counter
//! does not move); annotating a namespace opts it in within seconds, `false` opts it out,
//! a malformed value removes the label with a Warning Event.
//!
//! This test binary has a cluster of its own, so the cluster-wide selector sees only this
//! test's namespaces.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use spotkube_rig::aws::Moto;
use spotkube_rig::programs::{FailurePolicy, Program, ProgramOptions};
use spotkube_rig::{Cluster, TestNamespace, shipped, wait_for};

const KEY: &str = "spotkube.io/enabled";
/// The webhook's admission request counter (all outcomes), from webhook/src/metrics.rs.
const WEBHOOK_REQUESTS: &str = "spotkube_webhook_admission_requests_total";
/// How soon an annotation change must show in the label (the watch's latency plus
/// one patch; the budget leaves room for a loaded 2-core machine).
const WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn only_labelled_namespaces_reach_the_webhook_and_the_controller_mirrors_the_annotation()
-> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let plain = cluster.namespace("plain").await?;
    let later = cluster.namespace("later").await?;
    let result = scenario(cluster, &plain, &later).await;
    plain.report(result)
}

async fn scenario(
    cluster: &Cluster,
    plain: &TestNamespace,
    later: &TestNamespace,
) -> anyhow::Result<()> {
    let webhook = cluster.start_webhook(ProgramOptions::default()).await?;
    cluster
        .register_webhook_selecting(
            "spotkube-opt-in",
            "opt-in.pods.spotkube.io",
            &webhook,
            shipped_namespace_selector()?,
            FailurePolicy::Fail,
        )
        .await?;
    let moto = Moto::start().await?;
    let queues = moto.create_queue_with_dlq("opt-in", 5).await?;
    let controller = start_controller_as_shipped(cluster, &moto, &queues.url).await?;
    controller
        .wait_for_metric(
            "spotkube_controller_leader_tasks{task=\"namespace-labels\"} 1",
            Duration::from_secs(60),
        )
        .await?;

    // A plain namespace: created, listed by the controller, never labelled, and its pods
    // are admitted without the webhook hearing of them.
    let before = requests(&webhook).await?;
    for i in 0..3 {
        let pod = create_pod(plain, &format!("plain-{i}")).await?;
        assert!(!mutated(&pod), "{:?}", pod.metadata.annotations);
    }
    assert_eq!(
        requests(&webhook).await?,
        before,
        "pods of a plain namespace reached the webhook"
    );

    // Opting in by annotation: labelled within seconds, then mutated.
    annotate(later, Some("true")).await?;
    let took = wait_label(later, Some("true")).await?;
    eprintln!("opted in after {took:?}");
    let pod = create_pod(later, "in").await?;
    assert!(mutated(&pod), "{:?}", pod.metadata.annotations);
    assert_eq!(
        requests(&webhook).await?,
        before + 1.0,
        "one request for the one pod of the opted-in namespace"
    );
    let event = wait_event(later, "OptedIn").await?;
    assert_eq!(event.type_.as_deref(), Some("Normal"));
    let note = event.note.unwrap_or_default();
    assert!(note.contains("labelled spotkube.io/enabled=true"), "{note}");

    // Opting out: the label says false and the webhook is left alone again.
    annotate(later, Some("false")).await?;
    wait_label(later, Some("false")).await?;
    let pod = create_pod(later, "out").await?;
    assert!(!mutated(&pod), "{:?}", pod.metadata.annotations);
    assert_eq!(requests(&webhook).await?, before + 1.0);
    wait_event(later, "OptedOut").await?;

    // A malformed value: no label, and the user is told why.
    annotate(later, Some("yes")).await?;
    wait_label(later, None).await?;
    let warning = wait_event(later, "InvalidOptIn").await?;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    let note = warning.note.unwrap_or_default();
    assert!(note.contains("\"yes\" is not one of true false"), "{note}");

    // One write per change, none for the plain namespace.
    assert_eq!(label_of(plain).await?, None);
    let metrics = controller.metrics().await?;
    for label in ["true", "false", "absent"] {
        let series = format!(
            "spotkube_controller_namespace_label_writes_total{{label=\"{label}\",outcome=\"ok\"}} 1"
        );
        assert!(
            metrics.lines().any(|l| l == series),
            "{series} in\n{metrics}"
        );
    }
    Ok(())
}

/// The controller under its shipped ServiceAccount and RBAC (the label write needs
/// `namespaces: patch`), with the rig's flags.
async fn start_controller_as_shipped(
    cluster: &Cluster,
    moto: &Moto,
    queue_url: &str,
) -> anyhow::Result<Program> {
    let client = cluster.client().await?;
    shipped::apply_base(&client).await?;
    shipped::apply(&client, "controller/serviceaccount.yaml").await?;
    shipped::apply(&client, "controller/rbac.yaml").await?;
    let kubeconfig =
        shipped::service_account_kubeconfig(cluster, "spotkube-system", "spotkube-controller")?;
    let options = moto
        .controller_options(queue_url, "spotkube-system")
        .env("KUBECONFIG", kubeconfig.display().to_string());
    Ok(cluster.start_controller(options).await?)
}

/// The `namespaceSelector` of the shipped MutatingWebhookConfiguration.
fn shipped_namespace_selector() -> anyhow::Result<LabelSelector> {
    let documents = shipped::documents("webhook/mutatingwebhookconfiguration.yaml")?;
    let selector = documents[0].data["webhooks"][0]["namespaceSelector"].clone();
    Ok(serde_json::from_value(selector)?)
}

/// The webhook's admission requests so far, every outcome summed.
async fn requests(webhook: &Program) -> anyhow::Result<f64> {
    Ok(webhook
        .metrics()
        .await?
        .lines()
        .filter(|l| l.starts_with(WEBHOOK_REQUESTS))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, v| sum + v))
}

async fn create_pod(test: &TestNamespace, name: &str) -> anyhow::Result<Pod> {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
    }))?;
    Ok(Api::<Pod>::namespaced(test.client.clone(), &test.name)
        .create(&PostParams::default(), &pod)
        .await?)
}

fn mutated(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("spotkube.io/mutated-by"))
}

/// Sets the opt-in annotation on the test's Namespace (`None` removes it).
async fn annotate(test: &TestNamespace, value: Option<&str>) -> anyhow::Result<()> {
    Api::<Namespace>::all(test.client.clone())
        .patch(
            &test.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {KEY: value}}})),
        )
        .await?;
    Ok(())
}

async fn label_of(test: &TestNamespace) -> anyhow::Result<Option<String>> {
    let ns = Api::<Namespace>::all(test.client.clone())
        .get(&test.name)
        .await?;
    Ok(ns.metadata.labels.and_then(|mut l| l.remove(KEY)))
}

/// Waits until the Namespace's label is `value`; how long that took.
async fn wait_label(test: &TestNamespace, value: Option<&str>) -> anyhow::Result<Duration> {
    let start = Instant::now();
    wait_for(&format!("label {KEY}={value:?}"), WITHIN, || async {
        Ok((label_of(test).await?.as_deref() == value).then_some(()))
    })
    .await?;
    Ok(start.elapsed())
}

/// The Event `reason` about the test's Namespace (cluster-scoped objects' Events are
/// recorded in `default`).
async fn wait_event(test: &TestNamespace, reason: &str) -> anyhow::Result<Event> {
    let events: Api<Event> = Api::namespaced(test.client.clone(), "default");
    Ok(wait_for(
        &format!("a {reason} Event on namespace {}", test.name),
        WITHIN,
        || async {
            Ok(events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.regarding.as_ref().is_some_and(|r| {
                            r.kind.as_deref() == Some("Namespace")
                                && r.name.as_deref() == Some(test.name.as_str())
                        })
                }))
        },
    )
    .await?)
}
