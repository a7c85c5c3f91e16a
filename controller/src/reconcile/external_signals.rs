//! External disruption signals: a watch on Nodes (leader only) that recognises what the
//! node handler a cluster already runs does to a Node (NTH's taints and action label,
//! Cluster Autoscaler's `ToBeDeletedByClusterAutoscaler`, Karpenter's
//! `karpenter.sh/disrupted`, `node.kubernetes.io/unreachable` on a spot node, and with
//! `--external-signal-cordon` a cordoned spot node: [`crate::decide::external`]) and
//! turns a new one into the same plan an EventBridge event gets: a notice on the Node
//! naming the source, the surge of the single-replica workloads on that Node only, and
//! evictions where the tool does not drain the node itself. No SQS message is needed.
//!
//! One node, one plan: the SQS intake and this loop decide on a Node under one lock
//! ([`Actor::lock_node`]) from a fresh read, so whichever comes second finds the first
//! one's notice and keeps its key. What the plan leaves running (evictions retried,
//! surges of workloads that arrive late) is the drain reconcile's, as for any notice.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use spotkube_shared::admin::Readiness;
use spotkube_shared::annotations::{INTERRUPTION, InterruptionNotice};
use spotkube_shared::watch::{self, WatchIndex};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::act::{Actor, guard};
use crate::decide::external::{self, Signal, SignalKind};
use crate::decide::{self, Action};
use crate::error::{Error, KubeResultExt, Result};
use crate::view;

/// How soon a failed Node is tried again, and how often expired eviction guards are
/// looked for.
const RETRY_EVERY: Duration = Duration::from_secs(10);

/// The loop's settings (`--external-signal*`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub signals: external::Settings,
    /// `--external-signal-node-selector`.
    pub node_selector: Option<String>,
}

/// What the index keeps of a Node.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub signal: Option<Signal>,
    pub notice: Option<InterruptionNotice>,
}

impl Seen {
    fn of(node: &Node, settings: &external::Settings) -> Seen {
        Seen {
            signal: external::signal(node, settings),
            notice: node
                .annotations()
                .get(INTERRUPTION)
                .and_then(|v| InterruptionNotice::from_annotation(v).ok()),
        }
    }

    /// Whether the loop has something to do: a signal the notice does not reflect
    /// yet, or an external notice whose signal is gone.
    pub fn needs_attention(&self) -> bool {
        match (&self.signal, &self.notice) {
            (Some(_), None) => true,
            (Some(signal), Some(notice)) => {
                !notice.is_imminent() && signal.kind != SignalKind::Rebalance
            }
            (None, Some(notice)) => notice
                .source
                .as_deref()
                .and_then(external::Source::parse)
                .is_some(),
            (None, None) => false,
        }
    }
}

#[derive(Default)]
struct Inner {
    nodes: HashMap<String, Seen>,
    pending: BTreeSet<String>,
}

/// Every watched Node's signal and notice; fed by the shared watch driver.
#[derive(Clone)]
pub struct Signals {
    settings: external::Settings,
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
    metrics: crate::metrics::Metrics,
}

impl Signals {
    pub fn new(settings: external::Settings, metrics: crate::metrics::Metrics) -> Signals {
        Signals {
            settings,
            inner: Arc::default(),
            changed: Arc::default(),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("external signals lock")
    }

    /// The Nodes that need attention, now taken off the pending list.
    pub fn take_pending(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().pending)
            .into_iter()
            .collect()
    }

    fn retry(&self, name: &str) {
        self.lock().pending.insert(name.to_string());
    }

    /// Counts a signal new on a Node (not the same one seen again).
    fn count(&self, before: Option<&Seen>, now: &Seen) {
        let key = |s: &Signal| (s.source, s.kind);
        let old = before.and_then(|s| s.signal.as_ref()).map(key);
        if let Some(signal) = &now.signal
            && old != Some(key(signal))
        {
            self.metrics
                .external_signal(signal.source.as_str(), signal.kind.as_str());
            tracing::info!(source = %signal.source, kind = signal.kind.as_str(), seen = %signal.seen, "external disruption signal");
        }
    }
}

