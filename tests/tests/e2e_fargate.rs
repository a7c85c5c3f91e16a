//! Fargate failover and recovery end to end on the rig: the real control plane + kwok,
//! moto's SQS, the Fargate stand-in (EKS's webhook under its real name, so it runs before
//! spotkube's, and a fargate-scheduler making one `fargate-ip-…` Node per pod after a
//! start delay), spotkube's webhook and the `spotkube-controller` binary.
//!
//! Every test polls its Service's EndpointSlices every 100 ms from before the first
//! move to after the last: ready endpoints must never drop to zero.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use spotkube_rig::aws::{EventKind, Moto, Queues};
use spotkube_rig::fargate::{FargateOptions, FargateStandIn, ProfileHandle};
use spotkube_rig::faults::SilentWebhook;
use spotkube_rig::faults::event_count;
use spotkube_rig::programs::ProgramOptions;
use spotkube_rig::{
    Cluster, EndpointWatch, FakeNode, Program, TestNamespace, wait_for, wait_for_ready_endpoints,
    wait_for_rollout, wait_for_schedulable_nodes, workloads,
};

const POOL: &str = "spotkube.test/pool";
const PROFILE_LABEL: &str = "spotkube.io/fargate";
const STATE: &str = "spotkube.io/state";
const RECORD: &str = "spotkube.io/fargate";

/// One test at a time: a controller's recovery loop follows every Deployment moved to
/// Fargate in the cluster (one cluster has one leader), with its own timeouts.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test's world: an opted-in namespace served by a Fargate profile, spotkube's
/// webhook registered for it, a queue, and `web` (one replica, a Service, the user's own
/// nodeSelector, affinity and toleration, `fallback: fargate`) on a spot node.
struct World {
    test: TestNamespace,
    moto: &'static Moto,
    queues: Queues,
    profile: ProfileHandle,
    _webhook: Program,
    doomed: FakeNode,
    /// `web`'s pod template as the API server stored it, before anything moved.
    template: Value,
    strategy: Value,
}

