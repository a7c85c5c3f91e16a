//! The controller end to end on the rig: real control plane + kwok + moto + the
//! `spotkube-controller` binary. A spot interruption event goes onto the SQS queue; the
//! test deletes the node (and its pods, as the dying instance would) 30 s later and polls
//! the Service's EndpointSlices every 100 ms: ready endpoints must never drop to zero.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use spotkube_rig::aws::{EventKind, Moto, Queues};
use spotkube_rig::{
    Cluster, EndpointWatch, FakeNode, Program, TestNamespace, wait_for, wait_for_ready_endpoints,
    wait_for_rollout, wait_for_schedulable_nodes, workloads,
};

const POOL: &str = "spotkube.test/pool";
const INTERRUPTION: &str = "spotkube.io/interruption";

/// A Deployment `name` of `replicas` pods in the test's node pool, with a Service.
fn workload(
    test: &TestNamespace,
    name: &str,
    replicas: i32,
    annotations: &[(&str, &str)],
) -> (Deployment, Service) {
    let deployment =
        workloads::with_node_selector(workloads::deployment(name, replicas), POOL, &test.name);
    // kwok finalizes the old pod after its grace period.
    let mut deployment = workloads::with_grace_period(deployment, 1);
    deployment.metadata.annotations = Some(
        annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    (deployment, workloads::service(name))
}

struct Scenario {
    test: TestNamespace,
    moto: &'static Moto,
    queues: Queues,
    doomed: FakeNode,
    spare: FakeNode,
}

impl Scenario {
    /// An opted-in namespace, a queue + DLQ, one spot node with `replicas` pods of `web`
    /// on it, then a second (spare) spot node.
    async fn start(
        prefix: &str,
        replicas: i32,
        annotations: &[(&str, &str)],
        with_pdb: bool,
    ) -> anyhow::Result<Scenario> {
        let cluster = Cluster::shared().await?;
        let test = cluster
            .namespace_with(prefix, &[("spotkube.io/enabled", "true")])
            .await?;
        let moto = Moto::shared().await?;
        let queues = moto
            .create_queue_with_dlq(&format!("{}-events", test.name), 2)
            .await?;
        let doomed = FakeNode::spot("m7g.large", "us-east-1a").with_label(POOL, &test.name);
        doomed.create(&test.client).await?;
        let (deploy, svc) = workload(&test, "web", replicas, annotations);
        Api::<Deployment>::namespaced(test.client.clone(), &test.name)
            .create(&PostParams::default(), &deploy)
            .await?;
        Api::<Service>::namespaced(test.client.clone(), &test.name)
            .create(&PostParams::default(), &svc)
            .await?;
        if with_pdb {
            let pdb = PodDisruptionBudget {
                metadata: ObjectMeta {
                    name: Some("web".into()),
                    ..Default::default()
                },
                spec: Some(PodDisruptionBudgetSpec {
                    min_available: Some(IntOrString::Int(replicas - 1)),
                    selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([("app".into(), "web".into())])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            Api::<PodDisruptionBudget>::namespaced(test.client.clone(), &test.name)
                .create(&PostParams::default(), &pdb)
                .await?;
        }
        wait_for_rollout(&test.client, &test.name, "web", Duration::from_secs(60)).await?;
        wait_for_ready_endpoints(
            &test.client,
            &test.name,
            "web",
            replicas as usize,
            Duration::from_secs(30),
        )
        .await?;
        let spare = FakeNode::spot("m7g.large", "us-east-1b").with_label(POOL, &test.name);
        spare.create(&test.client).await?;
        // The spare must be schedulable before the event, or replacements wait for kwok
        // (or, under a soft `PreferNoSchedule`, go straight back to the doomed node).
        wait_for_schedulable_nodes(
            &test.client,
            &format!("{POOL}={}", test.name),
            2,
            Duration::from_secs(60),
        )
        .await?;
        Ok(Scenario {
            spare,
            test,
            moto,
            queues,
            doomed,
        })
    }

    async fn controller(&self) -> anyhow::Result<Program> {
        self.controller_named(None).await
    }

    async fn controller_named(&self, identity: Option<&str>) -> anyhow::Result<Program> {
        let cluster = Cluster::shared().await?;
        let mut options = self
            .moto
            .controller_options(&self.queues.url, &self.test.name)
            .arg("--visibility-timeout=3s")
            .arg("--scale-back-interval=1s");
        if let Some(identity) = identity {
            options = options.arg(format!("--identity={identity}"));
        }
        Ok(cluster.start_controller(options).await?)
    }

    async fn interrupt(&self) -> anyhow::Result<String> {
        let event = self
            .moto
            .send_event(
                &self.queues.url,
                EventKind::SpotInterruptionWarning,
                &self.doomed.instance_id,
                jiff::Timestamp::now(),
            )
            .await?;
        Ok(event["id"].as_str().unwrap_or_default().to_string())
    }

    async fn wait_tainted(&self) -> anyhow::Result<Node> {
        let nodes: Api<Node> = Api::all(self.test.client.clone());
        let name = self.doomed.name.clone();
        Ok(wait_for("node tainted", Duration::from_secs(30), || async {
            let node = nodes.get(&name).await?;
            let tainted = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| {
                    t.iter()
                        .any(|t| t.key == INTERRUPTION && t.effect == "NoSchedule")
                });
            Ok(tainted.then_some(node))
        })
        .await?)
    }

    /// The instance dies: its pods go at once, then the Node.
    async fn kill_node(&self) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.test.client.clone(), &self.test.name);
        let on_node = pods
            .list(&ListParams::default().fields(&format!("spec.nodeName={}", self.doomed.name)))
            .await?;
        for pod in on_node {
            pods.delete(
                pod.metadata.name.as_deref().unwrap_or_default(),
                &DeleteParams::default().grace_period(0),
            )
            .await?;
        }
        Api::<Node>::all(self.test.client.clone())
            .delete(&self.doomed.name, &DeleteParams::default())
            .await?;
        Ok(())
    }

    /// Waits for a rollout restart to have happened and finished. The restart follows the
    /// taint, so its ReplicaSet is awaited first; otherwise the old, still complete rollout
    /// would pass for the new one.
    async fn wait_restarted(&self) -> anyhow::Result<()> {
        wait_for(
            "the restart's ReplicaSet",
            Duration::from_secs(30),
            || async { Ok((self.replica_sets().await? >= 2).then_some(())) },
        )
        .await?;
        wait_for_rollout(
            &self.test.client,
            &self.test.name,
            "web",
            Duration::from_secs(30),
        )
        .await?;
        Ok(())
    }

    async fn replica_sets(&self) -> anyhow::Result<usize> {
        Ok(
            Api::<ReplicaSet>::namespaced(self.test.client.clone(), &self.test.name)
                .list(&ListParams::default())
                .await?
                .items
                .len(),
        )
    }

    async fn deployment(&self) -> anyhow::Result<Deployment> {
        Ok(
            Api::<Deployment>::namespaced(self.test.client.clone(), &self.test.name)
                .get("web")
                .await?,
        )
    }
}

/// Interrupt, wait 30 s (the scaled-down deadline), kill the node, watch 10 s more.
async fn interruption_never_empties_the_service(s: &Scenario) -> anyhow::Result<()> {
    let watch = EndpointWatch::start(&s.test.client, &s.test.name, "web");
    s.interrupt().await?;
    s.wait_tainted().await?;
    tokio::time::sleep(Duration::from_secs(30)).await;
    s.kill_node().await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (min, samples) = watch.finish().await;
    assert!(samples > 300, "only {samples} endpoint samples");
    assert!(
        min >= 1,
        "the Service had {min} ready endpoints at some moment"
    );
    Ok(())
}

#[tokio::test]
async fn restart_surge_keeps_a_ready_endpoint_through_an_interruption() -> anyhow::Result<()> {
    let s = Scenario::start("ctl-restart", 1, &[], false).await?;
    let result = async {
        let controller = s.controller().await?;
        interruption_never_empties_the_service(&s).await?;
        // A rollout restart: one new ReplicaSet, replicas untouched.
        let d = s.deployment().await?;
        assert_eq!(d.spec.as_ref().unwrap().replicas, Some(1));
        assert_eq!(s.replica_sets().await?, 2);
        assert!(
            d.spec
                .unwrap()
                .template
                .metadata
                .unwrap()
                .annotations
                .unwrap()
                .contains_key("kubectl.kubernetes.io/restartedAt")
        );
        assert_eq!(s.moto.queue_depth(&s.queues.url).await?, 0);
        let metrics = controller.metrics().await?;
        assert!(
            metrics.contains("spotkube_controller_events_total{kind=\"spot-interruption\"} 1"),
            "{metrics}"
        );
        Ok(())
    }
    .await;
    s.test.report(result)
}

#[tokio::test]
async fn scale_surge_keeps_a_ready_endpoint_and_scales_back_after_a_controller_kill()
-> anyhow::Result<()> {
    let s = Scenario::start(
        "ctl-scale",
        1,
        &[
            ("spotkube.io/surge", "scale"),
            ("spotkube.io/surge-hold", "45s"),
        ],
        false,
    )
    .await?;
    let result = async {
        let mut controller = s.controller().await?;
        let watch = EndpointWatch::start(&s.test.client, &s.test.name, "web");
        s.interrupt().await?;
        s.wait_tainted().await?;
        let surged = wait_for("scaled to 2", Duration::from_secs(30), || async {
            let d = s.deployment().await?;
            Ok((d.spec.as_ref().and_then(|s| s.replicas) == Some(2)).then_some(d))
        })
        .await?;
        let a = surged.metadata.annotations.unwrap();
        assert_eq!(a["spotkube.io/surge-from"], "1");
        assert_eq!(a["spotkube.io/state"], "surging");
        // The scale-back lives in annotations only: SIGKILL the controller mid-surge.
        controller.process.kill();
        let _controller = s.controller().await?;
        tokio::time::sleep(Duration::from_secs(25)).await;
        s.kill_node().await?;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (min, samples) = watch.finish().await;
        assert!(samples > 300, "only {samples} endpoint samples");
        assert!(
            min >= 1,
            "the Service had {min} ready endpoints at some moment"
        );
        let back = wait_for("scaled back to 1", Duration::from_secs(60), || async {
            let d = s.deployment().await?;
            Ok((d.spec.as_ref().and_then(|s| s.replicas) == Some(1)).then_some(d))
        })
        .await?;
        let a = back.metadata.annotations.unwrap();
        assert!(!a.contains_key("spotkube.io/surge-from"), "{a:?}");
        assert_eq!(a["spotkube.io/state"], "spot");
        // Scaling is no rollout.
        assert_eq!(s.replica_sets().await?, 1);
        Ok(())
    }
    .await;
    s.test.report(result)
}

#[tokio::test]
async fn pdb_protected_three_replicas_are_evicted_without_emptying_the_service()
-> anyhow::Result<()> {
    let s = Scenario::start("ctl-pdb", 3, &[], true).await?;
    let result = async {
        let _controller = s.controller().await?;
        interruption_never_empties_the_service(&s).await?;
        // Evicted pods were replaced on the spare node.
        wait_for_ready_endpoints(
            &s.test.client,
            &s.test.name,
            "web",
            3,
            Duration::from_secs(30),
        )
        .await?;
        assert_eq!(s.replica_sets().await?, 1);
        Ok(())
    }
    .await;
    s.test.report(result)
}

#[tokio::test]
async fn a_killed_controller_surges_exactly_once_and_survives_garbage() -> anyhow::Result<()> {
    let s = Scenario::start("ctl-kill", 1, &[], false).await?;
    let result = async {
        let mut controller = s.controller().await?;
        let event_id = s.interrupt().await?;
        // SIGKILL as soon as the first action lands: before or after the delete, the
        // redelivered message must not surge a second time.
        s.wait_tainted().await?;
        controller.process.kill();
        // Duplicates, garbage, an unknown kind, an instance of no node of ours.
        let body = spotkube_rig::aws::event(
            EventKind::SpotInterruptionWarning,
            &s.doomed.instance_id,
            jiff::Timestamp::now(),
        )?;
        let mut duplicate = body.clone();
        duplicate["id"] = event_id.clone().into();
        s.moto
            .send_message(&s.queues.url, &duplicate.to_string())
            .await?;
        s.moto
            .send_message(&s.queues.url, &duplicate.to_string())
            .await?;
        s.moto
            .send_message(&s.queues.url, "this is not an event")
            .await?;
        let mut unknown = body.clone();
        unknown["detail-type"] = "EC2 Fleet Error".into();
        s.moto
            .send_message(&s.queues.url, &unknown.to_string())
            .await?;
        s.moto
            .send_event(
                &s.queues.url,
                EventKind::SpotInterruptionWarning,
                "i-0123456789abcdef0",
                jiff::Timestamp::now(),
            )
            .await?;
        let mut controller = s.controller().await?;
        wait_for("main queue drained", Duration::from_secs(60), || async {
            Ok((s.moto.queue_depth(&s.queues.url).await? == 0).then_some(()))
        })
        .await?;
        wait_for("garbage in the DLQ", Duration::from_secs(30), || async {
            Ok((s.moto.queue_depth(&s.queues.dlq_url).await? == 2).then_some(()))
        })
        .await?;
        assert!(controller.process.exited().is_none(), "controller crashed");
        s.wait_restarted().await?;
        let d = s.deployment().await?;
        assert_eq!(
            d.metadata.annotations.unwrap()["spotkube.io/reason"],
            event_id
        );
        // Exactly one restart: the original ReplicaSet and one more.
        assert_eq!(s.replica_sets().await?, 2);
        Ok(())
    }
    .await;
    s.test.report(result)
}

/// The control experiment: the same node loss without spotkube does empty the Service,
/// so the probe above does see an outage when there is one. kwok readies a pod within
/// milliseconds of binding, faster than a real container starts, so the spare node is
/// kept cordoned for the 3 s a real replacement would at least need.
#[tokio::test]
async fn without_the_controller_the_service_does_empty() -> anyhow::Result<()> {
    let s = Scenario::start("ctl-none", 1, &[], false).await?;
    let result = async {
        let nodes: Api<Node> = Api::all(s.test.client.clone());
        let cordon = |on: bool| {
            let patch = serde_json::json!({ "spec": { "unschedulable": on } });
            let nodes = nodes.clone();
            let name = s.spare.name.clone();
            async move {
                nodes
                    .patch(
                        &name,
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(&patch),
                    )
                    .await
            }
        };
        cordon(true).await?;
        let watch = EndpointWatch::start(&s.test.client, &s.test.name, "web");
        tokio::time::sleep(Duration::from_secs(2)).await;
        // The dying instance takes no new pods: without this, the replacement created
        // between the pod's and the Node's deletion could be bound to the doomed node and
        // sit on a Node that no longer exists until pod GC (the EndpointSlice controller
        // skips it: "Node not found"), outlasting the wait below.
        let doomed = serde_json::json!({ "spec": { "unschedulable": true } });
        nodes
            .patch(
                &s.doomed.name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&doomed),
            )
            .await?;
        s.kill_node().await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        cordon(false).await?;
        // The replacement waits in the scheduler's unschedulable queue, which an uncordon
        // does not always flush: once the spare's cordon taint is gone, replace the
        // pending pod so a fresh one is scheduled at once.
        wait_for("spare uncordoned", Duration::from_secs(30), || async {
            let spec = nodes.get(&s.spare.name).await?.spec.unwrap_or_default();
            let tainted = spec
                .taints
                .unwrap_or_default()
                .iter()
                .any(|t| t.key == "node.kubernetes.io/unschedulable");
            Ok((spec.unschedulable != Some(true) && !tainted).then_some(()))
        })
        .await?;
        let pods: Api<Pod> = Api::namespaced(s.test.client.clone(), &s.test.name);
        for pod in pods.list(&ListParams::default().labels("app=web")).await? {
            if pod
                .spec
                .as_ref()
                .and_then(|p| p.node_name.as_ref())
                .is_none()
            {
                let name = pod.metadata.name.unwrap_or_default();
                pods.delete(&name, &DeleteParams::default()).await?;
            }
        }
        wait_for_ready_endpoints(
            &s.test.client,
            &s.test.name,
            "web",
            1,
            Duration::from_secs(60),
        )
        .await?;
        let (min, _) = watch.finish().await;
        assert_eq!(
            min, 0,
            "without spotkube the replacement starts only after the pod died"
        );
        Ok(())
    }
    .await;
    s.test.report(result)
}

