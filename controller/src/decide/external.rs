//! External disruption signals: what the node handler a cluster already runs
//! (Karpenter, the AWS Node Termination Handler, Cluster Autoscaler) or the node
//! lifecycle controller does to a Node, read as a [`Signal`], and the marks it calls
//! for. Pure: a Node and the settings in, a signal or actions out.
//!
//! Whichever signal marks a Node first (an EventBridge event or one of these) writes
//! the notice; a later one keeps its key, so one node gets one surge.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use spotkube_shared::annotations::{InterruptionKind, InterruptionNotice};
use spotkube_shared::events::SPOT_WARNING_LEAD;
use spotkube_shared::node::{CapacityType, capacity_type};

use super::{Action, NodeView, TaintEffect};

/// NTH: a spot interruption notice (two minutes left).
pub const NTH_SPOT_ITN: &str = "aws-node-termination-handler/spot-itn";
/// NTH: an ASG lifecycle hook is terminating the instance.
pub const NTH_ASG_TERMINATION: &str = "aws-node-termination-handler/asg-lifecycle-termination";
/// NTH: an EC2 scheduled event (reboot, retirement).
pub const NTH_SCHEDULED_MAINTENANCE: &str = "aws-node-termination-handler/scheduled-maintenance";
/// NTH: a rebalance recommendation (elevated risk).
pub const NTH_REBALANCE: &str = "aws-node-termination-handler/rebalance-recommendation";
/// NTH's action label on a node it cordoned for a scheduled reboot
/// (`UncordonAfterReboot`).
pub const NTH_ACTION_LABEL: &str = "aws-node-termination-handler/action";
/// Cluster Autoscaler: the node is being scaled down (value: when, in Unix seconds).
pub const CA_TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";
/// Karpenter v1: the node is being disrupted (consolidation, drift, expiry,
/// interruption) and drained.
pub const KARPENTER_DISRUPTED: &str = "karpenter.sh/disrupted";
/// Karpenter v1beta1 (v0.32–v0.37): `karpenter.sh/disruption=disrupting:NoSchedule`.
pub const KARPENTER_DISRUPTION_V1BETA1: &str = "karpenter.sh/disruption";
/// Karpenter: when the node is terminated whatever its drain (RFC 3339), set when its
/// NodePool has a `terminationGracePeriod`.
pub const KARPENTER_TERMINATION_TIMESTAMP: &str = "karpenter.sh/nodeclaim-termination-timestamp";
/// The node lifecycle controller: the kubelet stopped reporting.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// Which tool marked the Node. Each is a `--external-signals` value except `cordon`
/// (`--external-signal-cordon`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Source {
    /// The AWS Node Termination Handler's taints and action label.
    Nth,
    /// Cluster Autoscaler's `ToBeDeletedByClusterAutoscaler` taint.
    ClusterAutoscaler,
    /// Karpenter's disruption taint.
    Karpenter,
    /// `node.kubernetes.io/unreachable` on a spot node.
    Unreachable,
    /// `spec.unschedulable` on a spot node (opt-in: people cordon for other reasons).
    #[value(skip)]
    Cordon,
}

impl Source {
    pub const ALL: [Source; 5] = [
        Source::Nth,
        Source::ClusterAutoscaler,
        Source::Karpenter,
        Source::Unreachable,
        Source::Cordon,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Nth => "nth",
            Source::ClusterAutoscaler => "cluster-autoscaler",
            Source::Karpenter => "karpenter",
            Source::Unreachable => "unreachable",
            Source::Cordon => "cordon",
        }
    }

    /// The source a notice names, if it is one of these.
    pub fn parse(value: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|s| s.as_str() == value)
    }

    /// Whether the tool drains the node itself (NTH, Karpenter and Cluster Autoscaler
    /// evict through the Eviction API). Then spotkube surges single-replica workloads
    /// (their replacement Ready first) and evicts nothing: it never fights their drain.
    pub fn drains_itself(self) -> bool {
        matches!(
            self,
            Source::Nth | Source::ClusterAutoscaler | Source::Karpenter
        )
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the source a notice names drains the node itself.
pub fn drained_by_source(notice: &InterruptionNotice) -> bool {
    notice
        .source
        .as_deref()
        .and_then(Source::parse)
        .is_some_and(Source::drains_itself)
}

/// How grave a signal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SignalKind {
    /// Elevated risk: prefer other nodes, nothing moves.
    Rebalance,
    /// The node is being drained on purpose (scale-down, consolidation, maintenance).
    Planned,
    /// The instance is going now (spot interruption, termination, unreachable).
    Imminent,
}

