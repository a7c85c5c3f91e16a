//! Helpers of the fault matrix (issue 14): the shared "nothing lost" check, silent
//! admission webhooks that hold one API write (to stop a program at a precise step),
//! and small readers of the state spotkube leaves in the API.
//!
//! "Nothing lost" means: every SQS message was acted on or is in the DLQ (visible + in
//! flight on the queue = 0 at the end, the DLQ holding what the test expects), every
//! protected Service kept at least one ready endpoint throughout ([`EndpointWatch`]),
//! every scaled surge was scaled back, and each event surged each single-replica
//! workload exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

use crate::aws::{Moto, Queues};
use crate::{EndpointWatch, RigError, wait_for};

/// The label of a test's own nodes (its pods select it).
pub const POOL: &str = "spotkube.test/pool";
/// spotkube's taint and notice key on a Node.
pub const INTERRUPTION: &str = "spotkube.io/interruption";
/// The pod-template annotation of a rollout restart.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// `name` from the environment as a count, `default` when unset or malformed.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// How many runs of each fault (`SPOTKUBE_FAULT_RUNS`, 1 by default; `make faults`: 20).
pub fn runs() -> usize {
    env_count("SPOTKUBE_FAULT_RUNS", 1).max(1)
}

fn kube_err(context: &str, e: impl std::fmt::Display) -> RigError {
    RigError::Kube(format!("{context}: {e}"))
}

/// A PodDisruptionBudget `name` over `app=<app>` with `maxUnavailable`.
pub async fn create_pdb(
    client: &kube::Client,
    namespace: &str,
    app: &str,
    max_unavailable: i32,
) -> Result<(), RigError> {
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": { "name": app },
        "spec": {
            "maxUnavailable": max_unavailable,
            "selector": { "matchLabels": { "app": app } },
        },
    }))
    .map_err(|e| kube_err("pdb", e))?;
    Api::<PodDisruptionBudget>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pdb)
        .await
        .map_err(|e| kube_err(&format!("create pdb {namespace}/{app}"), e))?;
    Ok(())
}

/// The two workloads of the zero-gap scenarios on the test's pool (`POOL=<namespace>`):
/// `web` (1 replica) and `api` (`api_replicas`, PDB maxUnavailable 1), each with its
/// Service, rolled out with every endpoint ready.
pub async fn web_and_api(
    client: &kube::Client,
    namespace: &str,
    api_replicas: i32,
) -> Result<(), RigError> {
    for (name, replicas) in [("web", 1), ("api", api_replicas)] {
        crate::workloads::create_on_pool(client, namespace, name, replicas, (POOL, namespace))
            .await?;
    }
    create_pdb(client, namespace, "api", 1).await?;
    for (name, replicas) in [("web", 1), ("api", api_replicas)] {
        crate::wait_for_rollout(client, namespace, name, Duration::from_secs(60)).await?;
        crate::wait_for_ready_endpoints(
            client,
            namespace,
            name,
            replicas as usize,
            Duration::from_secs(30),
        )
        .await?;
    }
    Ok(())
}

/// Whether Node `name` carries spotkube's NoSchedule taint, its cordon and its notice.
pub async fn node_marked(client: &kube::Client, name: &str) -> Result<bool, RigError> {
    let node = Api::<Node>::all(client.clone())
        .get(name)
        .await
        .map_err(|e| kube_err(&format!("get node {name}"), e))?;
    Ok(is_marked(&node))
}

/// Tainted `NoSchedule`, cordoned and annotated by spotkube.
pub fn is_marked(node: &Node) -> bool {
    let spec = node.spec.clone().unwrap_or_default();
    let tainted = spec
        .taints
        .unwrap_or_default()
        .iter()
        .any(|t| t.key == INTERRUPTION && t.effect == "NoSchedule");
    let noticed = node
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(INTERRUPTION));
    tainted && noticed && spec.unschedulable == Some(true)
}

/// Whether Node `name` carries any of spotkube's marks (taint or notice).
pub async fn node_touched(client: &kube::Client, name: &str) -> Result<bool, RigError> {
    let node = Api::<Node>::all(client.clone())
        .get(name)
        .await
        .map_err(|e| kube_err(&format!("get node {name}"), e))?;
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == INTERRUPTION));
    let noticed = node
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(INTERRUPTION));
    Ok(tainted || noticed)
}

/// Deployment `namespace/name`.
pub async fn deployment(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Deployment, RigError> {
    Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|e| kube_err(&format!("get deployment {namespace}/{name}"), e))
}