async fn lease_holder(s: &Scenario) -> anyhow::Result<String> {
    use k8s_openapi::api::coordination::v1::Lease;
    let leases: Api<Lease> = Api::namespaced(s.test.client.clone(), &s.test.name);
    Ok(
        wait_for("a lease holder", Duration::from_secs(30), || async {
            Ok(leases
                .get_opt("spotkube-controller")
                .await?
                .and_then(|l| l.spec?.holder_identity))
        })
        .await?,
    )
}

/// Two replicas, one leader; SIGKILL the leader and the standby takes over.
#[tokio::test]
async fn the_standby_takes_over_when_the_leader_dies() -> anyhow::Result<()> {
    let s = Scenario::start("ctl-leader", 1, &[], false).await?;
    let result = async {
        let mut a = s.controller_named(Some("ctl-a")).await?;
        let mut b = s.controller_named(Some("ctl-b")).await?;
        let leader = lease_holder(&s).await?;
        let (dead, survivor) = if leader == "ctl-a" {
            (&mut a, "ctl-b")
        } else {
            (&mut b, "ctl-a")
        };
        dead.process.kill();
        s.interrupt().await?;
        s.wait_tainted().await?;
        assert_eq!(lease_holder(&s).await?, survivor);
        s.wait_restarted().await?;
        assert_eq!(s.replica_sets().await?, 2);
        Ok(())
    }
    .await;
    s.test.report(result)
}