impl World {
    async fn start(prefix: &str, start_delay: Duration, cooldown: &str) -> anyhow::Result<World> {
        let cluster = Cluster::shared().await?;
        let test = cluster
            .namespace_with(prefix, &[("spotkube.io/enabled", "true")])
            .await?;
        let stand_in = FargateStandIn::shared(cluster).await?;
        let served = stand_in.serve(
            profile(&test).parse()?,
            FargateOptions {
                start_delay,
                ..FargateOptions::default()
            },
        );
        let webhook = cluster
            .start_webhook(
                ProgramOptions::default().arg(format!("--fargate-profile={}", profile(&test))),
            )
            .await?;
        // Named after EKS's `0500-amazon-eks-fargate-mutation…`: called after it.
        cluster
            .register_webhook(&format!("spotkube-{}", test.name), &webhook, &test.name)
            .await?;
        let moto = Moto::shared().await?;
        let queues = moto
            .create_queue_with_dlq(&format!("{}-events", test.name), 2)
            .await?;
        let doomed = FakeNode::spot("m7g.large", "us-east-1a").with_label(POOL, &test.name);
        doomed.create(&test.client).await?;
        let deployment = user_workload(&test, cooldown);
        let created = Api::<Deployment>::namespaced(test.client.clone(), &test.name)
            .create(&PostParams::default(), &deployment)
            .await?;
        Api::<Service>::namespaced(test.client.clone(), &test.name)
            .create(&PostParams::default(), &workloads::service("web"))
            .await?;
        wait_for_rollout(&test.client, &test.name, "web", Duration::from_secs(60)).await?;
        wait_for_ready_endpoints(&test.client, &test.name, "web", 1, Duration::from_secs(30))
            .await?;
        let spec = created.spec.as_ref().expect("spec");
        Ok(World {
            template: serde_json::to_value(&spec.template)?,
            strategy: serde_json::to_value(&spec.strategy)?,
            test,
            moto,
            queues,
            profile: served,
            _webhook: webhook,
            doomed,
        })
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.test.client.clone(), &self.test.name)
    }

    async fn web(&self) -> anyhow::Result<Deployment> {
        Ok(self.deployments().get("web").await?)
    }

    /// A spot node of the test's pool, schedulable before it returns.
    async fn spot_node(&self, zone: &str, count: usize) -> anyhow::Result<FakeNode> {
        let node = FakeNode::spot("m7g.large", zone).with_label(POOL, &self.test.name);
        node.create(&self.test.client).await?;
        wait_for_schedulable_nodes(
            &self.test.client,
            &format!("{POOL}={}", self.test.name),
            count,
            Duration::from_secs(60),
        )
        .await?;
        Ok(node)
    }

    fn controller_options(&self, identity: &str) -> ProgramOptions {
        self.moto
            .controller_options(&self.queues.url, &self.test.name)
            .arg(format!("--identity={identity}"))
            .arg("--visibility-timeout=3s")
            // The drain reconcile decides again every second while the node is marked.
            .arg("--scale-back-interval=1s")
            .arg(format!("--fargate-profile={}", profile(&self.test)))
            .arg("--fargate-interval=500ms")
    }

    async fn interrupt(&self) -> anyhow::Result<()> {
        self.moto
            .send_event(
                &self.queues.url,
                EventKind::SpotInterruptionWarning,
                &self.doomed.instance_id,
                jiff::Timestamp::now(),
            )
            .await?;
        Ok(())
    }

    /// The instance dies: its pods go at once, then the Node.
    async fn kill_doomed(&self) -> anyhow::Result<()> {
        kill_node(&self.test, &self.doomed.name).await
    }

    /// Waits until `web` shows `state` with no Fargate rollout in flight.
    async fn wait_settled(&self, state: &str, timeout: Duration) -> anyhow::Result<Deployment> {
        Ok(
            wait_for(&format!("web settled in {state}"), timeout, || async {
                let d = self.web().await?;
                let a = d.annotations();
                let settled = a.get(STATE).map(String::as_str) == Some(state)
                    && a.get(RECORD).is_none_or(|r| !r.contains("\"rollout\""));
                Ok(settled.then_some(d))
            })
            .await?,
        )
    }

    /// The one Ready pod of `web` (old ones gone), with its Node's name.
    async fn wait_pod_on(&self, what: &str, on: impl Fn(&str) -> bool) -> anyhow::Result<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.test.client.clone(), &self.test.name);
        Ok(wait_for(what, Duration::from_secs(90), || async {
            let list = pods.list(&ListParams::default().labels("app=web")).await?;
            let live: Vec<&Pod> = list
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let [pod] = live.as_slice() else {
                return Ok(None);
            };
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            Ok((on(&node) && is_ready(pod)).then(|| (*pod).clone()))
        })
        .await?)
    }

    /// Nothing lost: the event was handled and deleted, nothing dead-lettered.
    async fn assert_queue_drained(&self) -> anyhow::Result<()> {
        wait_for("queue drained", Duration::from_secs(30), || async {
            Ok((self.moto.queue_depth(&self.queues.url).await? == 0).then_some(()))
        })
        .await?;
        assert_eq!(
            self.moto.queue_depth(&self.queues.dlq_url).await?,
            0,
            "dead-lettered"
        );
        Ok(())
    }

    async fn events(&self, reason: &str) -> anyhow::Result<usize> {
        Ok(event_count(
            &self.test.client,
            &self.test.name,
            "Deployment",
            "web",
            reason,
        )
        .await?)
    }

    /// The user's own placement, as it must stay through every move.
    fn assert_user_placement_kept(&self, d: &Deployment) {
        let now = serde_json::to_value(&d.spec.as_ref().unwrap().template).unwrap();
        for field in ["nodeSelector", "affinity", "tolerations"] {
            assert_eq!(
                now["spec"][field], self.template["spec"][field],
                "{field} changed"
            );
        }
        let labels = now["metadata"]["labels"].as_object().unwrap();
        for (k, v) in self.template["metadata"]["labels"].as_object().unwrap() {
            assert_eq!(labels.get(k), Some(v), "template label {k} changed");
        }
    }
}

fn profile(test: &TestNamespace) -> String {
    format!("{}:{PROFILE_LABEL}=true", test.name)
}

