//! When spotkube-scheduler is down, opted-in pods wait in Pending, and the shipped
//! controller says why: a Warning Event `SchedulerUnavailable` on each pod and the gauge
//! `spotkube_controller_unscheduled_pods`. Once a scheduler of that name runs, the pods
//! bind and the gauge falls back to 0.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use spotkube_rig::aws::Moto;
use spotkube_rig::programs::{Program, ProgramOptions};
use spotkube_rig::{Cluster, FakeNode, TestNamespace, shipped, wait_for, workloads};

const POOL_LABEL: &str = "spotkube.test/pool";
/// The scheduler name the webhook sets and the controller watches, as shipped.
const SCHEDULER: &str = "spotkube-scheduler";

#[tokio::test]
async fn opted_in_pods_wait_for_a_missing_scheduler_and_the_controller_says_why()
-> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let test = cluster
        .namespace_with("sched-down", &[("spotkube.io/enabled", "true")])
        .await?;
    test.report(scenario(cluster, &test).await)
}

fn gauge(metrics: &str) -> Option<i64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("spotkube_controller_unscheduled_pods "))
        .and_then(|v| v.trim().parse().ok())
}

async fn wait_gauge(controller: &Program, value: i64) -> anyhow::Result<()> {
    wait_for(
        &format!("spotkube_controller_unscheduled_pods {value}"),
        Duration::from_secs(60),
        || async { Ok((gauge(&controller.metrics().await?) == Some(value)).then_some(())) },
    )
    .await?;
    Ok(())
}

async fn scenario(cluster: &Cluster, test: &TestNamespace) -> anyhow::Result<()> {
    FakeNode::spot("m7g.large", "us-east-1a")
        .with_label(POOL_LABEL, &test.name)
        .create(&test.client)
        .await?;
    // The webhook as shipped names spotkube-scheduler; no such scheduler runs yet.
    let webhook = cluster
        .start_webhook(ProgramOptions::default().arg(format!("--scheduler-name={SCHEDULER}")))
        .await?;
    cluster
        .register_webhook(&format!("spotkube-{}", test.name), &webhook, &test.name)
        .await?;
    let moto = Moto::start().await?;
    let queues = moto.create_queue_with_dlq(&test.name, 5).await?;
    // The shipped controller, with a short threshold instead of 60 s.
    let (controller, _) = shipped::start_controller(
        cluster,
        &moto,
        &queues.url,
        &[("SPOTKUBE_UNSCHEDULED_AFTER", "3s")],
    )
    .await?;

    let deploy =
        workloads::with_node_selector(workloads::deployment("web", 1), POOL_LABEL, &test.name);
    workloads::create_with_service(&test.client, &test.name, &deploy).await?;
    let pods: Api<Pod> = Api::namespaced(test.client.clone(), &test.name);
    let pod = wait_for("the web pod", Duration::from_secs(30), || async {
        Ok(pods
            .list(&ListParams::default().labels("app=web"))
            .await?
            .items
            .into_iter()
            .next())
    })
    .await?;
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()),
        Some(SCHEDULER),
        "the webhook named spotkube's scheduler"
    );

    // The Event on the pod says why it waits.
    let events: Api<Event> = Api::namespaced(test.client.clone(), &test.name);
    let event = wait_for(
        "a SchedulerUnavailable Event",
        Duration::from_secs(60),
        || async {
            Ok(events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("SchedulerUnavailable")))
        },
    )
    .await?;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let regarding = event.regarding.clone().unwrap_or_default();
    assert_eq!(regarding.kind.as_deref(), Some("Pod"));
    assert_eq!(regarding.name.as_deref(), Some(pod_name.as_str()));
    let note = event.note.clone().unwrap_or_default();
    assert!(
        note.starts_with(&format!("{SCHEDULER} has not picked this pod up for ")),
        "{note}"
    );
    wait_gauge(&controller, 1).await?;

    // The pod really waits: unbound, Pending, no scheduler's word on it.
    let pod = pods.get(&pod_name).await?;
    assert!(
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_none()
    );
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );
    // One Event per pod, not one per pass.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reported = events
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("SchedulerUnavailable"))
        .map(|e| e.series.as_ref().map_or(1, |s| s.count))
        .sum::<i32>();
    assert_eq!(reported, 1, "one Event for the one waiting pod");

    // The scheduler comes back: the pod binds and the gauge falls to 0.
    let _scheduler = cluster.start_scheduler(SCHEDULER, &[]).await?;
    wait_for("the web pod bound", Duration::from_secs(60), || async {
        let pod = pods.get(&pod_name).await?;
        Ok(pod.spec.and_then(|s| s.node_name))
    })
    .await?;
    wait_gauge(&controller, 0).await?;
    Ok(())
}