/// The pod template's `restartedAt`, when a rollout restart happened.
pub fn restarted_at(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(RESTARTED_AT).cloned())
}

/// The Deployment's own annotation `key`.
pub fn annotation(d: &Deployment, key: &str) -> Option<String> {
    d.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key).cloned())
}

/// Whether the Deployment shows a surge (restart or scaled) of any event.
pub fn surged(d: &Deployment) -> bool {
    annotation(d, "spotkube.io/reason").is_some() || restarted_at(d).is_some()
}

/// How many Events with `reason` are recorded on `kind/name` in `namespace`, counting
/// each Event's series (a recorder folds repeats into one Event with a count).
pub async fn event_count(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    name: &str,
    reason: &str,
) -> Result<usize, RigError> {
    let events = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| kube_err("list events", e))?;
    Ok(events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
        })
        .map(|e| e.series.as_ref().map_or(1, |s| s.count.max(1) as usize))
        .sum())
}

/// Pods of `app=<app>` on Node `node` that are not terminating.
pub async fn pods_on(
    client: &kube::Client,
    namespace: &str,
    app: &str,
    node: &str,
) -> Result<usize, RigError> {
    let list = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(
            &ListParams::default()
                .labels(&format!("app={app}"))
                .fields(&format!("spec.nodeName={node}")),
        )
        .await
        .map_err(|e| kube_err("list pods", e))?;
    Ok(list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .count())
}

/// Ready endpoints of Service `service` served from any Node but `node`, as its
/// EndpointSlices say: what clients reach once `node` is gone (a pod can be Ready a
/// moment before the EndpointSlice controller publishes it).
pub async fn ready_endpoints_off(
    client: &kube::Client,
    namespace: &str,
    service: &str,
    node: &str,
) -> Result<usize, RigError> {
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .map_err(|e| kube_err("list endpointslices", e))?;
    Ok(slices
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| e.node_name.as_deref().is_some_and(|n| n != node))
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
        .count())
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// What a PodDisruptionBudget and its pods look like now, for a failure message: a
/// stalled drain is usually a budget that allows no disruption, and this says why.
pub async fn pdb_report(client: &kube::Client, namespace: &str, app: &str) -> String {
    let pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), namespace)
        .get_opt(app)
        .await;
    let status = match pdb {
        Ok(Some(pdb)) => serde_json::to_string(&pdb.status).unwrap_or_default(),
        Ok(None) => "no PDB".into(),
        Err(e) => format!("PDB unreadable: {e}"),
    };
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .map(|list| {
            list.items
                .iter()
                .map(|p| {
                    let ready = pod_ready(p);
                    format!(
                        "{} on {} ready={ready} deleting={}",
                        p.metadata.name.as_deref().unwrap_or("?"),
                        p.spec
                            .as_ref()
                            .and_then(|s| s.node_name.as_deref())
                            .unwrap_or("-"),
                        p.metadata.deletion_timestamp.is_some()
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_else(|e| format!("pods unreadable: {e}"));
    format!("PDB {namespace}/{app} status {status}; pods: {pods}")
}

/// The value of the unlabelled sample `name` in a Prometheus text exposition.
pub fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The `q` quantile of histogram `name` (unlabelled) as the upper bound of the bucket
/// it falls in: `(bound, count)`; `None` without observations.
pub fn histogram_quantile(metrics: &str, name: &str, q: f64) -> Option<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, value) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, value.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = (q * total).ceil();
    buckets
        .iter()
        .find(|(_, count)| *count >= rank)
        .map(|(le, _)| (*le, total))
}

/// The `q` quantile (nearest rank) of `samples`.
pub fn quantile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A validating webhook (failurePolicy Fail) for the requests of `rules` in one
/// namespace that never answers the first one it gets: the API server's TLS handshake
/// with it hangs, so that write stays in flight (a program writing it is stopped at that
/// step). Later calls, and the held one once [`SilentWebhook::release`] runs, fail fast:
/// the writes are denied, never half-done.
pub struct SilentWebhook {
    name: String,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentWebhook {
    /// Registers it for `rules` (admissionregistration rules as JSON) in `namespace`,
    /// only where `condition` (CEL, a `matchConditions` expression) holds.
    pub async fn register(
        client: &kube::Client,
        name: &str,
        namespace: &str,
        ca_pem: &str,
        rules: serde_json::Value,
        condition: Option<&str>,
    ) -> Result<SilentWebhook, RigError> {
        use base64::Engine;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| RigError::Http(e.to_string()))?;
        let port = listener
            .local_addr()
            .map_err(|e| RigError::Http(e.to_string()))?
            .port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            if let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(listener);
                std::future::pending::<()>().await;
                drop(socket);
            }
        });
        let mut webhook = json!({
            "name": "silent.spotkube.test",
            "clientConfig": {
                "url": format!("https://127.0.0.1:{port}/silent"),
                "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
            },
            "rules": rules,
            "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": namespace } },
            "failurePolicy": "Fail",
            "timeoutSeconds": 30,
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
        });
        if let Some(condition) = condition {
            webhook["matchConditions"] = json!([{ "name": "held", "expression": condition }]);
        }
        let config = json!({ "metadata": { "name": name }, "webhooks": [webhook] });
        Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(config).map_err(|e| kube_err("webhook", e))?,
            )
            .await
            .map_err(|e| kube_err(&format!("create webhook {name}"), e))?;
        Ok(SilentWebhook {
            name: name.to_string(),
            accepted,
            task,
        })
    }

    /// Whether the API server has called it (a write is held).
    pub fn holding(&self) -> bool {
        self.accepted.load(Ordering::SeqCst) > 0
    }

    /// Waits until a write is held.
    pub async fn wait_holding(&self, timeout: Duration) -> Result<(), RigError> {
        wait_for(
            &format!("a write held by {}", self.name),
            timeout,
            || async { Ok(self.holding().then_some(())) },
        )
        .await
    }

    /// Fails the held write (its connection closes) and removes the webhook.
    pub async fn release(self, client: &kube::Client) -> Result<(), RigError> {
        self.task.abort();
        let _ = self.task.await;
        Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await
            .map_err(|e| kube_err(&format!("delete webhook {}", self.name), e))?;
        Ok(())
    }
}

