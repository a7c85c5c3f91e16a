//! spotkube beside the node handler a cluster already runs (issue 15), on the rig, with
//! no SQS message at all: the test marks a kwok spot node as NTH, Cluster Autoscaler or
//! Karpenter would, then drains it as they do (the Eviction API, retried on 429 as
//! `kubectl drain` does), and polls the single-replica Service's ready endpoints every
//! 100 ms.
//!
//! New capacity takes time: the doomed node is the only one of the test's pool until
//! 3 s after the signal, when the spare node appears (as a node an autoscaler launched).
//! Without spotkube the drained pod's replacement waits for it and the Service empties
//! (the control run proves the probe sees it); with spotkube the replacement is surged
//! at the signal and an eviction guard holds the tool's drain until it is Ready.
//!
//! A tool drains at once, and spotkube can only guard what it has seen: the test's
//! drain begins once spotkube's notice is on the Node (its guard and surge come first).
//! Each controller watches only its test's nodes (`--external-signal-node-selector`).

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use spotkube_rig::aws::{EventKind, Moto, Queues};
use spotkube_rig::identity::controller_kubeconfig;
use spotkube_rig::programs::ProgramOptions;
use spotkube_rig::{
    Cluster, EndpointWatch, FakeNode, Program, TestNamespace, wait_for, wait_for_ready_endpoints,
    wait_for_rollout, wait_for_schedulable_nodes, workloads,
};
use spotkube_shared::annotations::InterruptionNotice;

const POOL: &str = "spotkube.test/pool";
const INTERRUPTION: &str = "spotkube.io/interruption";
const NTH_SPOT_ITN: &str = "aws-node-termination-handler/spot-itn";
const CA_TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";
const KARPENTER_DISRUPTED: &str = "karpenter.sh/disrupted";
/// How long the spare node takes to appear after the signal.
const NEW_CAPACITY_AFTER: Duration = Duration::from_secs(3);

struct Rig {
    test: TestNamespace,
    moto: &'static Moto,
    queues: Queues,
    doomed: FakeNode,
    /// The controller's identity: the shipped RBAC (the eviction guard's PDB writes
    /// included), made once per namespace.
    kubeconfig: std::path::PathBuf,
}

impl Rig {
    /// An opted-in namespace, a queue (the controller needs one; nothing is sent to it
    /// unless a test says so), one spot node running `web` (1 replica, the Deployment
    /// annotated with `annotations`) behind a Service.
    async fn start(prefix: &str, annotations: &[(&str, &str)]) -> anyhow::Result<Rig> {
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
        let mut web = workloads::with_grace_period(
            workloads::with_node_selector(workloads::deployment("web", 1), POOL, &test.name),
            1,
        );
        web.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        workloads::create_with_service(&test.client, &test.name, &web).await?;
        wait_for_rollout(&test.client, &test.name, "web", Duration::from_secs(60)).await?;
        wait_for_ready_endpoints(&test.client, &test.name, "web", 1, Duration::from_secs(30))
            .await?;
        let kubeconfig = controller_kubeconfig(cluster, &test.client, &test.name, |_| {}).await?;
        Ok(Rig {
            test,
            moto,
            queues,
            doomed,
            kubeconfig,
        })
    }

    fn options(&self) -> ProgramOptions {
        self.moto
            .controller_options(&self.queues.url, &self.test.name)
            .arg("--visibility-timeout=3s")
            .arg("--scale-back-interval=1s")
            .arg(format!(
                "--external-signal-node-selector={POOL}={}",
                self.test.name
            ))
    }