impl SignalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::Rebalance => "rebalance",
            SignalKind::Planned => "planned",
            SignalKind::Imminent => "imminent",
        }
    }
}

/// One external signal on a Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    pub source: Source,
    pub kind: SignalKind,
    /// What was seen, for logs and Events (`taint key=value:effect`, `label`, `cordon`).
    pub seen: String,
    /// A deadline the Node states (Karpenter's termination timestamp).
    pub deadline: Option<Timestamp>,
    /// Else how long after it is first seen the node goes, when the signal says
    /// (NTH's spot interruption: two minutes); else `--external-signal-deadline`.
    pub lead: Option<Duration>,
}

impl Signal {
    /// The deadline, when the signal is first acted on at `now`.
    pub fn deadline_at(&self, now: Timestamp, default: Duration) -> Timestamp {
        self.deadline.unwrap_or_else(|| {
            let lead = SignedDuration::try_from(self.lead.unwrap_or(default))
                .unwrap_or(SignedDuration::MAX);
            now.checked_add(lead).unwrap_or(Timestamp::MAX)
        })
    }
}

/// Which signals count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `--external-signals`.
    pub sources: BTreeSet<Source>,
    /// `--external-signal-cordon`: a cordoned spot node counts.
    pub cordon: bool,
    /// `--external-signal-deadline`: a signal's deadline when nothing states one.
    pub default_deadline: Duration,
    /// `--capacity-type-label`-like extra label for spot detection (none: Karpenter's
    /// and EKS's labels).
    pub capacity_label: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            sources: [
                Source::Nth,
                Source::ClusterAutoscaler,
                Source::Karpenter,
                Source::Unreachable,
            ]
            .into(),
            cordon: false,
            default_deadline: Duration::from_secs(120),
            capacity_label: None,
        }
    }
}

impl Settings {
    /// Whether any signal counts at all (else the Node watch is not started).
    pub fn any(&self) -> bool {
        !self.sources.is_empty() || self.cordon
    }

    fn counts(&self, source: Source) -> bool {
        match source {
            Source::Cordon => self.cordon,
            other => self.sources.contains(&other),
        }
    }
}

/// The gravest signal `node` carries that `settings` count, if any.
pub fn signal(node: &Node, settings: &Settings) -> Option<Signal> {
    let spec = node.spec.as_ref();
    let spot =
        capacity_type(node.labels(), settings.capacity_label.as_deref()) == CapacityType::Spot;
    let mut found = Vec::new();
    for taint in spec.and_then(|s| s.taints.as_deref()).unwrap_or_default() {
        let seen = match &taint.value {
            Some(value) if !value.is_empty() => format!("{}={value}:{}", taint.key, taint.effect),
            _ => format!("{}:{}", taint.key, taint.effect),
        };
        let (source, kind, lead) = match taint.key.as_str() {
            NTH_SPOT_ITN => (Source::Nth, SignalKind::Imminent, Some(SPOT_WARNING_LEAD)),
            NTH_ASG_TERMINATION => (Source::Nth, SignalKind::Imminent, None),
            NTH_SCHEDULED_MAINTENANCE => (Source::Nth, SignalKind::Planned, None),
            NTH_REBALANCE => (Source::Nth, SignalKind::Rebalance, None),
            CA_TO_BE_DELETED => (Source::ClusterAutoscaler, SignalKind::Planned, None),
            KARPENTER_DISRUPTED => (Source::Karpenter, SignalKind::Planned, None),
            KARPENTER_DISRUPTION_V1BETA1 if taint.value.as_deref() == Some("disrupting") => {
                (Source::Karpenter, SignalKind::Planned, None)
            }
            // A network blip on an on-demand node is no reason to move anything.
            UNREACHABLE if spot => (Source::Unreachable, SignalKind::Imminent, None),
            _ => continue,
        };
        let deadline = match source {
            Source::Karpenter => node
                .annotations()
                .get(KARPENTER_TERMINATION_TIMESTAMP)
                .and_then(|v| v.parse().ok()),
            _ => None,
        };
        found.push(Signal {
            source,
            kind,
            seen,
            deadline,
            lead,
        });
    }
    if let Some(action) = node.labels().get(NTH_ACTION_LABEL) {
        found.push(Signal {
            source: Source::Nth,
            kind: SignalKind::Planned,
            seen: format!("label {NTH_ACTION_LABEL}={action}"),
            deadline: None,
            lead: None,
        });
    }
    if spot && spec.and_then(|s| s.unschedulable).unwrap_or(false) {
        found.push(Signal {
            source: Source::Cordon,
            kind: SignalKind::Planned,
            seen: "cordoned (spec.unschedulable)".into(),
            deadline: None,
            lead: None,
        });
    }
    found
        .into_iter()
        .filter(|s| settings.counts(s.source))
        // Gravest first; among equals the tool before a bare cordon.
        .min_by_key(|s| (std::cmp::Reverse(s.kind), s.source))
}