/// What a single-replica workload is expected to have been given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// A rollout restart (`SurgeRestart`): one new ReplicaSet.
    Restart,
    /// A scaled surge (`SurgeScale`), scaled back once its hold ends (`SurgeEnded`).
    Scale,
    /// Evicted through its PDB: no surge at all.
    Evict,
    /// Rollout restarts, one or more: where a replacement may land on a node whose own
    /// warning comes later (a mass interruption), that event restarts it again.
    RestartPerEvent,
}

/// The "nothing lost" ledger of one run: Services watched from before the fault until
/// the end, and what each workload is expected to have been given.
pub struct NothingLost {
    client: kube::Client,
    namespace: String,
    watches: Vec<(String, EndpointWatch)>,
    workloads: BTreeMap<String, Protection>,
}

/// What the termination of Node `name`'s instance does (kwok keeps no instance): its
/// pods go at once (grace 0: no kubelet is left to stop them) and then the Node. A
/// scaled surge is kept while a pod of its Deployment is on its marked Node and ends
/// once the Node is gone, so [`NothingLost::check`]'s "scaled back" needs this first.
pub async fn terminate_node(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::all(client.clone());
    for pod in pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={name}")))
        .await?
    {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let result = Api::<Pod>::namespaced(client.clone(), &namespace)
            .delete(
                pod.metadata.name.as_deref().unwrap_or_default(),
                &DeleteParams::default().grace_period(0),
            )
            .await;
        match result {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    match Api::<Node>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What [`NothingLost::check`] found (all of it passed).
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    /// The smallest count of ready endpoints any watched Service had.
    pub min_ready: usize,
    /// Samples taken over all Services.
    pub samples: usize,
    /// Surges seen, all once.
    pub surges: usize,
    /// Messages on the queue and its DLQ at the end.
    pub queued: u64,
    pub dead_lettered: u64,
}

impl NothingLost {
    /// Starts watching the Service of every workload (a Service named like it).
    pub fn watch(
        client: &kube::Client,
        namespace: &str,
        workloads: &[(&str, Protection)],
    ) -> NothingLost {
        NothingLost {
            client: client.clone(),
            namespace: namespace.to_string(),
            watches: workloads
                .iter()
                .map(|(name, _)| {
                    (
                        name.to_string(),
                        EndpointWatch::start(client, namespace, name),
                    )
                })
                .collect(),
            workloads: workloads
                .iter()
                .map(|(name, p)| (name.to_string(), *p))
                .collect(),
        }
    }

    /// Waits (up to `timeout`) for the queue to drain, every scaled surge to be scaled
    /// back and every surge's rollout to finish, then checks: queue visible + in flight
    /// = 0, the DLQ holds `dead_letters`, every surge happened exactly once, and no
    /// watched Service ever had 0 ready endpoints.
    pub async fn check(
        self,
        moto: &Moto,
        queues: &Queues,
        dead_letters: u64,
        timeout: Duration,
    ) -> anyhow::Result<Ledger> {
        let client = &self.client;
        let ns = &self.namespace;
        // Empty for longer than a visibility timeout (6 s in these tests): a message whose
        // receiver died reappears only once its timeout runs out, and moto counts it
        // neither visible nor in flight for a moment around that point.
        let empty_since = std::sync::Mutex::new(None::<std::time::Instant>);
        wait_for("queue drained (empty for 8 s)", timeout, || async {
            let depth = moto.queue_depth(&queues.url).await?;
            let mut since = empty_since.lock().expect("empty_since");
            if depth > 0 {
                *since = None;
                return Ok(None);
            }
            let since = *since.get_or_insert_with(std::time::Instant::now);
            Ok((since.elapsed() >= Duration::from_secs(8)).then_some(()))
        })
        .await?;
        for (name, protection) in &self.workloads {
            let d = deployment(client, ns, name).await?;
            match protection {
                Protection::Restart | Protection::RestartPerEvent => {
                    anyhow::ensure!(restarted_at(&d).is_some(), "{name} never restarted");
                }
                Protection::Scale => {
                    anyhow::ensure!(
                        annotation(&d, "spotkube.io/reason").is_some(),
                        "{name} never surged"
                    );
                    wait_for(&format!("{name} scaled back"), timeout, || async {
                        let d = deployment(client, ns, name).await?;
                        let replicas = d.spec.as_ref().and_then(|s| s.replicas);
                        Ok((replicas == Some(1)
                            && annotation(&d, "spotkube.io/surge-from").is_none())
                        .then_some(()))
                    })
                    .await?;
                }
                Protection::Evict => {
                    anyhow::ensure!(!surged(&d), "{name} (multi-replica) was surged");
                }
            }
            crate::wait_for_rollout(client, ns, name, timeout).await?;
        }
        // Settled: a late duplicate would have shown by now (the scale-back interval
        // and visibility timeouts of these tests are a few seconds).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut ledger = Ledger {
            min_ready: usize::MAX,
            ..Ledger::default()
        };
        for (name, protection) in &self.workloads {
            if *protection == Protection::RestartPerEvent {
                // Events of one kind on one object are folded into a series (the note
                // of the first kept), so "once per event" is not readable from them
                // here: at least one restart; the kill rows check "exactly once".
                let restarts = event_count(client, ns, "Deployment", name, "SurgeRestart").await?;
                anyhow::ensure!(restarts >= 1, "{name}: never restarted");
                ledger.surges += restarts;
                continue;
            }
            let (reason, expected) = match protection {
                Protection::Restart => ("SurgeRestart", 1),
                Protection::Scale => ("SurgeScale", 1),
                Protection::Evict | Protection::RestartPerEvent => ("SurgeRestart", 0),
            };
            let events = event_count(client, ns, "Deployment", name, reason).await?;
            anyhow::ensure!(
                events == expected,
                "{name}: {events} {reason} Events, expected {expected}"
            );
            if *protection == Protection::Restart {
                let sets = Api::<ReplicaSet>::namespaced(client.clone(), ns)
                    .list(&ListParams::default().labels(&format!("app={name}")))
                    .await?
                    .items
                    .len();
                anyhow::ensure!(sets == 2, "{name}: {sets} ReplicaSets, restarted twice");
            }
            if *protection == Protection::Scale {
                let ended = event_count(client, ns, "Deployment", name, "SurgeEnded").await?;
                anyhow::ensure!(ended == 1, "{name}: {ended} SurgeEnded Events");
            }
            ledger.surges += expected;
        }
        let queued = moto.queue_depth(&queues.url).await?;
        let dead_lettered = moto.queue_depth(&queues.dlq_url).await?;
        anyhow::ensure!(queued == 0, "{queued} messages left on the queue");
        anyhow::ensure!(
            dead_lettered == dead_letters,
            "{dead_lettered} messages in the DLQ, expected {dead_letters}"
        );
        ledger.queued = queued;
        ledger.dead_lettered = dead_lettered;
        for (name, watch) in self.watches {
            let (min, samples) = watch.finish().await;
            anyhow::ensure!(samples > 0, "{name}: no endpoint samples");
            anyhow::ensure!(min >= 1, "{name}: a gap with {min} ready endpoints");
            ledger.min_ready = ledger.min_ready.min(min);
            ledger.samples += samples;
        }
        Ok(ledger)
    }
}
