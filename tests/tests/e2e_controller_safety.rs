//! The controller's safety properties on the rig (issue "make what exists safe"):
//! one failed action never abandons the rest, the taint needs no owner lookup, and a
//! leader that cannot renew its Lease stops acting before anyone may take it over.
//! Each test also checks the Node end to end (taint, cordon, deadline) and the Events
//! spotkube records on what it touched.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use spotkube_rig::aws::{EventKind, HoldAt, Moto, Queues};
use spotkube_rig::identity::controller_kubeconfig;
use spotkube_rig::{
    Cluster, FakeNode, Program, TestNamespace, wait_for, wait_for_rollout,
    wait_for_schedulable_nodes, workloads,
};
use spotkube_shared::annotations::InterruptionNotice;

const POOL: &str = "spotkube.test/pool";
const INTERRUPTION: &str = "spotkube.io/interruption";

/// An opted-in namespace, its queue, one doomed spot node carrying `workloads`
/// (name, replicas), then a spare node for the replacements.
struct Setup {
    test: TestNamespace,
    moto: &'static Moto,
    queues: Queues,
    doomed: FakeNode,
}

impl Setup {
    async fn start(prefix: &str, deployments: &[(&str, i32)]) -> anyhow::Result<Setup> {
        Setup::start_with(prefix, deployments, Moto::shared().await?).await
    }

    /// With a moto of the test's own (holds are per moto process).
    async fn start_with(
        prefix: &str,
        deployments: &[(&str, i32)],
        moto: &'static Moto,
    ) -> anyhow::Result<Setup> {
        let cluster = Cluster::shared().await?;
        let test = cluster
            .namespace_with(prefix, &[("spotkube.io/enabled", "true")])
            .await?;
        let queues = moto
            .create_queue_with_dlq(&format!("{}-events", test.name), 2)
            .await?;
        let doomed = FakeNode::spot("m7g.large", "us-east-1a").with_label(POOL, &test.name);
        doomed.create(&test.client).await?;
        for (name, replicas) in deployments {
            let deployment = workloads::with_grace_period(
                workloads::with_node_selector(
                    workloads::deployment(name, *replicas),
                    POOL,
                    &test.name,
                ),
                1,
            );
            workloads::create_with_service(&test.client, &test.name, &deployment).await?;
        }
        for (name, _) in deployments {
            wait_for_rollout(&test.client, &test.name, name, Duration::from_secs(60)).await?;
        }
        let spare = FakeNode::spot("m7g.large", "us-east-1b").with_label(POOL, &test.name);
        spare.create(&test.client).await?;
        wait_for_schedulable_nodes(
            &test.client,
            &format!("{POOL}={}", test.name),
            2,
            Duration::from_secs(60),
        )
        .await?;
        Ok(Setup {
            test,
            moto,
            queues,
            doomed,
        })
    }

    fn options(&self) -> spotkube_rig::programs::ProgramOptions {
        self.moto
            .controller_options(&self.queues.url, &self.test.name)
            .arg("--visibility-timeout=3s")
            .arg("--message-deadline=2s")
            .arg("--scale-back-interval=1s")
    }

    async fn interrupt(&self) -> anyhow::Result<jiff::Timestamp> {
        let sent = jiff::Timestamp::now();
        self.moto
            .send_event(
                &self.queues.url,
                EventKind::SpotInterruptionWarning,
                &self.doomed.instance_id,
                sent,
            )
            .await?;
        Ok(sent)
    }