/// The key workloads are surged under for a signal on Node `name` (uid `uid`): one
/// per source and Node object, so a signal seen again never surges again.
pub fn key(signal: &Signal, name: &str, uid: &str) -> String {
    let uid: String = uid.chars().take(8).collect();
    format!("{}/{name}/{uid}", signal.source)
}

/// What `signal` does to the Node: spotkube's taint and a notice naming the source,
/// no cordon (the tool's own taint or cordon already keeps pods off; spotkube's makes
/// the extender filter the node). A node already under an imminent notice (whichever
/// signal came first) keeps it: one node, one plan. A rebalance never replaces a
/// graver notice.
pub fn marks(
    signal: &Signal,
    node: &NodeView,
    key: &str,
    now: Timestamp,
    default_deadline: Duration,
) -> Vec<Action> {
    if node.notice.as_ref().is_some_and(|n| n.is_imminent()) {
        return Vec::new();
    }
    let source = Some(signal.source.as_str().to_string());
    let (effect, notice) = match signal.kind {
        SignalKind::Rebalance => {
            if node.notice.is_some() {
                return Vec::new();
            }
            let notice = InterruptionNotice {
                kind: InterruptionKind::RebalanceRecommendation,
                deadline: None,
                event_id: Some(key.to_string()),
                drain_from: None,
                source,
            };
            (TaintEffect::PreferNoSchedule, notice)
        }
        kind => {
            let notice = InterruptionNotice {
                kind: match kind {
                    SignalKind::Imminent => InterruptionKind::SpotInterruption,
                    _ => InterruptionKind::ScheduledChange,
                },
                deadline: Some(signal.deadline_at(now, default_deadline)),
                event_id: Some(key.to_string()),
                drain_from: None,
                source,
            };
            (TaintEffect::NoSchedule, notice)
        }
    };
    vec![Action::MarkNode {
        effect,
        cordon: false,
        notice,
    }]
}