/// `web`: the user's nodeSelector (the test's pool), a preferred affinity and a
/// toleration of their own, `fallback: fargate`, and `cooldown` on Fargate.
fn user_workload(test: &TestNamespace, cooldown: &str) -> Deployment {
    let deployment =
        workloads::with_node_selector(workloads::deployment("web", 1), POOL, &test.name);
    let mut deployment = workloads::with_grace_period(deployment, 1);
    deployment.metadata.annotations = Some(BTreeMap::from([
        ("spotkube.io/fallback".to_string(), "fargate".to_string()),
        (
            "spotkube.io/fargate-cooldown".to_string(),
            cooldown.to_string(),
        ),
    ]));
    let spec = deployment
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap();
    spec.tolerations =
        Some(vec![serde_json::from_value(
        json!({ "key": "example.com/dedicated", "operator": "Exists", "effect": "NoSchedule" }),
    )
    .unwrap()]);
    spec.affinity = Some(
        serde_json::from_value(json!({ "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{ "weight": 7, "preference": {
                "matchExpressions": [{ "key": "example.com/disk", "operator": "In", "values": ["ssd"] }] } }] } }))
        .unwrap(),
    );
    deployment
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn kill_node(test: &TestNamespace, name: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(test.client.clone(), &test.name);
    for pod in pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={name}")))
        .await?
    {
        match pods
            .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
            .await
        {
            // Gone meanwhile (its ReplicaSet finished with it): as good.
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            other => {
                other?;
            }
        }
    }
    Api::<Node>::all(test.client.clone())
        .delete(name, &DeleteParams::default())
        .await?;
    Ok(())
}

fn template_labels(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn annotation(d: &Deployment, key: &str) -> Option<String> {
    d.annotations().get(key).cloned()
}

/// Proofs 1 and 2: an interruption of the node running a `fallback: fargate`
/// single-replica Deployment with a Service moves it to Fargate (start delay 20 s) with
/// zero gap and the user's placement untouched; after its (shortened) cooldown it comes
/// back to spot with zero gap, its pod template byte for byte what it was.
#[tokio::test]
async fn an_interruption_moves_it_to_fargate_and_the_cooldown_brings_it_back() -> anyhow::Result<()>
{
    let _alone = ALONE.lock().await;
    let w = World::start("fg-move", Duration::from_secs(20), "30s").await?;
    let result = async {
        let cluster = Cluster::shared().await?;
        let _controller = cluster
            .start_controller(w.controller_options("only"))
            .await?;
        let web = EndpointWatch::start(&w.test.client, &w.test.name, "web");
        w.interrupt().await?;

        // The failover: the profile label on the template, state on the Deployment.
        let moved = wait_for("the failover patch", Duration::from_secs(30), || async {
            let d = w.web().await?;
            Ok((annotation(&d, STATE).as_deref() == Some("fargate")).then_some(d))
        })
        .await?;
        let labels = template_labels(&moved);
        assert_eq!(labels[PROFILE_LABEL], "true");
        assert_eq!(
            moved
                .spec
                .as_ref()
                .unwrap()
                .strategy
                .as_ref()
                .unwrap()
                .rolling_update
                .as_ref()
                .unwrap()
                .max_unavailable,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0)),
            "old pods must serve until the Fargate pods are Ready"
        );
        w.assert_user_placement_kept(&moved);
        assert!(
            annotation(&moved, "spotkube.io/migrated-at")
                .unwrap()
                .parse::<jiff::Timestamp>()
                .is_ok()
        );
        assert!(
            !annotation(&moved, "spotkube.io/reason")
                .unwrap_or_default()
                .is_empty()
        );

        let pod = w
            .wait_pod_on("web Ready on a Fargate node", |n| {
                n.starts_with("fargate-ip-")
            })
            .await?;
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.scheduler_name.as_deref(), Some("fargate-scheduler"));
        // spotkube's webhook, called after EKS's, left the Fargate pod's placement alone.
        assert_eq!(
            serde_json::to_value(&spec.affinity)?,
            w.template["spec"]["affinity"],
            "spot affinity injected into a Fargate pod"
        );
        let settled = w.wait_settled("fargate", Duration::from_secs(30)).await?;
        assert_eq!(
            serde_json::to_value(&settled.spec.as_ref().unwrap().strategy)?,
            w.strategy
        );
        assert_eq!(w.events("SpotkubeFargateFailover").await?, 1);
        assert_eq!(w.events("SpotkubeFargateReady").await?, 1);

        // AWS takes the instance; a spot node with room appears; the cooldown ends.
        w.kill_doomed().await?;
        w.spot_node("us-east-1b", 1).await?;
        let back = w.wait_settled("spot", Duration::from_secs(90)).await?;
        w.wait_pod_on("web Ready on a spot node", |n| n.starts_with("ip-"))
            .await?;
        assert_eq!(
            serde_json::to_value(&back.spec.as_ref().unwrap().template)?,
            w.template,
            "the pod template is not what it was"
        );
        assert_eq!(
            serde_json::to_value(&back.spec.as_ref().unwrap().strategy)?,
            w.strategy
        );
        assert!(annotation(&back, RECORD).is_none());
        assert!(!back.labels().contains_key("spotkube.io/on-fargate"));
        assert_eq!(w.events("SpotkubeRecoveryStarted").await?, 1);
        assert_eq!(w.events("SpotkubeRecovered").await?, 1);
        w.assert_queue_drained().await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (min, samples) = web.finish().await;
        assert!(samples > 100, "only {samples} samples");
        assert!(min >= 1, "web had {min} ready endpoints at some point");
        Ok(())
    }
    .await;
    w.test.report(result)
}

