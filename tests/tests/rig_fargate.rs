//! The Fargate stand-in (`spotkube_rig::fargate`) on its own, against the shared cluster:
//! the real kube-apiserver calls its webhook, which sends a pod matching a served profile
//! to the fargate-scheduler; that one starts the pod on its own `fargate-ip-…` Node after
//! the start delay and within the rate limit, leaves it Pending with a FailedScheduling
//! while the failure switch is on, and deletes the Node with the pod.
//!
//! Times are the API server's (creation, `PodScheduled`, whole seconds) and the Events'
//! (microseconds), never the test's clock.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Namespace, Node, Pod, PodSpec};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use spotkube_rig::fargate::{CAPACITY_UNAVAILABLE, FargateOptions, FargateStandIn, POD_ANNOTATION};
use spotkube_rig::{Cluster, TestNamespace, wait_for};
use spotkube_shared::fargate::{FARGATE_SCHEDULER, FargateProfile};

const FARGATE_LABEL: &str = "spotkube.test/fargate";
const COMPUTE_TYPE: &str = "eks.amazonaws.com/compute-type";
const TIMEOUT: Duration = Duration::from_secs(60);

/// The profile `<namespace>:spotkube.test/fargate=yes`.
fn profile(test: &TestNamespace) -> FargateProfile {
    format!("{}:{FARGATE_LABEL}=yes", test.name)
        .parse()
        .expect("a valid profile")
}

/// A pause pod with `labels`.
fn pod(name: &str, labels: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "pause".into(),
                image: Some("registry.k8s.io/pause:3.10".into()),
                ..Default::default()
            }],
            termination_grace_period_seconds: Some(0),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates `pod`; the object as admitted (after the mutating webhooks).
async fn create(test: &TestNamespace, pod: &Pod) -> anyhow::Result<Pod> {
    Ok(Api::<Pod>::namespaced(test.client.clone(), &test.name)
        .create(&PostParams::default(), pod)
        .await?)
}

fn scheduler_name(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.scheduler_name.as_deref()
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

/// The time of condition `type_` when its status is `status`.
fn condition_time(pod: &Pod, type_: &str, status: &str) -> Option<jiff::Timestamp> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    let c = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)?;
    c.last_transition_time.as_ref().map(|t| t.0)
}

fn running_and_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && condition_time(pod, "Ready", "True").is_some()
}

/// Waits for pod `name` Running and Ready; the pod.
async fn wait_running(test: &TestNamespace, name: &str) -> anyhow::Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(test.client.clone(), &test.name);
    Ok(wait_for(
        &format!("pod {name} Running and Ready"),
        TIMEOUT,
        || async { Ok(pods.get_opt(name).await?.filter(running_and_ready)) },
    )
    .await?)
}

fn created(pod: &Pod) -> jiff::Timestamp {
    pod.metadata
        .creation_timestamp
        .as_ref()
        .expect("a creation timestamp")
        .0
}

fn scheduled(pod: &Pod) -> jiff::Timestamp {
    condition_time(pod, "PodScheduled", "True").expect("PodScheduled=True with a time")
}

async fn wait_node_gone(test: &TestNamespace, name: &str) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(test.client.clone());
    wait_for(&format!("Node {name} deleted"), TIMEOUT, || async {
        Ok(nodes.get_opt(name).await?.is_none().then_some(()))
    })
    .await?;
    Ok(())
}

/// (1) A matching pod gets the fargate-scheduler from the API server calling the
/// webhook and runs on its own Fargate Node, bound no earlier than the start delay after
/// its creation; an unlabelled pod of the same namespace keeps the default scheduler.
#[tokio::test]
async fn a_matching_pod_runs_on_its_own_fargate_node_after_the_start_delay() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let stand_in = FargateStandIn::shared(cluster).await?;
    let test = cluster.namespace("fargate-start").await?;
    test.report(start_scenario(stand_in, &test).await)
}