    /// Waits for the doomed Node's NoSchedule taint, cordon and notice; returns the
    /// notice after checking its deadline is the warning's time + 120 s.
    async fn wait_marked(
        &self,
        sent: jiff::Timestamp,
        timeout: Duration,
    ) -> anyhow::Result<InterruptionNotice> {
        let nodes: Api<Node> = Api::all(self.test.client.clone());
        let name = self.doomed.name.clone();
        let node = wait_for("node tainted and cordoned", timeout, || async {
            let node = nodes.get(&name).await?;
            let spec = node.spec.clone().unwrap_or_default();
            let tainted = spec
                .taints
                .unwrap_or_default()
                .iter()
                .any(|t| t.key == INTERRUPTION && t.effect == "NoSchedule");
            let cordoned = spec.unschedulable == Some(true);
            Ok((tainted && cordoned).then_some(node))
        })
        .await?;
        let notice = node
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(INTERRUPTION))
            .map(|v| InterruptionNotice::from_annotation(v))
            .transpose()?
            .ok_or_else(|| anyhow::anyhow!("no {INTERRUPTION} annotation"))?;
        let expected = sent
            .round(jiff::Unit::Second)?
            .checked_add(jiff::SignedDuration::from_secs(120))?;
        let deadline = notice
            .deadline
            .ok_or_else(|| anyhow::anyhow!("notice without deadline"))?;
        anyhow::ensure!(
            deadline.duration_since(expected).abs() <= jiff::SignedDuration::from_secs(1),
            "deadline {deadline}, expected {expected}"
        );
        Ok(notice)
    }

    /// The reasons of the Events recorded on `kind`/`name` in the test namespace (or
    /// on the Node when `kind` is Node).
    async fn event_reasons(&self, kind: &str, name: &str) -> anyhow::Result<Vec<String>> {
        let api: Api<Event> = match kind {
            "Node" => Api::namespaced(self.test.client.clone(), "default"),
            _ => Api::namespaced(self.test.client.clone(), &self.test.name),
        };
        Ok(api
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
            .collect())
    }

    async fn wait_event(&self, kind: &str, name: &str, reason: &str) -> anyhow::Result<()> {
        wait_for(
            &format!("Event {reason} on {kind}/{name}"),
            Duration::from_secs(15),
            || async {
                let reasons = self.event_reasons(kind, name).await?;
                Ok(reasons.iter().any(|r| r == reason).then_some(()))
            },
        )
        .await?;
        Ok(())
    }

    async fn pods_on_doomed(&self, app: &str) -> anyhow::Result<usize> {
        let pods: Api<Pod> = Api::namespaced(self.test.client.clone(), &self.test.name);
        let list = pods
            .list(
                &ListParams::default()
                    .labels(&format!("app={app}"))
                    .fields(&format!("spec.nodeName={}", self.doomed.name)),
            )
            .await?;
        Ok(list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .count())
    }

    async fn restarted(&self, name: &str) -> anyhow::Result<bool> {
        Ok(self.restarted_at(name).await?.is_some())
    }
}

/// A ValidatingAdmissionPolicy (and binding) denying `expression`-false requests on
/// `resource` in `namespace`: a real admission denial, as a policy engine would give.
async fn deny(
    client: &kube::Client,
    name: &str,
    namespace: &str,
    (group, resource): (&str, &str),
    expression: &str,
) -> anyhow::Result<()> {
    let pp = PostParams::default();
    let policy = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": { "name": name },
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": namespace } },
                "resourceRules": [{
                    "apiGroups": [group], "apiVersions": ["*"],
                    "operations": ["UPDATE"], "resources": [resource],
                }],
            },
            "validations": [{ "expression": expression, "message": format!("denied by test policy {name}") }],
        },
    });
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": { "name": name },
        "spec": { "policyName": name, "validationActions": ["Deny"] },
    });
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .create(&pp, &serde_json::from_value(policy)?)
        .await?;
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .create(&pp, &serde_json::from_value(binding)?)
        .await?;
    Ok(())
}