/// A node that reports Ready and runs nothing (a kubelet that hangs): pods bound there
/// never start. kwok does not manage it; its heartbeat is the test's.
struct HungNode {
    node: FakeNode,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl HungNode {
    async fn start(test: &TestNamespace) -> anyhow::Result<HungNode> {
        let node = FakeNode::spot("m7g.large", "us-east-1c").with_label(POOL, &test.name);
        let mut object = node.to_node()?;
        object
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove("kwok.x-k8s.io/node");
        let nodes: Api<Node> = Api::all(test.client.clone());
        nodes.create(&PostParams::default(), &object).await?;
        let (nodes, name) = (nodes.clone(), node.name.clone());
        let heartbeat = tokio::spawn(async move {
            loop {
                let now = jiff::Timestamp::now().to_string();
                let status = json!({ "status": { "conditions": [{
                    "type": "Ready", "status": "True", "reason": "KubeletReady",
                    "lastHeartbeatTime": now, "lastTransitionTime": now }] } });
                let _ = nodes
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await;
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        });
        Ok(HungNode { node, heartbeat })
    }

    async fn remove(self, test: &TestNamespace) -> anyhow::Result<()> {
        self.heartbeat.abort();
        kill_node(test, &self.node.name).await
    }
}

/// Proof 3, and the manual path: `state set … fargate` moves the workload as the
/// controller would; every recovery to a spot node whose pods never start rolls back to
/// Fargate with zero gap, the wait before the next one doubling (base 4 s: 8 s, then
/// 16 s); a recovery that succeeds resets the count.
#[tokio::test]
async fn failed_recoveries_roll_back_with_exponential_backoff_until_one_succeeds()
-> anyhow::Result<()> {
    let _alone = ALONE.lock().await;
    let w = World::start("fg-backoff", Duration::from_secs(1), "1s").await?;
    let result = async {
        let cluster = Cluster::shared().await?;
        let _controller = cluster
            .start_controller(
                w.controller_options("only")
                    .arg("--fargate-backoff-base=4s")
                    .arg("--fargate-recovery-timeout=6s"),
            )
            .await?;
        // The only spot room will be a node whose pods never start: the pool's node is
        // cordoned (it serves until the Fargate pod is Ready, then goes).
        let hung = HungNode::start(&w.test).await?;
        Api::<Node>::all(w.test.client.clone())
            .patch(
                &w.doomed.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "unschedulable": true } })),
            )
            .await?;
        let web = EndpointWatch::start(&w.test.client, &w.test.name, "web");
        let binary = spotkube_rig::tools::program_binary("spotkube-controller");
        let set = std::process::Command::new(&binary)
            .args([
                "state",
                "set",
                &format!("{}/web", w.test.name),
                "fargate",
                "--reason",
                "drill",
            ])
            .arg(format!("--fargate-profile={}", profile(&w.test)))
            .env("KUBECONFIG", &cluster.kubeconfig)
            .output()?;
        anyhow::ensure!(
            set.status.success(),
            "{}",
            String::from_utf8_lossy(&set.stderr)
        );
        w.wait_pod_on("web Ready on a Fargate node", |n| {
            n.starts_with("fargate-ip-")
        })
        .await?;
        w.kill_doomed().await?;

        for (failures, wait) in [(1, 8), (2, 16)] {
            let d = wait_for(
                &format!("failed recovery {failures}"),
                Duration::from_secs(60),
                || async {
                    let d = w.web().await?;
                    let count = annotation(&d, "spotkube.io/failed-recoveries")
                        .and_then(|v| v.parse::<u32>().ok());
                    Ok((count == Some(failures)).then_some(d))
                },
            )
            .await?;
            assert_eq!(annotation(&d, STATE).as_deref(), Some("fargate"));
            let record: Value = serde_json::from_str(&annotation(&d, RECORD).unwrap())?;
            let rolled_back: jiff::Timestamp =
                record["rollout"]["started"].as_str().unwrap().parse()?;
            let next: jiff::Timestamp = annotation(&d, "spotkube.io/next-recovery")
                .unwrap()
                .parse()?;
            assert_eq!(record["rollout"]["kind"], "rollback");
            assert_eq!(
                next.duration_since(rolled_back),
                jiff::SignedDuration::from_secs(wait),
                "failure {failures}: the next attempt is not base × 2^{failures}"
            );
            let labels = template_labels(&d);
            assert_eq!(
                labels[PROFILE_LABEL], "true",
                "rolled back without the profile label"
            );
        }
        // Real spot room: the next attempt succeeds and the count is reset.
        hung.remove(&w.test).await?;
        w.spot_node("us-east-1b", 1).await?;
        let back = w.wait_settled("spot", Duration::from_secs(60)).await?;
        assert_eq!(annotation(&back, "spotkube.io/failed-recoveries"), None);
        assert_eq!(annotation(&back, "spotkube.io/next-recovery"), None);
        assert_eq!(
            serde_json::to_value(&back.spec.as_ref().unwrap().template)?,
            w.template
        );
        w.wait_pod_on("web Ready on a spot node", |n| n.starts_with("ip-"))
            .await?;
        assert!(w.events("SpotkubeRecoveryFailed").await? >= 2);
        assert_eq!(w.events("SpotkubeRecovered").await?, 1);
        let (min, samples) = web.finish().await;
        assert!(samples > 100, "only {samples} samples");
        assert!(min >= 1, "web had {min} ready endpoints at some point");
        Ok(())
    }
    .await;
    w.test.report(result)
}