async fn start_scenario(stand_in: &FargateStandIn, test: &TestNamespace) -> anyhow::Result<()> {
    const DELAY: Duration = Duration::from_secs(3);
    let _profile = stand_in.serve(
        profile(test),
        FargateOptions {
            start_delay: DELAY,
            rate_per_second: None,
            zone: "us-east-1b".into(),
        },
    );
    let admitted = create(test, &pod("on-fargate", &[(FARGATE_LABEL, "yes")])).await?;
    assert_eq!(scheduler_name(&admitted), Some(FARGATE_SCHEDULER));
    let other = create(test, &pod("elsewhere", &[(FARGATE_LABEL, "no")])).await?;
    assert_eq!(scheduler_name(&other), Some("default-scheduler"));

    let running = wait_running(test, "on-fargate").await?;
    let on = node_name(&running).expect("bound").to_string();
    assert!(on.starts_with("fargate-ip-"), "{on}");
    assert_eq!(
        stand_in.node_of(&test.name, "on-fargate").as_deref(),
        Some(on.as_str())
    );
    let waited = scheduled(&running).duration_since(created(&running));
    assert!(
        waited >= jiff::SignedDuration::try_from(DELAY)?,
        "bound {waited:?} after creation, before the start delay {DELAY:?}"
    );

    let node = Api::<Node>::all(test.client.clone()).get(&on).await?;
    let labels = node.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(COMPUTE_TYPE).map(String::as_str),
        Some("fargate")
    );
    assert_eq!(
        labels
            .get("topology.kubernetes.io/zone")
            .map(String::as_str),
        Some("us-east-1b")
    );
    let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
    assert!(
        taints.iter().any(|t| t.key == COMPUTE_TYPE
            && t.value.as_deref() == Some("fargate")
            && t.effect == "NoSchedule"),
        "{taints:?}"
    );
    let annotations = node.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations.get(POD_ANNOTATION),
        Some(&format!("{}/on-fargate", test.name))
    );

    // The other pod never went near Fargate.
    let other = Api::<Pod>::namespaced(test.client.clone(), &test.name)
        .get("elsewhere")
        .await?;
    assert_eq!(scheduler_name(&other), Some("default-scheduler"));
    assert!(
        node_name(&other).is_none_or(|n| !n.starts_with("fargate-")),
        "{other:?}"
    );
    assert!(stand_in.node_of(&test.name, "elsewhere").is_none());
    Ok(())
}

/// (2) With the failure switch on the pod stays Pending, marked `PodScheduled=False`
/// (Unschedulable, capacity unavailable) with a FailedScheduling Event counting repeated
/// attempts; switched off, it is started and bound after the last failed attempt.
#[tokio::test]
async fn the_failure_switch_keeps_pods_pending_with_failed_scheduling() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let stand_in = FargateStandIn::shared(cluster).await?;
    let test = cluster.namespace("fargate-fail").await?;
    test.report(failure_scenario(stand_in, &test).await)
}

async fn failure_scenario(stand_in: &FargateStandIn, test: &TestNamespace) -> anyhow::Result<()> {
    let profile = stand_in.serve(profile(test), FargateOptions::default());
    profile.set_failing(true);
    let admitted = create(test, &pod("starved", &[(FARGATE_LABEL, "yes")])).await?;
    assert_eq!(scheduler_name(&admitted), Some(FARGATE_SCHEDULER));

    let pods: Api<Pod> = Api::namespaced(test.client.clone(), &test.name);
    let pending = wait_for(
        "PodScheduled=False (Unschedulable) on the pod",
        TIMEOUT,
        || async {
            let pod = pods.get("starved").await?;
            let marked = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.type_ == "PodScheduled"
                            && c.status == "False"
                            && c.reason.as_deref() == Some("Unschedulable")
                            && c.message
                                .as_deref()
                                .is_some_and(|m| m.starts_with(CAPACITY_UNAVAILABLE))
                    })
                });
            Ok(marked.then_some(pod))
        },
    )
    .await?;
    assert_eq!(
        pending.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );

    // Retried while the switch stays on: the Event's series counts a second attempt.
    let events: Api<Event> = Api::namespaced(test.client.clone(), &test.name);
    let failed = wait_for(
        "a FailedScheduling Event counting two attempts",
        TIMEOUT,
        || async {
            let list = events.list(&ListParams::default()).await?;
            Ok(list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("FailedScheduling")
                    && e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("starved")
                    && e.note
                        .as_deref()
                        .is_some_and(|n| n.starts_with(CAPACITY_UNAVAILABLE))
                    && e.series.as_ref().is_some_and(|s| s.count >= 2)
            }))
        },
    )
    .await?;
    let still = pods.get("starved").await?;
    assert!(
        node_name(&still).is_none(),
        "bound while failing: {still:?}"
    );
    assert!(stand_in.node_of(&test.name, "starved").is_none());

    profile.set_failing(false);
    let running = wait_running(test, "starved").await?;
    assert!(
        node_name(&running).is_some_and(|n| n.starts_with("fargate-ip-")),
        "{running:?}"
    );
    // Bound after the last failed attempt the test saw (whole seconds on the pod).
    let last_failure = failed
        .series
        .as_ref()
        .expect("a series")
        .last_observed_time
        .0;
    let bound = scheduled(&running);
    assert!(
        bound.as_second() >= last_failure.as_second(),
        "bound at {bound}, before the failed attempt at {last_failure}"
    );
    Ok(())
}