/// Losing the Lease ends the term: an eviction loop held back by a PDB and a rollout
/// follow whose replacement cannot schedule both stop at once, while the process lives
/// on as a standby.
#[tokio::test]
async fn losing_the_lease_stops_in_flight_evictions_and_rollout_follows() -> anyhow::Result<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    let s = Scenario::start("ctl-lease", 1, &[], false).await?;
    let result = async {
        // No room anywhere: web's restarted replacement stays Pending, so its follow runs on.
        let nodes: Api<Node> = Api::all(s.test.client.clone());
        let cordon = serde_json::json!({ "spec": { "unschedulable": true } });
        nodes
            .patch(
                &s.spare.name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&cordon),
            )
            .await?;
        // api's two pods on the doomed node, a PDB that refuses every eviction.
        let (api, _) = workload(&s.test, "api", 2, &[]);
        Api::<Deployment>::namespaced(s.test.client.clone(), &s.test.name)
            .create(&PostParams::default(), &api)
            .await?;
        let pdb = PodDisruptionBudget {
            metadata: ObjectMeta {
                name: Some("api".into()),
                ..Default::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                min_available: Some(IntOrString::Int(2)),
                selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([("app".into(), "api".into())])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        Api::<PodDisruptionBudget>::namespaced(s.test.client.clone(), &s.test.name)
            .create(&PostParams::default(), &pdb)
            .await?;
        wait_for_rollout(&s.test.client, &s.test.name, "api", Duration::from_secs(60)).await?;

        let controller = s.controller_named(Some("ctl-lease")).await?;
        assert_eq!(lease_holder(&s).await?, "ctl-lease");
        s.interrupt().await?;
        s.wait_tainted().await?;
        let running = |task: &str| format!("spotkube_controller_leader_tasks{{task=\"{task}\"}}");
        controller
            .wait_for_metric(&format!("{} 2", running("evict")), Duration::from_secs(30))
            .await?;
        controller
            .wait_for_metric(&format!("{} 1", running("follow")), Duration::from_secs(30))
            .await?;

        // Another holder takes the Lease (as a partition healing on the other side would).
        // A MicroTime: exactly six fractional digits.
        let now = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        let steal = serde_json::json!({ "spec": {
            "holderIdentity": "someone-else", "acquireTime": now, "renewTime": now,
            "leaseDurationSeconds": 600,
        }});
        Api::<Lease>::namespaced(s.test.client.clone(), &s.test.name)
            .patch(
                "spotkube-controller",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&steal),
            )
            .await?;
        // Within the lease duration (3 s) and a renew: the controller no longer leads and
        // the term's work is gone. (The intake winds down last: it waits out the SQS long
        // poll in flight to hand back what that brings. And kube-lease-manager renews
        // without checking it still holds the Lease, so it may take it back later: the
        // Lease watch is what keeps it from acting meanwhile.)
        controller
            .wait_for_metric("spotkube_controller_leader 0", Duration::from_secs(5))
            .await?;
        for task in ["evict", "follow", "drain", "scale-back"] {
            controller
                .wait_for_metric(&format!("{} 0", running(task)), Duration::from_secs(10))
                .await?;
        }
        let metrics = controller.metrics().await?;
        assert!(
            !metrics.contains("outcome=\"evicted\""),
            "the PDB refused every eviction: {metrics}"
        );
        assert!(
            controller.process.log_tail(200).contains("lost leadership"),
            "{}",
            controller.process.log_tail(50)
        );
        Ok(())
    }
    .await;
    s.test.report(result)
}