/// Proof 4: Fargate refuses the failover's pods (the stand-in's failure switch): the
/// controller abandons the failover and restarts the workload on spot, which serves it
/// with zero gap before the node dies; an Event says why.
#[tokio::test]
async fn fargate_refusing_the_pods_leaves_the_workload_served_on_spot() -> anyhow::Result<()> {
    let _alone = ALONE.lock().await;
    let w = World::start("fg-refused", Duration::from_secs(1), "45m").await?;
    let result = async {
        let cluster = Cluster::shared().await?;
        w.spot_node("us-east-1b", 2).await?;
        w.profile.set_failing(true);
        let _controller = cluster
            .start_controller(w.controller_options("only"))
            .await?;
        let web = EndpointWatch::start(&w.test.client, &w.test.name, "web");
        w.interrupt().await?;
        wait_for(
            "the failover abandoned",
            Duration::from_secs(60),
            || async { Ok((w.events("SpotkubeFargateFailoverFailed").await? > 0).then_some(())) },
        )
        .await?;
        let pod = w
            .wait_pod_on("web Ready on the spare spot node", |n| {
                n.starts_with("ip-") && n != w.doomed.name
            })
            .await?;
        assert_ne!(
            pod.spec.as_ref().unwrap().scheduler_name.as_deref(),
            Some("fargate-scheduler")
        );
        let settled = w.wait_settled("spot", Duration::from_secs(30)).await?;
        assert!(annotation(&settled, RECORD).is_none());
        w.assert_user_placement_kept(&settled);
        assert_eq!(
            serde_json::to_value(&settled.spec.as_ref().unwrap().strategy)?,
            w.strategy
        );
        // The node is still marked and its workloads decided on every second: the
        // abandoned failover is not tried again for the same event.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(w.events("SpotkubeFargateFailover").await?, 1);
        assert_eq!(annotation(&w.web().await?, STATE).as_deref(), Some("spot"));
        w.kill_doomed().await?;
        w.assert_queue_drained().await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (min, samples) = web.finish().await;
        assert!(samples > 20, "only {samples} samples");
        assert!(min >= 1, "web had {min} ready endpoints at some point");
        Ok(())
    }
    .await;
    w.test.report(result)
}