/// The signal that marked the Node is gone (Karpenter untainted a node whose
/// replacement failed, Cluster Autoscaler gave up a scale-down, the node is
/// reachable or uncordoned again): spotkube's marks go. Notices of EventBridge events
/// are never cleared here.
pub fn cleared(node: &NodeView, signal: Option<&Signal>) -> Vec<Action> {
    let external = node
        .notice
        .as_ref()
        .and_then(|n| n.source.as_deref())
        .and_then(Source::parse)
        .is_some();
    if external && signal.is_none() {
        vec![Action::CleanNode { uncordon: false }]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};
    use kube::api::ObjectMeta;

    use super::*;

    fn node(capacity: &str, taints: &[(&str, Option<&str>, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("ip-10-0-0-1.ec2.internal".into()),
                uid: Some("0f1e2d3c-aaaa-bbbb-cccc-000000000000".into()),
                labels: Some([("karpenter.sh/capacity-type".into(), capacity.into())].into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(
                    taints
                        .iter()
                        .map(|(key, value, effect)| Taint {
                            key: key.to_string(),
                            value: value.map(Into::into),
                            effect: effect.to_string(),
                            time_added: None,
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn cordoned(mut node: Node) -> Node {
        node.spec.as_mut().unwrap().unschedulable = Some(true);
        node
    }

    fn now() -> Timestamp {
        "2026-11-20T10:00:00Z".parse().unwrap()
    }

    fn defaults() -> Settings {
        Settings::default()
    }

    fn found(node: &Node) -> Option<(Source, SignalKind)> {
        signal(node, &defaults()).map(|s| (s.source, s.kind))
    }

    #[test]
    fn nth_taints_map_to_their_kinds() {
        for (key, kind) in [
            (NTH_SPOT_ITN, SignalKind::Imminent),
            (NTH_ASG_TERMINATION, SignalKind::Imminent),
            (NTH_SCHEDULED_MAINTENANCE, SignalKind::Planned),
            (NTH_REBALANCE, SignalKind::Rebalance),
        ] {
            let n = cordoned(node("spot", &[(key, Some("evt-1"), "NoSchedule")]));
            assert_eq!(found(&n), Some((Source::Nth, kind)), "{key}");
        }
        // Two minutes from when it is first seen, for the spot interruption notice.
        let itn = signal(
            &node("spot", &[(NTH_SPOT_ITN, Some("evt-1"), "NoSchedule")]),
            &defaults(),
        )
        .unwrap();
        assert_eq!(
            itn.seen,
            "aws-node-termination-handler/spot-itn=evt-1:NoSchedule"
        );
        assert_eq!(
            itn.deadline_at(now(), Duration::from_secs(600)),
            "2026-11-20T10:02:00Z".parse::<Timestamp>().unwrap()
        );
        // A scheduled reboot NTH only labelled (no taint): planned.
        let mut labelled = node("on-demand", &[]);
        labelled
            .labels_mut()
            .insert(NTH_ACTION_LABEL.into(), "UncordonAfterReboot".into());
        assert_eq!(found(&labelled), Some((Source::Nth, SignalKind::Planned)));
    }

    #[test]
    fn cluster_autoscaler_and_karpenter_mark_planned_drains_on_any_capacity() {
        let ca = node(
            "on-demand",
            &[(CA_TO_BE_DELETED, Some("1763632800"), "NoSchedule")],
        );
        assert_eq!(
            found(&ca),
            Some((Source::ClusterAutoscaler, SignalKind::Planned))
        );
        // Its soft candidate mark is no drain.
        let candidate = node(
            "spot",
            &[(
                "DeletionCandidateOfClusterAutoscaler",
                Some("1"),
                "PreferNoSchedule",
            )],
        );
        assert_eq!(found(&candidate), None);
        let mut karpenter = node("spot", &[(KARPENTER_DISRUPTED, None, "NoSchedule")]);
        assert_eq!(
            found(&karpenter),
            Some((Source::Karpenter, SignalKind::Planned))
        );
        // The NodeClaim's termination timestamp is the deadline.
        karpenter.annotations_mut().insert(
            KARPENTER_TERMINATION_TIMESTAMP.into(),
            "2026-11-20T10:05:00Z".into(),
        );
        let s = signal(&karpenter, &defaults()).unwrap();
        assert_eq!(
            s.deadline_at(now(), Duration::from_secs(120)),
            "2026-11-20T10:05:00Z".parse::<Timestamp>().unwrap()
        );
        // v1beta1 spelling.
        let old = node(
            "spot",
            &[(
                KARPENTER_DISRUPTION_V1BETA1,
                Some("disrupting"),
                "NoSchedule",
            )],
        );
        assert_eq!(found(&old), Some((Source::Karpenter, SignalKind::Planned)));
        let other = node(
            "spot",
            &[(
                KARPENTER_DISRUPTION_V1BETA1,
                Some("candidate"),
                "NoSchedule",
            )],
        );
        assert_eq!(found(&other), None);
    }

    #[test]
    fn unreachable_counts_on_spot_nodes_only() {
        let taint = [(UNREACHABLE, None, "NoExecute")];
        assert_eq!(
            found(&node("spot", &taint)),
            Some((Source::Unreachable, SignalKind::Imminent))
        );
        assert_eq!(found(&node("on-demand", &taint)), None);
    }

    #[test]
    fn a_cordon_counts_only_on_spot_nodes_and_only_when_asked() {
        let spot = cordoned(node("spot", &[]));
        assert_eq!(found(&spot), None, "opt-in");
        let asked = Settings {
            cordon: true,
            ..defaults()
        };
        assert_eq!(
            signal(&spot, &asked).map(|s| (s.source, s.kind)),
            Some((Source::Cordon, SignalKind::Planned))
        );
        assert_eq!(signal(&cordoned(node("on-demand", &[])), &asked), None);
        assert_eq!(signal(&node("spot", &[]), &asked), None);
        // A tool's taint on a cordoned node names the tool.
        let nth = cordoned(node("spot", &[(NTH_SPOT_ITN, None, "NoSchedule")]));
        assert_eq!(signal(&nth, &asked).unwrap().source, Source::Nth);
    }

    #[test]
    fn sources_can_be_switched_off_and_the_gravest_signal_wins() {
        let n = node(
            "spot",
            &[
                (NTH_REBALANCE, None, "NoSchedule"),
                (KARPENTER_DISRUPTED, None, "NoSchedule"),
                (UNREACHABLE, None, "NoSchedule"),
            ],
        );
        assert_eq!(found(&n), Some((Source::Unreachable, SignalKind::Imminent)));
        let only_nth = Settings {
            sources: [Source::Nth].into(),
            ..defaults()
        };
        assert_eq!(
            signal(&n, &only_nth).map(|s| (s.source, s.kind)),
            Some((Source::Nth, SignalKind::Rebalance))
        );
        let none = Settings {
            sources: BTreeSet::new(),
            ..defaults()
        };
        assert!(!none.any());
        assert_eq!(signal(&n, &none), None);
    }

    fn view(notice: Option<InterruptionNotice>) -> NodeView {
        NodeView {
            name: "ip-10-0-0-1.ec2.internal".into(),
            unschedulable: false,
            taint: None,
            notice,
        }
    }

    fn karpenter() -> Signal {
        signal(
            &node("spot", &[(KARPENTER_DISRUPTED, None, "NoSchedule")]),
            &defaults(),
        )
        .unwrap()
    }

    #[test]
    fn a_signal_marks_the_node_with_its_source_and_no_cordon() {
        let k = key(&karpenter(), "n", "0f1e2d3c-aaaa");
        assert_eq!(k, "karpenter/n/0f1e2d3c");
        let actions = marks(
            &karpenter(),
            &view(None),
            &k,
            now(),
            Duration::from_secs(90),
        );
        assert_eq!(
            actions,
            vec![Action::MarkNode {
                effect: TaintEffect::NoSchedule,
                cordon: false,
                notice: InterruptionNotice {
                    kind: InterruptionKind::ScheduledChange,
                    deadline: Some("2026-11-20T10:01:30Z".parse().unwrap()),
                    event_id: Some(k.clone()),
                    drain_from: None,
                    source: Some("karpenter".into()),
                },
            }]
        );
        let Action::MarkNode { notice, .. } = &actions[0] else {
            unreachable!()
        };
        assert!(notice.is_imminent());
        assert!(drained_by_source(notice));
    }

    #[test]
    fn the_first_imminent_notice_stays_whichever_signal_came_first() {
        // Marked by an EventBridge warning first: an NTH taint later changes nothing.
        let sqs = InterruptionNotice {
            kind: InterruptionKind::SpotInterruption,
            deadline: Some(now()),
            event_id: Some("evt".into()),
            drain_from: None,
            source: None,
        };
        assert!(
            marks(
                &karpenter(),
                &view(Some(sqs.clone())),
                "k",
                now(),
                Duration::ZERO
            )
            .is_empty()
        );
        // A rebalance recommendation is upgraded by a drain.
        let rebalance = InterruptionNotice {
            kind: InterruptionKind::RebalanceRecommendation,
            deadline: None,
            ..sqs.clone()
        };
        assert_eq!(
            marks(
                &karpenter(),
                &view(Some(rebalance.clone())),
                "k",
                now(),
                Duration::ZERO
            )
            .len(),
            1
        );
        // ...but a rebalance signal never weakens a notice.
        let nth_rebalance = signal(
            &node("spot", &[(NTH_REBALANCE, None, "NoSchedule")]),
            &defaults(),
        )
        .unwrap();
        assert!(
            marks(
                &nth_rebalance,
                &view(Some(rebalance)),
                "k",
                now(),
                Duration::ZERO
            )
            .is_empty()
        );
        let marked = marks(&nth_rebalance, &view(None), "k", now(), Duration::ZERO);
        assert!(matches!(
            &marked[..],
            [Action::MarkNode {
                effect: TaintEffect::PreferNoSchedule,
                cordon: false,
                ..
            }]
        ));
    }

    #[test]
    fn marks_of_a_signal_gone_are_cleared_but_never_those_of_an_event() {
        let external = InterruptionNotice {
            kind: InterruptionKind::ScheduledChange,
            deadline: Some(now()),
            event_id: Some("karpenter/n/1".into()),
            drain_from: None,
            source: Some("karpenter".into()),
        };
        assert_eq!(
            cleared(&view(Some(external.clone())), None),
            vec![Action::CleanNode { uncordon: false }]
        );
        assert!(cleared(&view(Some(external)), Some(&karpenter())).is_empty());
        let event = InterruptionNotice {
            kind: InterruptionKind::SpotInterruption,
            deadline: Some(now()),
            event_id: Some("evt".into()),
            drain_from: None,
            source: None,
        };
        assert!(cleared(&view(Some(event)), None).is_empty());
        assert!(cleared(&view(None), None).is_empty());
    }
}