impl WatchIndex<Node> for Signals {
    type Entry = (String, Seen);

    fn entry(&self, node: &Node) -> Option<(String, Seen)> {
        Some((node.metadata.name.clone()?, Seen::of(node, &self.settings)))
    }

    fn reset(&self, entries: Vec<(String, Seen)>) {
        let mut inner = self.lock();
        for (name, seen) in &entries {
            self.count(inner.nodes.get(name), seen);
        }
        inner.pending = entries
            .iter()
            .filter(|(_, seen)| seen.needs_attention())
            .map(|(name, _)| name.clone())
            .collect();
        inner.nodes = entries.into_iter().collect();
        drop(inner);
        self.changed.notify_one();
    }

    fn apply(&self, node: &Node) {
        let Some((name, seen)) = self.entry(node) else {
            return;
        };
        let mut inner = self.lock();
        self.count(inner.nodes.get(&name), &seen);
        let attention = seen.needs_attention();
        if attention {
            inner.pending.insert(name.clone());
        } else {
            inner.pending.remove(&name);
        }
        inner.nodes.insert(name, seen);
        drop(inner);
        if attention {
            self.changed.notify_one();
        }
    }

    fn delete(&self, node: &Node) {
        if let Some(name) = node.metadata.name.as_deref() {
            let mut inner = self.lock();
            inner.nodes.remove(name);
            inner.pending.remove(name);
        }
    }
}

/// Watches Nodes until `stop` and acts on each new external signal.
pub async fn run(actor: Actor, settings: Settings, stop: CancellationToken) {
    tracing::info!(
        sources = ?settings.signals.sources,
        cordon = settings.signals.cordon,
        selector = ?settings.node_selector,
        "watching Nodes for external disruption signals"
    );
    let index = Signals::new(settings.signals.clone(), actor.ctx.metrics.clone());
    let synced = Readiness::default().gate("external signals");
    let mut config = watcher::Config::default();
    if let Some(selector) = &settings.node_selector {
        config = config.labels(selector);
    }
    let nodes: Api<Node> = Api::all(actor.ctx.client.clone());
    let watch = watch::watch(nodes, config, &index, &synced, "external signals");
    let mut watch = std::pin::pin!(watch);
    let guards = settings.signals.sources.iter().any(|s| s.drains_itself());
    let mut sweep = tokio::time::interval(RETRY_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            // Never ends: the driver retries watch errors with backoff.
            _ = &mut watch => break,
            _ = index.changed.notified() => {}
            _ = sweep.tick() => {
                if guards && let Err(error) = guard::sweep(&actor, Timestamp::now()).await {
                    tracing::warn!(%error, "looking for expired eviction guards failed");
                }
            }
        }
        if !synced.is_open() {
            continue;
        }
        for name in index.take_pending() {
            let span = tracing::info_span!("external-signal", node = %name);
            if let Err(error) = handle(&actor, &settings.signals, &name)
                .instrument(span)
                .await
            {
                tracing::warn!(node = %name, %error, "acting on an external signal failed; retried");
                index.retry(&name);
            }
        }
    }
}