/// Starts controller `identity` as a standby (returns once it answers).
async fn standby(w: &World, identity: &str) -> anyhow::Result<Program> {
    let mut options = w.controller_options(identity);
    options.no_ready_wait = true;
    let program = Cluster::shared().await?.start_controller(options).await?;
    wait_for(
        &format!("{identity} is up"),
        Duration::from_secs(30),
        || async { Ok(program.metrics().await.ok().map(|_| ())) },
    )
    .await?;
    Ok(program)
}

/// Proof 5: the leader SIGKILLed mid-failover, then its successor SIGKILLed
/// mid-recovery: each time the standby finishes the same transition, once (one Event of
/// each step, two ReplicaSets in all: the spot template's and the Fargate one's).
#[tokio::test]
async fn a_leader_killed_mid_failover_and_mid_recovery_is_finished_by_the_standby()
-> anyhow::Result<()> {
    let _alone = ALONE.lock().await;
    let w = World::start("fg-kill", Duration::from_secs(10), "40s").await?;
    let result = async {
        let cluster = Cluster::shared().await?;
        w.spot_node("us-east-1b", 2).await?;
        let mut first = cluster
            .start_controller(w.controller_options("first"))
            .await?;
        wait_for("first leads", Duration::from_secs(30), || async {
            Ok(first.is_leader().await?.then_some(()))
        })
        .await?;
        let second = standby(&w, "second").await?;
        let web = EndpointWatch::start(&w.test.client, &w.test.name, "web");
        w.interrupt().await?;
        wait_for("the failover patch", Duration::from_secs(30), || async {
            Ok((annotation(&w.web().await?, STATE).as_deref() == Some("fargate")).then_some(()))
        })
        .await?;
        first.process.kill();
        // Mid-failover: the Fargate pod is still starting (10 s).
        let d = w.web().await?;
        assert!(
            annotation(&d, RECORD).unwrap().contains("\"failover\""),
            "the failover was already over"
        );
        wait_for("second leads", Duration::from_secs(30), || async {
            Ok(second.is_leader().await?.then_some(()))
        })
        .await?;
        w.wait_settled("fargate", Duration::from_secs(60)).await?;
        w.wait_pod_on("web Ready on a Fargate node", |n| {
            n.starts_with("fargate-ip-")
        })
        .await?;
        w.kill_doomed().await?;

        let third = standby(&w, "third").await?;
        let mut second = second;
        // The recovery's new pod is held at admission, so the kill lands mid-recovery.
        let held = SilentWebhook::register(
            &w.test.client,
            &format!("{}-hold-pods", w.test.name),
            &w.test.name,
            &cluster.pki.ca.files.cert_pem,
            json!([{ "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                     "resources": ["pods"] }]),
            None,
        )
        .await?;
        wait_for("the recovery patch", Duration::from_secs(90), || async {
            Ok((annotation(&w.web().await?, STATE).as_deref() == Some("recovering")).then_some(()))
        })
        .await?;
        held.wait_holding(Duration::from_secs(30)).await?;
        second.process.kill();
        wait_for("third leads", Duration::from_secs(30), || async {
            Ok(third.is_leader().await?.then_some(()))
        })
        .await?;
        assert_eq!(
            annotation(&w.web().await?, STATE).as_deref(),
            Some("recovering")
        );
        // The held create fails; the ReplicaSet controller creates the pod again.
        held.release(&w.test.client).await?;
        let back = w.wait_settled("spot", Duration::from_secs(60)).await?;
        assert_eq!(
            serde_json::to_value(&back.spec.as_ref().unwrap().template)?,
            w.template
        );
        w.wait_pod_on("web Ready on a spot node", |n| n.starts_with("ip-"))
            .await?;
        for reason in [
            "SpotkubeFargateFailover",
            "SpotkubeFargateReady",
            "SpotkubeRecoveryStarted",
            "SpotkubeRecovered",
        ] {
            assert_eq!(w.events(reason).await?, 1, "{reason}");
        }
        let replica_sets = Api::<ReplicaSet>::namespaced(w.test.client.clone(), &w.test.name)
            .list(&ListParams::default().labels("app=web"))
            .await?;
        assert_eq!(replica_sets.items.len(), 2, "a rollout was doubled");
        w.assert_queue_drained().await?;
        let (min, samples) = web.finish().await;
        assert!(samples > 100, "only {samples} samples");
        assert!(min >= 1, "web had {min} ready endpoints at some point");
        Ok(())
    }
    .await;
    w.test.report(result)
}