    /// The controller under the shipped RBAC.
    async fn controller(&self, options: ProgramOptions) -> anyhow::Result<Program> {
        let options = options.env("KUBECONFIG", self.kubeconfig.display().to_string());
        Ok(Cluster::shared().await?.start_controller(options).await?)
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.test.client.clone())
    }

    /// Adds `taint` to Node `name` and, with `cordon`, cordons it: what the tool does.
    async fn mark(&self, name: &str, taint: Option<Taint>, cordon: bool) -> anyhow::Result<()> {
        let node = self.nodes().get(name).await?;
        let mut spec = node.spec.unwrap_or_default();
        let mut taints = spec.taints.take().unwrap_or_default();
        taints.extend(taint);
        let mut patch = serde_json::json!({ "spec": { "taints": taints } });
        if cordon {
            patch["spec"]["unschedulable"] = true.into();
        }
        self.nodes()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    async fn notice(&self, name: &str) -> anyhow::Result<Option<InterruptionNotice>> {
        let node = self.nodes().get(name).await?;
        Ok(node
            .metadata
            .annotations
            .and_then(|a| a.get(INTERRUPTION).cloned())
            .map(|v| InterruptionNotice::from_annotation(&v))
            .transpose()?)
    }

    async fn wait_notice(&self, name: &str) -> anyhow::Result<InterruptionNotice> {
        Ok(wait_for(
            "spotkube's notice on the node",
            Duration::from_secs(30),
            || async { self.notice(name).await },
        )
        .await?)
    }

    /// The tool's drain: evicts `web`'s pods off the doomed node through the Eviction
    /// API, retrying what a PodDisruptionBudget refuses, until none is left.
    fn drain(&self) -> tokio::task::JoinHandle<anyhow::Result<usize>> {
        let pods: Api<Pod> = Api::namespaced(self.test.client.clone(), &self.test.name);
        let on_node = ListParams::default()
            .labels("app=web")
            .fields(&format!("spec.nodeName={}", self.doomed.name));
        tokio::spawn(async move {
            let mut refused = 0;
            loop {
                let left: Vec<Pod> = pods
                    .list(&on_node)
                    .await?
                    .items
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .collect();
                if left.is_empty() {
                    return Ok(refused);
                }
                for pod in left {
                    let name = pod.metadata.name.unwrap_or_default();
                    match pods.evict(&name, &EvictParams::default()).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 429 || s.code == 404 => {
                            refused += usize::from(s.code == 429);
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }

    /// New capacity: a spare spot node in the pool, schedulable.
    async fn new_capacity(&self) -> anyhow::Result<FakeNode> {
        tokio::time::sleep(NEW_CAPACITY_AFTER).await;
        let spare = FakeNode::spot("m7g.large", "us-east-1b").with_label(POOL, &self.test.name);
        spare.create(&self.test.client).await?;
        wait_for_schedulable_nodes(
            &self.test.client,
            &format!("{POOL}={}", self.test.name),
            1,
            Duration::from_secs(60),
        )
        .await?;
        Ok(spare)
    }

    async fn deployment(&self) -> anyhow::Result<Deployment> {
        Ok(
            Api::<Deployment>::namespaced(self.test.client.clone(), &self.test.name)
                .get("web")
                .await?,
        )
    }

    async fn replica_sets(&self) -> anyhow::Result<usize> {
        Ok(
            Api::<ReplicaSet>::namespaced(self.test.client.clone(), &self.test.name)
                .list(&ListParams::default().labels("app=web"))
                .await?
                .items
                .len(),
        )
    }

    /// The reasons of the Events on `kind`/`name` (Nodes' Events are in `default`).
    async fn event_reasons(&self, kind: &str, name: &str) -> anyhow::Result<Vec<String>> {
        let namespace = if kind == "Node" {
            "default"
        } else {
            &self.test.name
        };
        Ok(
            Api::<Event>::namespaced(self.test.client.clone(), namespace)
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|e| {
                    e.regarding.as_ref().is_some_and(|r| {
                        r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name)
                    })
                })
                .filter_map(|e| e.reason)
                .collect(),
        )
    }

    async fn pdbs(&self) -> anyhow::Result<usize> {
        Ok(
            Api::<PodDisruptionBudget>::namespaced(self.test.client.clone(), &self.test.name)
                .list(&ListParams::default())
                .await?
                .items
                .len(),
        )
    }
}

fn taint(key: &str, value: Option<&str>) -> Option<Taint> {
    Some(Taint {
        key: key.into(),
        value: value.map(Into::into),
        effect: "NoSchedule".into(),
        time_added: None,
    })
}

/// The tool marks the doomed node (`taint`, and a cordon when it cordons), spotkube
/// reacts, the tool drains, new capacity arrives: returns the minimum number of ready
/// endpoints seen, once the drain is over and `web` is Ready again, and the notice.
async fn drained_by_a_tool(
    rig: &Rig,
    taint: Option<Taint>,
    cordon: bool,
    spotkube: bool,
) -> anyhow::Result<(usize, Option<InterruptionNotice>)> {
    let watch = EndpointWatch::start(&rig.test.client, &rig.test.name, "web");
    rig.mark(&rig.doomed.name, taint, cordon).await?;
    let notice = match spotkube {
        true => Some(rig.wait_notice(&rig.doomed.name).await?),
        false => None,
    };
    let drain = rig.drain();
    rig.new_capacity().await?;
    drain.await??;
    wait_for_ready_endpoints(
        &rig.test.client,
        &rig.test.name,
        "web",
        1,
        Duration::from_secs(30),
    )
    .await?;
    let (min, samples) = watch.finish().await;
    anyhow::ensure!(samples > 20, "only {samples} endpoint samples");
    Ok((min, notice))
}

/// What every tool that drains by itself gets: one restart, a guard that held the
/// drain and is gone afterwards, no eviction of spotkube's, the notice naming the tool.
async fn assert_surged_under_guard(
    rig: &Rig,
    notice: &InterruptionNotice,
    source: &str,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        notice.source.as_deref() == Some(source),
        "notice {notice:?}"
    );
    anyhow::ensure!(notice.is_imminent(), "notice {notice:?}");
    wait_for_rollout(
        &rig.test.client,
        &rig.test.name,
        "web",
        Duration::from_secs(30),
    )
    .await?;
    anyhow::ensure!(
        rig.replica_sets().await? == 2,
        "one restart, one new ReplicaSet"
    );
    let d = rig.deployment().await?;
    anyhow::ensure!(d.spec.as_ref().and_then(|s| s.replicas) == Some(1));
    anyhow::ensure!(
        d.metadata
            .annotations
            .unwrap_or_default()
            .get("spotkube.io/reason")
            == notice.event_id.as_ref(),
        "surged under the notice's key"
    );
    wait_for(
        "the eviction guard removed",
        Duration::from_secs(15),
        || async { Ok((rig.pdbs().await? == 0).then_some(())) },
    )
    .await?;
    let deployment_events = rig.event_reasons("Deployment", "web").await?;
    for reason in ["EvictionGuard", "SurgeRestart"] {
        anyhow::ensure!(
            deployment_events.iter().any(|r| r == reason),
            "{reason} in {deployment_events:?}"
        );
    }
    anyhow::ensure!(
        rig.event_reasons("Node", &rig.doomed.name)
            .await?
            .iter()
            .any(|r| r == "SpotInterruption")
    );
    // The drain was the tool's: spotkube evicted nothing.
    let pods = Api::<Pod>::namespaced(rig.test.client.clone(), &rig.test.name)
        .list(&ListParams::default())
        .await?;
    for pod in pods.items {
        let name = pod.metadata.name.unwrap_or_default();
        let reasons = rig.event_reasons("Pod", &name).await?;
        anyhow::ensure!(
            !reasons.iter().any(|r| r == "Evicted"),
            "{name}: {reasons:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_nth_drain_never_empties_the_service() -> anyhow::Result<()> {
    let rig = Rig::start("ext-nth", &[]).await?;
    let result = async {
        let controller = rig.controller(rig.options()).await?;
        let (min, notice) =
            drained_by_a_tool(&rig, taint(NTH_SPOT_ITN, Some("spot-itn-0a1b")), true, true).await?;
        anyhow::ensure!(
            min >= 1,
            "the Service had {min} ready endpoints at some moment"
        );
        assert_surged_under_guard(&rig, &notice.unwrap(), "nth").await?;
        let metrics = controller.metrics().await?;
        anyhow::ensure!(
            metrics.contains(
                r#"spotkube_controller_external_signals_total{source="nth",kind="imminent"} 1"#
            ),
            "{metrics}"
        );
        anyhow::ensure!(
            !metrics.contains("spotkube_controller_events_total{"),
            "no SQS message was involved: {metrics}"
        );
        Ok(())
    }
    .await;
    rig.test.report(result)
}

/// The control run: the same NTH drain without spotkube does empty the Service.
#[tokio::test]
async fn without_spotkube_an_nth_drain_empties_the_service() -> anyhow::Result<()> {
    let rig = Rig::start("ext-none", &[]).await?;
    let result = async {
        let (min, _) = drained_by_a_tool(
            &rig,
            taint(NTH_SPOT_ITN, Some("spot-itn-0a1b")),
            true,
            false,
        )
        .await?;
        anyhow::ensure!(
            min == 0,
            "without spotkube the replacement starts only after the drain: min {min}"
        );
        Ok(())
    }
    .await;
    rig.test.report(result)
}

#[tokio::test]
async fn a_cluster_autoscaler_scale_down_never_empties_the_service() -> anyhow::Result<()> {
    let rig = Rig::start("ext-ca", &[]).await?;
    let result = async {
        let _controller = rig.controller(rig.options()).await?;
        let since = jiff::Timestamp::now().as_second().to_string();
        // Cluster Autoscaler taints (its value: when) and does not cordon.
        let (min, notice) =
            drained_by_a_tool(&rig, taint(CA_TO_BE_DELETED, Some(&since)), false, true).await?;
        anyhow::ensure!(
            min >= 1,
            "the Service had {min} ready endpoints at some moment"
        );
        assert_surged_under_guard(&rig, &notice.unwrap(), "cluster-autoscaler").await
    }
    .await;
    rig.test.report(result)
}

/// Karpenter (kubernetes-sigs/karpenter #2452): a scaled surge under its disruption
/// taint must not leave a replica nobody asked for (Karpenter would keep or launch
/// capacity for it): once the node is gone the surge ends, long before its hold.
#[tokio::test]
async fn a_karpenter_disruption_ends_with_exactly_the_users_replicas() -> anyhow::Result<()> {
    let rig = Rig::start(
        "ext-karpenter",
        &[
            ("spotkube.io/surge", "scale"),
            ("spotkube.io/surge-hold", "10m"),
        ],
    )
    .await?;
    let result = async {
        let _controller = rig.controller(rig.options()).await?;
        let watch = EndpointWatch::start(&rig.test.client, &rig.test.name, "web");
        let (min, notice) =
            drained_by_a_tool(&rig, taint(KARPENTER_DISRUPTED, None), false, true).await?;
        let notice = notice.unwrap();
        anyhow::ensure!(notice.source.as_deref() == Some("karpenter"), "{notice:?}");
        anyhow::ensure!(
            min >= 1,
            "the Service had {min} ready endpoints at some moment"
        );
        let surged = rig.deployment().await?;
        let a = surged.metadata.annotations.clone().unwrap_or_default();
        anyhow::ensure!(
            surged.spec.as_ref().and_then(|s| s.replicas) == Some(2)
                && a.get("spotkube.io/surge-node") == Some(&rig.doomed.name),
            "a scaled surge for the doomed node: {a:?}"
        );
        // Karpenter terminates the instance: its Node goes.
        rig.nodes()
            .delete(&rig.doomed.name, &DeleteParams::default())
            .await?;
        let back = wait_for(
            "scaled back to the user's replicas",
            Duration::from_secs(30),
            || async {
                let d = rig.deployment().await?;
                Ok((d.spec.as_ref().and_then(|s| s.replicas) == Some(1)).then_some(d))
            },
        )
        .await?;
        let a = back.metadata.annotations.unwrap_or_default();
        anyhow::ensure!(!a.contains_key("spotkube.io/surge-from"), "{a:?}");
        anyhow::ensure!(!a.contains_key("spotkube.io/surge-node"), "{a:?}");
        anyhow::ensure!(
            !back
                .metadata
                .labels
                .unwrap_or_default()
                .contains_key("spotkube.io/surging")
        );
        wait_for_rollout(
            &rig.test.client,
            &rig.test.name,
            "web",
            Duration::from_secs(30),
        )
        .await?;
        let (min, _) = watch.finish().await;
        anyhow::ensure!(
            min >= 1,
            "the Service had {min} ready endpoints at some moment"
        );
        let pods = Api::<Pod>::namespaced(rig.test.client.clone(), &rig.test.name)
            .list(&ListParams::default().labels("app=web"))
            .await?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .count();
        anyhow::ensure!(pods == 1, "{pods} pods of web for 1 replica asked");
        Ok(())
    }
    .await;
    rig.test.report(result)
}

/// A cordon alone: nothing by default; with `--external-signal-cordon` a spot node's
/// cordon is a planned drain, an on-demand node's never.
#[tokio::test]
async fn a_cordon_counts_only_on_spot_nodes_and_only_when_asked() -> anyhow::Result<()> {
    let rig = Rig::start("ext-cordon", &[]).await?;
    let result = async {
        let test = &rig.test;
        let on_demand = FakeNode::on_demand("m7g.large", "us-east-1b").with_label(POOL, &test.name);
        on_demand.create(&test.client).await?;
        wait_for_schedulable_nodes(
            &test.client,
            &format!("{POOL}={}", test.name),
            2,
            Duration::from_secs(60),
        )
        .await?;
        let api = workloads::with_grace_period(
            workloads::with_node_selector(
                workloads::deployment("api", 1),
                "kubernetes.io/hostname",
                &on_demand.name,
            ),
            1,
        );
        workloads::create_with_service(&test.client, &test.name, &api).await?;
        wait_for_rollout(&test.client, &test.name, "api", Duration::from_secs(60)).await?;

        // Without the flag, a cordoned spot node is somebody's business, not a drain.
        let controller = rig.controller(rig.options()).await?;
        rig.mark(&rig.doomed.name, None, true).await?;
        controller
            .wait_for_metric("spotkube_controller_leader 1", Duration::from_secs(30))
            .await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        anyhow::ensure!(
            rig.notice(&rig.doomed.name).await?.is_none(),
            "cordon acted on"
        );
        anyhow::ensure!(rig.replica_sets().await? == 1, "web restarted");
        drop(controller);

        // With it, both nodes cordoned: the spot one is drained, the on-demand one not.
        rig.mark(&on_demand.name, None, true).await?;
        let _controller = rig
            .controller(rig.options().arg("--external-signal-cordon"))
            .await?;
        let notice = rig.wait_notice(&rig.doomed.name).await?;
        anyhow::ensure!(notice.source.as_deref() == Some("cordon"), "{notice:?}");
        wait_for("web restarted", Duration::from_secs(30), || async {
            Ok((rig.replica_sets().await? == 2).then_some(()))
        })
        .await?;
        // The on-demand node was in the same first list: handled (not marked) by now.
        anyhow::ensure!(
            rig.notice(&on_demand.name).await?.is_none(),
            "an on-demand cordon acted on"
        );
        let api_sets = Api::<ReplicaSet>::namespaced(test.client.clone(), &test.name)
            .list(&ListParams::default().labels("app=api"))
            .await?
            .items
            .len();
        anyhow::ensure!(api_sets == 1, "api restarted");
        // Nobody else drains after a cordon: no guard, spotkube's own evictions.
        anyhow::ensure!(rig.pdbs().await? == 0, "a guard for a cordon");
        // Uncordoned: the marks go.
        let uncordon = serde_json::json!({ "spec": { "unschedulable": false } });
        rig.nodes()
            .patch(
                &rig.doomed.name,
                &PatchParams::default(),
                &Patch::Merge(&uncordon),
            )
            .await?;
        wait_for("marks removed", Duration::from_secs(30), || async {
            Ok(rig.notice(&rig.doomed.name).await?.is_none().then_some(()))
        })
        .await?;
        Ok(())
    }
    .await;
    rig.test.report(result)
}

/// An SQS spot interruption warning and an NTH taint for the same node, at once: one
/// plan, one surge, whichever came first.
#[tokio::test]
async fn an_sqs_warning_and_an_nth_taint_for_one_node_surge_once() -> anyhow::Result<()> {
    let rig = Rig::start("ext-both", &[]).await?;
    let result = async {
        let spare = FakeNode::spot("m7g.large", "us-east-1b").with_label(POOL, &rig.test.name);
        spare.create(&rig.test.client).await?;
        wait_for_schedulable_nodes(
            &rig.test.client,
            &format!("{POOL}={}", rig.test.name),
            2,
            Duration::from_secs(60),
        )
        .await?;
        let controller = rig.controller(rig.options()).await?;
        let (sent, marked) = tokio::join!(
            rig.moto.send_event(
                &rig.queues.url,
                EventKind::SpotInterruptionWarning,
                &rig.doomed.instance_id,
                jiff::Timestamp::now(),
            ),
            rig.mark(
                &rig.doomed.name,
                taint(NTH_SPOT_ITN, Some("spot-itn-0a1b")),
                true
            ),
        );
        sent?;
        marked?;
        let notice = rig.wait_notice(&rig.doomed.name).await?;
        wait_for("queue drained", Duration::from_secs(30), || async {
            Ok((rig.moto.queue_depth(&rig.queues.url).await? == 0).then_some(()))
        })
        .await?;
        for needle in [
            r#"spotkube_controller_events_total{kind="spot-interruption"} 1"#,
            r#"spotkube_controller_external_signals_total{source="nth",kind="imminent"} 1"#,
        ] {
            controller
                .wait_for_metric(needle, Duration::from_secs(30))
                .await?;
        }
        wait_for_rollout(
            &rig.test.client,
            &rig.test.name,
            "web",
            Duration::from_secs(30),
        )
        .await?;
        // Both paths have had their say; the drain reconcile a few passes more.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = rig.notice(&rig.doomed.name).await?.unwrap();
        anyhow::ensure!(
            now.event_id == notice.event_id,
            "the first key stays: {notice:?} then {now:?}"
        );
        anyhow::ensure!(rig.replica_sets().await? == 2, "web surged more than once");
        let restarts = rig
            .event_reasons("Deployment", "web")
            .await?
            .into_iter()
            .filter(|r| r == "SurgeRestart")
            .count();
        anyhow::ensure!(restarts == 1, "{restarts} SurgeRestart Events");
        let d = rig.deployment().await?;
        anyhow::ensure!(
            d.metadata
                .annotations
                .unwrap_or_default()
                .get("spotkube.io/reason")
                == now.event_id.as_ref()
        );
        Ok(())
    }
    .await;
    rig.test.report(result)
}