/// (3) At one pod start per second, four pods created together are bound at least a
/// second apart.
#[tokio::test]
async fn pod_starts_keep_to_the_rate_limit() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let stand_in = FargateStandIn::shared(cluster).await?;
    let test = cluster.namespace("fargate-rate").await?;
    test.report(rate_scenario(stand_in, &test).await)
}

async fn rate_scenario(stand_in: &FargateStandIn, test: &TestNamespace) -> anyhow::Result<()> {
    let _profile = stand_in.serve(
        profile(test),
        FargateOptions {
            rate_per_second: Some(1.0),
            ..FargateOptions::default()
        },
    );
    let names = ["r0", "r1", "r2", "r3"];
    for name in names {
        create(test, &pod(name, &[(FARGATE_LABEL, "yes")])).await?;
    }
    let mut times = Vec::new();
    let mut nodes = BTreeMap::new();
    for name in names {
        let pod = wait_running(test, name).await?;
        times.push(scheduled(&pod));
        nodes.insert(node_name(&pod).expect("bound").to_string(), name);
    }
    assert_eq!(nodes.len(), names.len(), "one Node per pod: {nodes:?}");
    times.sort();
    for pair in times.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= jiff::SignedDuration::from_secs(1),
            "two binds {gap:?} apart at 1 pod/s: {times:?}"
        );
    }
    Ok(())
}

/// (4) A deleted pod takes its Node with it, the other pod's Node stays; deleting the
/// namespace takes the rest.
#[tokio::test]
async fn a_fargate_node_goes_with_its_pod_and_with_the_namespace() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let stand_in = FargateStandIn::shared(cluster).await?;
    let test = cluster.namespace("fargate-delete").await?;
    test.report(deletion_scenario(stand_in, &test).await)
}

async fn deletion_scenario(stand_in: &FargateStandIn, test: &TestNamespace) -> anyhow::Result<()> {
    let _profile = stand_in.serve(profile(test), FargateOptions::default());
    for name in ["kept", "deleted"] {
        create(test, &pod(name, &[(FARGATE_LABEL, "yes")])).await?;
    }
    let kept = wait_running(test, "kept").await?;
    let deleted = wait_running(test, "deleted").await?;
    let kept_node = node_name(&kept).expect("bound").to_string();
    let deleted_node = node_name(&deleted).expect("bound").to_string();
    assert_ne!(kept_node, deleted_node);
    let nodes: Api<Node> = Api::all(test.client.clone());

    Api::<Pod>::namespaced(test.client.clone(), &test.name)
        .delete("deleted", &DeleteParams::default())
        .await?;
    wait_node_gone(test, &deleted_node).await?;
    assert!(stand_in.node_of(&test.name, "deleted").is_none());
    assert!(
        nodes.get_opt(&kept_node).await?.is_some(),
        "the other pod's Node went too"
    );

    Api::<Namespace>::all(test.client.clone())
        .delete(&test.name, &DeleteParams::default())
        .await?;
    wait_node_gone(test, &kept_node).await?;
    let prefix = format!("{}/", test.name);
    let left: Vec<String> = nodes
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|n| {
            n.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(POD_ANNOTATION))
                .is_some_and(|p| p.starts_with(&prefix))
        })
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(left.is_empty(), "Nodes left behind: {left:?}");
    assert!(
        !stand_in.nodes().values().any(|p| p.starts_with(&prefix)),
        "{:?}",
        stand_in.nodes()
    );
    Ok(())
}