/// Rebalance recommendation: PreferNoSchedule (no cordon) and a single-replica
/// StatefulSet moved at once; then the instance shuts down and spotkube's marks go
/// while the Node stays (deleting Nodes is not spotkube's job).
#[tokio::test]
async fn rebalance_moves_a_lone_statefulset_early_and_shutdown_cleans_up() -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
    let cluster = Cluster::shared().await?;
    let test = cluster
        .namespace_with("ctl-rebalance", &[("spotkube.io/enabled", "true")])
        .await?;
    let result = async {
        let moto = Moto::shared().await?;
        let queues = moto
            .create_queue_with_dlq(&format!("{}-events", test.name), 2)
            .await?;
        let doomed = FakeNode::spot("m7g.large", "us-east-1a").with_label(POOL, &test.name);
        doomed.create(&test.client).await?;
        let (template_source, _) = workload(&test, "db", 1, &[]);
        let template = template_source.spec.unwrap().template;
        let sts = StatefulSet {
            metadata: ObjectMeta {
                name: Some("db".into()),
                ..Default::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(1),
                service_name: Some("db".into()),
                selector: LabelSelector {
                    match_labels: Some(BTreeMap::from([("app".into(), "db".into())])),
                    ..Default::default()
                },
                template,
                ..Default::default()
            }),
            ..Default::default()
        };
        Api::<StatefulSet>::namespaced(test.client.clone(), &test.name)
            .create(&PostParams::default(), &sts)
            .await?;
        let pods: Api<Pod> = Api::namespaced(test.client.clone(), &test.name);
        let ready_on = |pod: &Pod| {
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            ready
                .then(|| pod.spec.as_ref().and_then(|s| s.node_name.clone()))
                .flatten()
        };
        let first = wait_for("db-0 Ready", Duration::from_secs(60), || async {
            let pod = pods.get_opt("db-0").await?;
            Ok(pod.filter(|p| ready_on(p).is_some()))
        })
        .await?;
        assert_eq!(ready_on(&first).as_deref(), Some(doomed.name.as_str()));
        let spare = FakeNode::spot("m7g.large", "us-east-1b").with_label(POOL, &test.name);
        spare.create(&test.client).await?;
        // The spare must be schedulable before the event: `PreferNoSchedule` on the doomed
        // node is soft, so a not-yet-Ready spare would send db-0 straight back.
        wait_for_schedulable_nodes(
            &test.client,
            &format!("{POOL}={}", test.name),
            2,
            Duration::from_secs(60),
        )
        .await?;
        let _controller = cluster
            .start_controller(moto.controller_options(&queues.url, &test.name))
            .await?;
        moto.send_event(
            &queues.url,
            EventKind::RebalanceRecommendation,
            &doomed.instance_id,
            jiff::Timestamp::now(),
        )
        .await?;
        let old_uid = first.metadata.uid.clone();
        let moved = wait_for(
            "db-0 recreated and Ready",
            Duration::from_secs(60),
            || async {
                let pod = pods.get_opt("db-0").await?;
                Ok(pod.filter(|p| p.metadata.uid != old_uid && ready_on(p).is_some()))
            },
        )
        .await?;
        assert_eq!(ready_on(&moved).as_deref(), Some(spare.name.as_str()));
        let nodes: Api<Node> = Api::all(test.client.clone());
        let node = nodes.get(&doomed.name).await?;
        let spec = node.spec.clone().unwrap();
        assert_ne!(spec.unschedulable, Some(true), "a rebalance never cordons");
        assert!(
            spec.taints
                .unwrap_or_default()
                .iter()
                .any(|t| t.key == INTERRUPTION && t.effect == "PreferNoSchedule")
        );
        assert!(
            node.metadata
                .annotations
                .unwrap()
                .contains_key(INTERRUPTION)
        );

        moto.send_event(
            &queues.url,
            EventKind::InstanceStateChange("shutting-down"),
            &doomed.instance_id,
            jiff::Timestamp::now(),
        )
        .await?;
        let cleaned = wait_for("marks removed", Duration::from_secs(30), || async {
            let node = nodes.get(&doomed.name).await?;
            let marked = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key == INTERRUPTION))
                || node
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(INTERRUPTION));
            Ok((!marked).then_some(node))
        })
        .await?;
        assert!(cleaned.metadata.deletion_timestamp.is_none());
        wait_for("queue drained", Duration::from_secs(30), || async {
            Ok((moto.queue_depth(&queues.url).await? == 0).then_some(()))
        })
        .await?;
        Ok(())
    }
    .await;
    test.report(result)
}

