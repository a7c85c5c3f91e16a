//! Pending pods on the rig: a pool whose only Node is full, a pod of it left
//! Unschedulable, and the controller with `--scale-up-pending=on`: the pod gets its
//! Event, the pool's spot group rises by one (once), and the pod runs on the new Node.
//!
//! The test takes the cluster alone, as e2e_capacity does: every leader's loops are
//! cluster-wide, and another test's controller (another moto) would see this pod too.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ListParams, PostParams};
use spotkube_rig::autoscaling::{self, LaunchTemplate};
use spotkube_rig::aws::Moto;
use spotkube_rig::faults::{POOL, metric_value};
use spotkube_rig::{Cluster, Registrar, RegistrarOptions, wait_for, workloads};

static EXCLUSIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// 2 vCPU: 1930m allocatable on a kwok Node.
const SPOT_TYPE: &str = "m7g.large";
const ZONES: [&str; 2] = ["us-east-1a", "us-east-1b"];
/// Two of these do not fit on one Node.
const BIG_CPU: &str = "1200m";

/// `big`: `replicas` pods of [`BIG_CPU`] on the test's pool.
fn big(pool: &str, replicas: i32) -> Deployment {
    let mut d = workloads::with_node_selector(workloads::deployment("big", replicas), POOL, pool);
    let d_spec = d.spec.as_mut().and_then(|s| s.template.spec.as_mut());
    for c in d_spec.into_iter().flat_map(|s| s.containers.iter_mut()) {
        if let Some(requests) = c.resources.as_mut().and_then(|r| r.requests.as_mut()) {
            requests.insert("cpu".into(), Quantity(BIG_CPU.into()));
        }
    }
    workloads::with_grace_period(d, 1)
}

fn reason_events<'a>(events: &'a [Event], reason: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

/// The pool's Node is full: the second `big` pod is Unschedulable; spotkube reports it,
/// raises the spot group from 1 to 2 exactly once, and the pod runs on the new Node.
#[tokio::test]
async fn an_unschedulable_pod_gets_its_pool_raised_once_and_runs_on_the_new_node()
-> anyhow::Result<()> {
    let _alone = EXCLUSIVE.lock().await;
    let cluster = Cluster::shared().await?;
    let test = cluster
        .namespace_with("pending", &[("spotkube.io/enabled", "true")])
        .await?;
    let result = async {
        let moto = Moto::start().await?;
        let queues = moto
            .create_queue_with_dlq(&format!("{}-events", test.name), 3)
            .await?;
        LaunchTemplate::new("spot-lt", SPOT_TYPE)
            .create(&moto)
            .await?;
        let spot = format!("{}-spot", test.name);
        autoscaling::spot_pool_group(&spot, "spot-lt", &test.name, SPOT_TYPE, &ZONES, (0, 3, 1))
            .create(&moto)
            .await?;
        let registrar = Registrar::start(
            &moto,
            test.client.clone(),
            RegistrarOptions::default()
                .join_delay(Duration::from_secs(2))
                .label(POOL, test.name.clone()),
        )
        .await;
        let group = || async {
            anyhow::Ok(autoscaling::group(&moto, &spot).await?)
        };
        let first = autoscaling::instance_ids(&group().await?)
            .first()
            .cloned()
            .expect("the spot group's instance");
        registrar
            .ready_node(&test.client, &first, Duration::from_secs(60))
            .await?;

        Api::<Deployment>::namespaced(test.client.clone(), &test.name)
            .create(&PostParams::default(), &big(&test.name, 2))
            .await?;
        let pods: Api<Pod> = Api::namespaced(test.client.clone(), &test.name);
        let list = ListParams::default().labels("app=big");
        // One pod fits the Node, the other waits.
        let waiting = wait_for("one big pod Unschedulable", Duration::from_secs(60), || async {
            let items = pods.list(&list).await?.items;
            let bound = items
                .iter()
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
                .count();
            let unschedulable = items.iter().find(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| {
                        c.iter().any(|c| {
                            c.type_ == "PodScheduled"
                                && c.reason.as_deref() == Some("Unschedulable")
                        })
                    })
            });
            Ok((bound == 1).then_some(unschedulable.and_then(|p| p.metadata.name.clone())).flatten())
        })
        .await?;
        assert_eq!(group().await?.desired_capacity(), Some(1));

        let options = moto
            .controller_options(&queues.url, &test.name)
            .arg("--identity=only")
            .arg("--capacity-interval=1s")
            .arg("--scale-up-pending=on")
            .arg("--pending-after=2s");
        let controller = cluster.start_controller(options).await?;

        let events: Api<Event> = Api::namespaced(test.client.clone(), &test.name);
        let reported = wait_for(
            "a SpotkubePodUnschedulable Event",
            Duration::from_secs(60),
            || async {
                let items = events.list(&ListParams::default()).await?.items;
                Ok(reason_events(&items, "SpotkubePodUnschedulable")
                    .first()
                    .map(|e| (*e).clone()))
            },
        )
        .await?;
        assert_eq!(reported.type_.as_deref(), Some("Warning"));
        let regarding = reported.regarding.clone().unwrap_or_default();
        assert_eq!(regarding.name.as_deref(), Some(waiting.as_str()));
        let note = reported.note.clone().unwrap_or_default();
        assert!(
            note.starts_with("Unschedulable for ") && note.contains("Insufficient cpu"),
            "the scheduler's message is quoted: {note}"
        );

        wait_for("the spot group raised to 2", Duration::from_secs(60), || async {
            Ok((group().await?.desired_capacity() == Some(2)).then_some(()))
        })
        .await?;
        let second = wait_for("the new instance joins", Duration::from_secs(60), || async {
            let instances = autoscaling::instance_ids(&group().await?);
            Ok(instances
                .iter()
                .find(|i| **i != first)
                .and_then(|i| registrar.node_name(i)))
        })
        .await?;
        wait_for("the pod runs on the new node", Duration::from_secs(90), || async {
            let pod = pods.get(&waiting).await?;
            let on = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            Ok((on.as_deref() == Some(second.as_str()) && phase.as_deref() == Some("Running"))
                .then_some(()))
        })
        .await?;

        // Further passes (every second) find nothing Pending: no second request.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(moto.calls("SetDesiredCapacity").await?, 1, "asked once");
        assert_eq!(group().await?.desired_capacity(), Some(2));
        let items = events.list(&ListParams::default()).await?.items;
        let scaled = reason_events(&items, "SpotkubePendingScaleUp");
        assert_eq!(scaled.len(), 1, "one Event on the pod that triggered it");
        assert_eq!(
            scaled[0].regarding.as_ref().and_then(|r| r.name.as_deref()),
            Some(waiting.as_str())
        );
        let count = |e: &&Event| e.series.as_ref().map_or(1, |s| s.count);
        assert_eq!(
            reason_events(&items, "SpotkubePodUnschedulable")
                .iter()
                .map(count)
                .sum::<i32>(),
            1,
            "reported once"
        );
        let metrics = controller.metrics().await?;
        let series = format!(
            "spotkube_controller_capacity_pending_scale_ups_total{{pool=\"{}\",outcome=\"requested\"}}",
            test.name
        );
        assert_eq!(metric_value(&metrics, &series), Some(1.0), "{metrics}");
        assert_eq!(
            metric_value(&metrics, "spotkube_controller_pending_pods"),
            Some(0.0),
            "nothing Pending any more"
        );
        Ok(())
    }
    .await;
    test.report(result)
}