/// Waits until a dry-run patch of `name` is denied: the policy is loaded.
async fn wait_denied(api: &Api<Deployment>, name: &str) -> anyhow::Result<()> {
    let patch = json!({ "metadata": { "annotations": { "spotkube.test/probe": "1" } } });
    wait_for(
        "the test policy in force",
        Duration::from_secs(30),
        || async {
            let result = api
                .patch(
                    name,
                    &PatchParams::default().dry_run(),
                    &Patch::Merge(&patch),
                )
                .await;
            Ok(
                matches!(result, Err(kube::Error::Api(ref s)) if s.code == 422 || s.code == 403)
                    .then_some(()),
            )
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn one_denied_workload_never_stops_the_others() -> anyhow::Result<()> {
    let s = Setup::start("safety-denied", &[("a", 1), ("b", 1), ("c", 3)]).await?;
    let test = &s.test;
    test.report(
        async {
            let deployments: Api<Deployment> = Api::namespaced(test.client.clone(), &test.name);
            deny(
                &test.client,
                &format!("{}-deny-a", test.name),
                &test.name,
                ("apps", "deployments"),
                "object.metadata.name != 'a'",
            )
            .await?;
            wait_denied(&deployments, "a").await?;
            let _controller = Cluster::shared()
                .await?
                .start_controller(s.options())
                .await?;
            let sent = s.interrupt().await?;
            let acted = Instant::now();
            s.wait_marked(sent, Duration::from_secs(10)).await?;
            // b surged and c's pods evicted although a's surge is denied (a's pod sorts first).
            wait_for("b surged", Duration::from_secs(10), || async {
                Ok(s.restarted("b").await?.then_some(()))
            })
            .await?;
            wait_for(
                "c evicted from the doomed node",
                Duration::from_secs(10),
                || async { Ok((s.pods_on_doomed("c").await? == 0).then_some(())) },
            )
            .await?;
            anyhow::ensure!(
                acted.elapsed() <= Duration::from_secs(10),
                "b and c protected after {:?}",
                acted.elapsed()
            );
            anyhow::ensure!(!s.restarted("a").await?, "a was changed despite the policy");
            // What spotkube touched carries its Events, the failure included.
            s.wait_event("Node", &s.doomed.name, "SpotInterruption")
                .await?;
            s.wait_event("Deployment", "b", "SurgeRestart").await?;
            s.wait_event("Deployment", "a", "SpotkubeActionFailed")
                .await?;
            Ok(())
        }
        .await,
    )
}

#[tokio::test]
async fn the_taint_needs_no_owner_lookup() -> anyhow::Result<()> {
    let s = Setup::start("safety-taint-first", &[("web", 1)]).await?;
    let test = &s.test;
    test.report(
        async {
            let cluster = Cluster::shared().await?;
            // The shipped RBAC without ReplicaSets: every owner lookup is forbidden.
            let kubeconfig = controller_kubeconfig(cluster, &test.client, &test.name, |rules| {
                for rule in rules.iter_mut() {
                    if let Some(resources) = rule.resources.as_mut() {
                        resources.retain(|r| r != "replicasets");
                    }
                }
                rules.retain(|r| r.resources.as_ref().is_none_or(|r| !r.is_empty()));
            })
            .await?;
            let controller = cluster
                .start_controller(
                    s.options()
                        .env("KUBECONFIG", kubeconfig.display().to_string()),
                )
                .await?;
            let sent = s.interrupt().await?;
            s.wait_marked(sent, Duration::from_secs(10)).await?;
            // Within 1 s of the message's receipt (the controller's own measure).
            let metrics = controller.metrics().await?;
            let sum = metric_value(&metrics, "spotkube_controller_receipt_to_taint_seconds_sum")
                .ok_or_else(|| anyhow::anyhow!("no receipt_to_taint in\n{metrics}"))?;
            let count = metric_value(
                &metrics,
                "spotkube_controller_receipt_to_taint_seconds_count",
            )
            .unwrap_or(0.0);
            anyhow::ensure!(
                count >= 1.0 && sum / count < 1.0,
                "receipt to taint: {sum} s over {count}"
            );
            s.wait_event("Node", &s.doomed.name, "SpotInterruption")
                .await?;
            Ok(())
        }
        .await,
    )
}

/// The value of the unlabelled sample `name` (not of a longer name it prefixes).
fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

async fn lease(test: &TestNamespace) -> anyhow::Result<Option<(String, jiff::Timestamp)>> {
    let lease = Api::<Lease>::namespaced(test.client.clone(), &test.name)
        .get_opt("spotkube-controller")
        .await?;
    Ok(lease
        .and_then(|l| l.spec)
        .and_then(|s| Some((s.holder_identity?, s.renew_time?.0))))
}

async fn readyz(program: &Program) -> anyhow::Result<u16> {
    Ok(reqwest::get(format!("{}/readyz", program.admin_url()))
        .await?
        .status()
        .as_u16())
}

#[tokio::test]
async fn a_leader_that_cannot_renew_stops_before_its_lease_expires() -> anyhow::Result<()> {
    let s = Setup::start("safety-renew", &[("web", 1)]).await?;
    let test = &s.test;
    test.report(
        async {
            let cluster = Cluster::shared().await?;
            let first = cluster
                .start_controller(s.options().arg("--identity=first"))
                .await?;
            wait_for("first leads", Duration::from_secs(20), || async {
                Ok(first.is_leader().await?.then_some(()))
            })
            .await?;
            let mut options = s.options().arg("--identity=second");
            options.no_ready_wait = true;
            let mut second = cluster.start_controller(options).await?;
            second.wait_ready(Duration::from_secs(30)).await?;
            // Only the first's Lease writes fail (renewals, and the release-and-lock its
        // lease manager tries once the Lease expired): the second may still take over.
            deny(
            &test.client,
            &format!("{}-deny-renewal", test.name),
            &test.name,
            ("coordination.k8s.io", "leases"),
            "!(has(object.spec.holderIdentity) && object.spec.holderIdentity == 'first')",
        )
        .await?;
            // In force once a renewal (a dry run of one) is refused; from then on the
        // Lease's renew time is the first's last.
        let leases: Api<Lease> = Api::namespaced(test.client.clone(), &test.name);
        let renewal = json!({ "spec": { "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string() } });
        wait_for("renewals refused", Duration::from_secs(30), || async {
            let result = leases
                .patch("spotkube-controller", &PatchParams::default().dry_run(), &Patch::Merge(&renewal))
                .await;
            Ok(matches!(result, Err(kube::Error::Api(ref s)) if s.code == 422 || s.code == 403)
                .then_some(()))
        })
        .await?;
        let (holder, last_renewal) = lease(test)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no Lease"))?;
        anyhow::ensure!(holder == "first", "holder {holder}");
        // Lease duration 3 s, renew deadline 2.5 s: the first stops acting...
        wait_for("first stops acting", Duration::from_secs(6), || async {
            Ok((!first.is_leader().await?).then_some(()))
        })
        .await?;
        let stopped = jiff::Timestamp::now();
        // ...before the second may take the Lease over: never two leaders.
        let acquired = wait_for("second takes over", Duration::from_secs(20), || async {
            let lease = leases.get("spotkube-controller").await?.spec.unwrap_or_default();
            let holds = lease.holder_identity.as_deref() == Some("second");
            Ok((holds && second.is_leader().await?)
                .then_some(lease.acquire_time.map(|t| t.0)))
        })
        .await?
        .ok_or_else(|| anyhow::anyhow!("the Lease has no acquireTime"))?;
        anyhow::ensure!(
            stopped < acquired,
            "the first stopped at {stopped} ({} after its last renewal), the second acquired at {acquired}",
            stopped.duration_since(last_renewal)
        );
        // Standby and leader are both ready.
            anyhow::ensure!(
                readyz(&first).await? == 200,
                "the former leader is not ready"
            );
            anyhow::ensure!(readyz(&second).await? == 200, "the new leader is not ready");
            // The interruption is handled once: one restart, one new ReplicaSet.
            let sent = s.interrupt().await?;
            s.wait_marked(sent, Duration::from_secs(15)).await?;
            wait_for("web surged", Duration::from_secs(15), || async {
                Ok(s.restarted("web").await?.then_some(()))
            })
            .await?;
            wait_for_rollout(&test.client, &test.name, "web", Duration::from_secs(60)).await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let sets = Api::<ReplicaSet>::namespaced(test.client.clone(), &test.name)
                .list(&ListParams::default().labels("app=web"))
                .await?
                .items
                .len();
            anyhow::ensure!(sets == 2, "{sets} ReplicaSets: web surged more than once");
            anyhow::ensure!(!first.is_leader().await?, "the first acts again");
            let restarts: Vec<_> = s
                .event_reasons("Deployment", "web")
                .await?
                .into_iter()
                .filter(|r| r == "SurgeRestart")
                .collect();
            anyhow::ensure!(restarts.len() == 1, "restart Events: {restarts:?}");
            Ok(())
        }
        .await,
    )
}

/// A moto of the test's own, alive until the test binary exits.
async fn private_moto() -> anyhow::Result<&'static Moto> {
    Ok(Box::leak(Box::new(Moto::start().await?)))
}

impl Setup {
    async fn node_marked(&self) -> anyhow::Result<bool> {
        let node = Api::<Node>::all(self.test.client.clone())
            .get(&self.doomed.name)
            .await?;
        Ok(node
            .metadata
            .annotations
            .is_some_and(|a| a.contains_key(INTERRUPTION)))
    }

    async fn restarted_at(&self, name: &str) -> anyhow::Result<Option<String>> {
        let deployment = Api::<Deployment>::namespaced(self.test.client.clone(), &self.test.name)
            .get(name)
            .await?;
        Ok(deployment
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .and_then(|a| a.get("kubectl.kubernetes.io/restartedAt").cloned()))
    }

    async fn wait_held(&self, action: &str) -> anyhow::Result<()> {
        wait_for(
            &format!("{action} held"),
            Duration::from_secs(30),
            || async {
                Ok(self
                    .moto
                    .held()
                    .await?
                    .iter()
                    .any(|a| a == action)
                    .then_some(()))
            },
        )
        .await?;
        Ok(())
    }

    /// After a second controller drained the queue: one restart, once.
    async fn assert_surged_once(&self, restarted_at: &str) -> anyhow::Result<()> {
        wait_for("main queue drained", Duration::from_secs(60), || async {
            Ok((self.moto.queue_depth(&self.queues.url).await? == 0).then_some(()))
        })
        .await?;
        wait_for_rollout(
            &self.test.client,
            &self.test.name,
            "web",
            Duration::from_secs(60),
        )
        .await?;
        let now = self.restarted_at("web").await?;
        anyhow::ensure!(
            now.as_deref() == Some(restarted_at),
            "restarted again: {restarted_at} then {now:?}"
        );
        let sets = Api::<ReplicaSet>::namespaced(self.test.client.clone(), &self.test.name)
            .list(&ListParams::default().labels("app=web"))
            .await?
            .items
            .len();
        anyhow::ensure!(sets == 2, "{sets} ReplicaSets: web surged more than once");
        Ok(())
    }
}

/// A private moto holding `action` at `at`, one single-replica `web` on the doomed
/// node, a controller, and a spot warning sent: returns once the call is held.
async fn held(
    prefix: &str,
    action: &str,
    at: HoldAt,
) -> anyhow::Result<(Setup, Program, jiff::Timestamp)> {
    let moto = private_moto().await?;
    let s = Setup::start_with(prefix, &[("web", 1)], moto).await?;
    moto.hold(action, at).await?;
    let controller = Cluster::shared()
        .await?
        .start_controller(s.options())
        .await?;
    let sent = s.interrupt().await?;
    s.wait_held(action).await?;
    Ok((s, controller, sent))
}

/// SIGKILL after the action is recorded and before the message is deleted: the
/// redelivered message finds the work done and changes nothing.
#[tokio::test]
async fn killed_between_its_action_and_the_delete_the_controller_acts_once() -> anyhow::Result<()> {
    let (s, mut controller, sent) =
        held("safety-kill-delete", "DeleteMessage", HoldAt::Request).await?;
    s.test.report(
        async {
            // The delete comes after the action: the Node is marked, web restarted.
            s.wait_marked(sent, Duration::from_secs(1)).await?;
            let restarted_at = s
                .restarted_at("web")
                .await?
                .ok_or_else(|| anyhow::anyhow!("web not restarted before the delete"))?;
            controller.process.kill();
            s.moto.release().await?;
            anyhow::ensure!(
                s.moto.queue_depth(&s.queues.url).await? == 1,
                "the message is still queued"
            );
            let _second = Cluster::shared()
                .await?
                .start_controller(s.options())
                .await?;
            s.assert_surged_once(&restarted_at).await
        }
        .await,
    )
}

/// SIGKILL after the message is received and before anything is done: the message
/// comes back after its visibility timeout and is acted on, once.
#[tokio::test]
async fn killed_between_receive_and_action_the_message_is_acted_on_once_after_redelivery()
-> anyhow::Result<()> {
    let (s, mut controller, sent) =
        held("safety-kill-receive", "ReceiveMessage", HoldAt::Answer).await?;
    s.test.report(
        async {
            controller.process.kill();
            s.moto.release().await?;
            anyhow::ensure!(
                !s.node_marked().await?,
                "acted on a message it never heard of"
            );
            anyhow::ensure!(s.restarted_at("web").await?.is_none(), "web restarted");
            let _second = Cluster::shared()
                .await?
                .start_controller(s.options())
                .await?;
            s.wait_marked(sent, Duration::from_secs(30)).await?;
            let restarted_at = wait_for("web restarted", Duration::from_secs(15), || async {
                s.restarted_at("web").await
            })
            .await?;
            s.assert_surged_once(&restarted_at).await
        }
        .await,
    )
}

/// A validating webhook for the Nodes labelled `spotkube.test/slow=<namespace>` only,
/// that never answers the first write marking such a Node: it waits out the webhook's
/// timeout (failurePolicy Ignore lets it through then). The listener accepts that
/// connection and never speaks, so the API server's TLS handshake hangs.
async fn slow_node_writes(
    client: &kube::Client,
    namespace: &str,
    ca_pem: &str,
    timeout_seconds: i32,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use base64::Engine;
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    // One call is held, then the listener closes and later calls fail fast (and are
    // ignored): a Node write waiting 8 s would otherwise often lose its
    // resourceVersion race to kwok's status updates and be retried, slowly, again.
    let silent = tokio::spawn(async move {
        if let Ok((socket, _)) = listener.accept().await {
            drop(listener);
            std::future::pending::<()>().await;
            drop(socket);
        }
    });
    let config = json!({
        "metadata": { "name": format!("{namespace}-slow-nodes") },
        "webhooks": [{
            "name": "slow.spotkube.test",
            "clientConfig": {
                "url": format!("https://127.0.0.1:{port}/slow"),
                "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
            },
            "rules": [{ "apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
                        "resources": ["nodes"] }],
            "objectSelector": { "matchLabels": { "spotkube.test/slow": namespace } },
            // Only spotkube's mark: the node lifecycle controller writes Nodes too.
            "matchConditions": [{
                "name": "spotkube-mark",
                "expression": "has(object.metadata.annotations) && 'spotkube.io/interruption' in object.metadata.annotations",
            }],
            "failurePolicy": "Ignore",
            "timeoutSeconds": timeout_seconds,
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
        }],
    });
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(config)?)
        .await?;
    Ok(silent)
}

/// Two messages, the first about a node whose first write is slowed to 8 s: the
/// second node is marked at once, not after the first message is done.
#[tokio::test]
async fn a_slow_message_never_delays_another_nodes_taint() -> anyhow::Result<()> {
    let s = Setup::start("safety-slow", &[]).await?;
    let test = &s.test;
    test.report(
        async {
            let cluster = Cluster::shared().await?;
            let slow = FakeNode::spot("m7g.large", "us-east-1c")
                .with_label(POOL, &test.name)
                .with_label("spotkube.test/slow", &test.name);
            slow.create(&test.client).await?;
            let _silent =
                slow_node_writes(&test.client, &test.name, &cluster.pki.ca.files.cert_pem, 8)
                    .await?;
            // The slow message needs its 8 s: a deadline and visibility timeout above it.
            let options = s
                .moto
                .controller_options(&s.queues.url, &test.name)
                .arg("--visibility-timeout=30s")
                .arg("--message-deadline=20s");
            let _controller = cluster.start_controller(options).await?;
            let nodes: Api<Node> = Api::all(test.client.clone());
            let marked = |name: String| {
                let nodes = nodes.clone();
                async move {
                    let node = nodes.get(&name).await?;
                    Ok::<_, anyhow::Error>(
                        node.metadata
                            .annotations
                            .is_some_and(|a| a.contains_key(INTERRUPTION)),
                    )
                }
            };
            let started = Instant::now();
            s.moto
                .send_event(
                    &s.queues.url,
                    EventKind::SpotInterruptionWarning,
                    &slow.instance_id,
                    jiff::Timestamp::now(),
                )
                .await?;
            // The slow node's message is in progress (its taint waits on the webhook)...
            tokio::time::sleep(Duration::from_secs(1)).await;
            let sent = s.interrupt().await?;
            // ...and the other node's is not held behind it.
            s.wait_marked(sent, Duration::from_secs(4)).await?;
            let fast = started.elapsed();
            anyhow::ensure!(
                !marked(slow.name.clone()).await?,
                "the slow node was not slowed"
            );
            wait_for("the slow node marked", Duration::from_secs(30), || async {
                Ok(marked(slow.name.clone()).await?.then_some(()))
            })
            .await?;
            anyhow::ensure!(
                started.elapsed() > fast,
                "the slow node ({:?}) was marked before the other ({fast:?})",
                started.elapsed()
            );
            Ok(())
        }
        .await,
    )
}