/// Decides on Node `name` from a fresh read, under the Node's lock.
async fn handle(actor: &Actor, settings: &external::Settings, name: &str) -> Result<()> {
    let _held = actor.lock_node(name).await;
    let received = Instant::now();
    let api: Api<Node> = Api::all(actor.ctx.client.clone());
    let Some(node) = api
        .get_opt(name)
        .await
        .kube("get", format_args!("node/{name}"))?
    else {
        return Ok(());
    };
    let signal = external::signal(&node, settings);
    let node_view = view::node_view(&node);
    let Some(signal) = signal else {
        let clean = external::cleared(&node_view, None);
        if !clean.is_empty() {
            tracing::info!("the external signal is gone: spotkube's marks go");
        }
        return actor.execute_on(&node, clean, received).await;
    };
    let now = Timestamp::now();
    let key = external::key(&signal, name, node.uid().as_deref().unwrap_or_default());
    let marks = external::marks(&signal, &node_view, &key, now, settings.default_deadline);
    if marks.is_empty() {
        return Ok(()); // marked already (the drain reconcile protects from there)
    }
    let pods = actor.ctx.pods_on(name).await?;
    if !pods.iter().any(|p| p.policy.enabled && !p.done) {
        tracing::debug!("no opted-in pod on the node: nothing to protect");
        return Ok(());
    }
    let marked = node_view.after(&marks);
    let protect = decide::drain(&marked, &pods, now);
    tracing::info!(source = %signal.source, kind = signal.kind.as_str(), seen = %signal.seen, key, actions = protect.len(), "protecting the workloads of a node another tool drains");
    // Guards and surges before the notice: once the notice is on the Node, what it
    // promises is in place. Both halves are attempted whatever the other did; a retry
    // decides again under the same key, so nothing surges twice.
    let protecting = actor.execute(name, protect, received).await;
    let marking = actor.execute(name, marks, received).await;
    Error::collect(
        [protecting, marking]
            .into_iter()
            .filter_map(Result::err)
            .collect(),
        2,
    )
}