/// `spotkube-controller state get|set NAMESPACE/DEPLOYMENT` for operators.
#[tokio::test]
async fn state_get_and_set_from_the_command_line() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let test = cluster.namespace("ctl-state").await?;
    let result = async {
        let (deploy, _) = workload(&test, "web", 1, &[("spotkube.io/surge", "scale")]);
        Api::<Deployment>::namespaced(test.client.clone(), &test.name)
            .create(&PostParams::default(), &deploy)
            .await?;
        let binary = spotkube_rig::tools::program_binary("spotkube-controller");
        let run = |args: &[&str]| {
            std::process::Command::new(&binary)
                .args(args)
                .env("KUBECONFIG", &cluster.kubeconfig)
                .output()
        };
        let workload = format!("{}/web", test.name);
        // Without a profile there is nowhere to go: a clear error, nothing written.
        let nowhere = run(&["state", "set", &workload, "fargate"])?;
        assert!(!nowhere.status.success());
        assert!(
            String::from_utf8_lossy(&nowhere.stderr).contains("no Fargate profile"),
            "{}",
            String::from_utf8_lossy(&nowhere.stderr)
        );
        let profile = format!("--fargate-profile={}:spotkube.io/fargate=true", test.name);
        let set = run(&[
            "state", "set", &workload, "fargate", "--reason", "drill", &profile,
        ])?;
        assert!(
            set.status.success(),
            "{}",
            String::from_utf8_lossy(&set.stderr)
        );
        let d = Api::<Deployment>::namespaced(test.client.clone(), &test.name)
            .get("web")
            .await?;
        // The same transition as the controller's: the profile label on the template.
        let template_labels = d
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .clone()
            .unwrap();
        assert_eq!(template_labels["spotkube.io/fargate"], "true");
        let annotations = d.metadata.annotations.unwrap();
        assert_eq!(annotations["spotkube.io/state"], "fargate");
        assert_eq!(annotations["spotkube.io/reason"], "drill");
        let get = run(&["state", "get", &workload])?;
        let out = String::from_utf8_lossy(&get.stdout);
        assert!(get.status.success());
        assert!(out.contains("spotkube.io/state: fargate"), "{out}");
        assert!(out.contains("spotkube.io/surge: scale"), "{out}");
        assert!(out.contains("rollout in flight: failover since"), "{out}");
        // Back to spot waits for the failover's rollout to end.
        let early = run(&["state", "set", &workload, "spot"])?;
        assert!(!early.status.success());
        assert!(String::from_utf8_lossy(&early.stderr).contains("in flight"));
        // Only the targets are accepted.
        let transition = run(&["state", "set", &workload, "recovering"])?;
        assert!(!transition.status.success());
        let bad = run(&["state", "set", &workload, "sideways"])?;
        assert!(!bad.status.success());
        let missing = run(&["state", "get", &format!("{}/nope", test.name)])?;
        assert!(!missing.status.success());
        Ok(())
    }
    .await;
    test.report(result)
}