/// The actions of one signal on one Node, as [`handle`] decides them from `node` and
/// `pods` (for tests).
pub fn plan(
    signal: &Signal,
    node: &decide::NodeView,
    key: &str,
    pods: &[decide::PodView],
    now: Timestamp,
    default_deadline: Duration,
) -> Vec<Action> {
    let marks = external::marks(signal, node, key, now, default_deadline);
    if marks.is_empty() || !pods.iter().any(|p| p.policy.enabled && !p.done) {
        return Vec::new();
    }
    let mut actions = decide::drain(&node.after(&marks), pods, now);
    actions.extend(marks);
    actions
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};
    use kube::api::ObjectMeta;
    use spotkube_shared::annotations::{InterruptionKind, Surge};
    use spotkube_shared::policy::Policy;

    use super::*;
    use crate::decide::{DeploymentView, NodeView, Owner, PodView, RolloutStrategy};

    fn node(taint: Option<&str>, notice: Option<&InterruptionNotice>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n".into()),
                labels: Some([("karpenter.sh/capacity-type".into(), "spot".into())].into()),
                annotations: notice.map(|n| [(INTERRUPTION.into(), n.to_annotation())].into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: taint.map(|key| {
                    vec![Taint {
                        key: key.into(),
                        effect: "NoSchedule".into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn notice(source: Option<&str>, kind: InterruptionKind) -> InterruptionNotice {
        InterruptionNotice {
            kind,
            deadline: None,
            event_id: Some("k".into()),
            drain_from: None,
            source: source.map(Into::into),
        }
    }

    fn seen(taint: Option<&str>, notice: Option<&InterruptionNotice>) -> Seen {
        Seen::of(&node(taint, notice), &external::Settings::default())
    }

    #[test]
    fn attention_goes_to_new_signals_and_to_external_notices_whose_signal_is_gone() {
        assert!(seen(Some(external::NTH_SPOT_ITN), None).needs_attention());
        assert!(!seen(None, None).needs_attention());
        let sqs = notice(None, InterruptionKind::SpotInterruption);
        // Marked by an EventBridge event: the drain reconcile has it.
        assert!(!seen(Some(external::NTH_SPOT_ITN), Some(&sqs)).needs_attention());
        assert!(!seen(None, Some(&sqs)).needs_attention());
        let nth = notice(Some("nth"), InterruptionKind::SpotInterruption);
        assert!(!seen(Some(external::NTH_SPOT_ITN), Some(&nth)).needs_attention());
        assert!(seen(None, Some(&nth)).needs_attention(), "signal gone");
        // A rebalance notice is upgraded by a drain, not by another rebalance.
        let rebalance = notice(Some("nth"), InterruptionKind::RebalanceRecommendation);
        assert!(seen(Some(external::KARPENTER_DISRUPTED), Some(&rebalance)).needs_attention());
        assert!(!seen(Some(external::NTH_REBALANCE), Some(&rebalance)).needs_attention());
    }

    #[test]
    fn signals_are_counted_once_per_node_and_kind() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = crate::metrics::Metrics::register(&mut registry);
        let index = Signals::new(external::Settings::default(), metrics);
        index.apply(&node(Some(external::KARPENTER_DISRUPTED), None));
        index.apply(&node(Some(external::KARPENTER_DISRUPTED), None));
        assert_eq!(index.take_pending(), vec!["n".to_string()]);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                r#"spotkube_controller_external_signals_total{source="karpenter",kind="planned"} 1"#
            ),
            "{text}"
        );
    }

    fn web(replicas: i32) -> PodView {
        PodView {
            namespace: "shop".into(),
            name: "web-1".into(),
            owner: Owner::Deployment(DeploymentView {
                name: "web".into(),
                replicas,
                strategy: RolloutStrategy::RollingUpdate {
                    max_surge: None,
                    max_unavailable: None,
                },
                hpa_managed: false,
                surged_for: None,
                surge_from: None,
            }),
            policy: Policy {
                enabled: true,
                surge: Surge::Auto,
                ..Policy::default()
            },
            done: false,
        }
    }

    fn view() -> NodeView {
        NodeView {
            name: "n".into(),
            unschedulable: true,
            taint: None,
            notice: None,
        }
    }

    fn now() -> Timestamp {
        "2026-11-20T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_tool_that_drains_gets_guarded_surges_and_no_evictions_from_spotkube() {
        let signal = external::signal(
            &node(Some(external::NTH_SPOT_ITN), None),
            &external::Settings::default(),
        )
        .unwrap();
        let pods = [
            web(1),
            PodView {
                name: "api-1".into(),
                ..web(3)
            },
        ];
        let actions = plan(
            &signal,
            &view(),
            "nth/n/1",
            &pods,
            now(),
            Duration::from_secs(120),
        );
        let labels: Vec<_> = actions
            .iter()
            .map(|a| match a {
                Action::GuardEvictions { name, .. } => format!("guard {name}"),
                Action::RestartDeployment { name, reason, .. } => {
                    format!("restart {name} {reason}")
                }
                Action::MarkNode { notice, .. } => format!("mark {:?}", notice.source),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            labels,
            ["guard web", "restart web nth/n/1", "mark Some(\"nth\")"]
        );
    }

    #[test]
    fn a_signal_nobody_drains_for_gets_spotkubes_evictions() {
        let settings = external::Settings {
            cordon: true,
            ..Default::default()
        };
        let mut cordoned = node(None, None);
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        let signal = external::signal(&cordoned, &settings).unwrap();
        let pods = [
            web(1),
            PodView {
                name: "api-1".into(),
                ..web(3)
            },
        ];
        let actions = plan(
            &signal,
            &view(),
            "cordon/n/1",
            &pods,
            now(),
            Duration::from_secs(120),
        );
        assert!(matches!(actions[0], Action::RestartDeployment { .. }));
        assert!(matches!(actions[1], Action::Evict { .. }));
        assert!(matches!(actions[2], Action::MarkNode { .. }));
        // Nothing opted in on the node: nothing at all, not even the notice.
        let mut off = web(1);
        off.policy.enabled = false;
        assert!(plan(&signal, &view(), "k", &[off], now(), Duration::from_secs(1)).is_empty());
    }
}
