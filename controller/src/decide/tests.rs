use super::*;
use spotkube_shared::annotations::{InterruptionKind, Surge};
use spotkube_shared::events;
use spotkube_shared::events::SpotEvent;
use std::time::Duration;

const SPOT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../testdata/fixtures/events/spot-interruption-warning.json"
));
const REBALANCE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../testdata/fixtures/events/rebalance-recommendation.json"
));
const STATE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../testdata/fixtures/events/instance-state-change.json"
));
const HEALTH: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../testdata/fixtures/events/health-scheduled-change.json"
));

fn plan() -> Planning {
    Planning::default()
}

fn now() -> Timestamp {
    "2026-11-20T10:15:03Z".parse().unwrap()
}

fn node() -> NodeView {
    NodeView {
        name: "spot-a".into(),
        unschedulable: false,
        taint: None,
        notice: None,
    }
}

fn enabled(surge: Surge) -> Policy {
    Policy {
        enabled: true,
        surge,
        ..Policy::default()
    }
}

fn deployment(name: &str, replicas: i32) -> DeploymentView {
    DeploymentView {
        name: name.into(),
        replicas,
        strategy: RolloutStrategy::RollingUpdate {
            max_surge: None,
            max_unavailable: None,
        },
        hpa_managed: false,
        surged_for: None,
        surge_from: None,
    }
}

fn pod(name: &str, owner: Owner, policy: Policy) -> PodView {
    PodView {
        namespace: "shop".into(),
        name: name.into(),
        owner,
        policy,
        done: false,
    }
}

/// `node()` as spotkube leaves it after `event`.
fn marked_by(event: &SpotEvent) -> NodeView {
    node().after(&decide(event, &node(), &[], now(), &plan()))
}

/// `node()` tainted, cordoned and noticed for the spot interruption fixture.
fn interrupted() -> NodeView {
    marked_by(&spot_event())
}

fn spot_event() -> SpotEvent {
    events::parse(SPOT).unwrap()
}

fn key() -> String {
    spot_event().dedupe_key()
}

#[test]
fn interruption_taints_cordons_and_records_kind_deadline_and_event() {
    let actions = decide(&spot_event(), &node(), &[], now(), &plan());
    assert_eq!(
        actions,
        vec![Action::MarkNode {
            effect: TaintEffect::NoSchedule,
            cordon: true,
            notice: InterruptionNotice {
                kind: InterruptionKind::SpotInterruption,
                deadline: Some("2026-11-20T10:17:00Z".parse().unwrap()),
                event_id: Some(key()),
                drain_from: None,
                source: None,
            }
        }]
    );
}

#[test]
fn default_single_replica_deployment_restarts_because_its_strategy_surges() {
    let pods = [pod(
        "web-1",
        Owner::Deployment(deployment("web", 1)),
        enabled(Surge::Auto),
    )];
    let actions = decide(&spot_event(), &node(), &pods, now(), &plan());
    assert_eq!(
        actions[1],
        Action::RestartDeployment {
            namespace: "shop".into(),
            name: "web".into(),
            reason: key()
        }
    );
    assert_eq!(actions.len(), 2);
}

#[test]
fn auto_scales_when_the_strategy_cannot_surge() {
    for strategy in [
        RolloutStrategy::Recreate,
        RolloutStrategy::RollingUpdate {
            max_surge: Some(IntOrString::Int(1)),
            max_unavailable: Some(IntOrString::Int(1)),
        },
        RolloutStrategy::RollingUpdate {
            max_surge: Some(IntOrString::Int(0)),
            max_unavailable: Some(IntOrString::String("100%".into())),
        },
    ] {
        let mut d = deployment("web", 1);
        d.strategy = strategy.clone();
        let pods = [pod("web-1", Owner::Deployment(d), enabled(Surge::Auto))];
        let actions = decide(&spot_event(), &node(), &pods, now(), &plan());
        assert_eq!(
            actions[1],
            Action::ScaleDeployment {
                namespace: "shop".into(),
                name: "web".into(),
                from: 1,
                to: 2,
                until: "2026-11-20T10:20:03Z".parse().unwrap(),
                reason: key()
            },
            "{strategy:?}"
        );
    }
}

#[test]
fn max_unavailable_rounds_down_and_max_surge_rounds_up() {
    let rolling = |s: &str, u: &str| RolloutStrategy::RollingUpdate {
        max_surge: Some(IntOrString::String(s.into())),
        max_unavailable: Some(IntOrString::String(u.into())),
    };
    // 99 % of one replica is 0 unavailable; 1 % surge rounds up to 1.
    assert!(rolling("1%", "99%").surges(1));
    assert!(!rolling("1%", "100%").surges(1));
    assert!(!rolling("0%", "0%").surges(1));
    assert!(!rolling("bogus", "0%").surges(1));
    assert!(
        RolloutStrategy::RollingUpdate {
            max_surge: None,
            max_unavailable: None
        }
        .surges(1)
    );
    assert!(!RolloutStrategy::Recreate.surges(1));
}

#[test]
fn explicit_scale_scales_with_the_configured_hold() {
    let mut policy = enabled(Surge::Scale);
    policy.surge_hold = Duration::from_secs(90);
    let pods = [pod(
        "web-1",
        Owner::Deployment(deployment("web", 1)),
        policy,
    )];
    let actions = decide(&spot_event(), &node(), &pods, now(), &plan());
    let Action::ScaleDeployment { until, .. } = &actions[1] else {
        panic!("{actions:?}")
    };
    assert_eq!(*until, "2026-11-20T10:16:33Z".parse::<Timestamp>().unwrap());
}

#[test]
fn hpa_managed_deployments_are_restarted_never_scaled() {
    let mut d = deployment("web", 1);
    d.hpa_managed = true;
    d.strategy = RolloutStrategy::Recreate;
    for surge in [Surge::Scale, Surge::Auto] {
        let pods = [pod("web-1", Owner::Deployment(d.clone()), enabled(surge))];
        let actions = decide(&spot_event(), &node(), &pods, now(), &plan());
        assert!(
            matches!(actions[1], Action::RestartDeployment { .. }),
            "{surge:?}: {actions:?}"
        );
    }
}

#[test]
fn multi_replica_workloads_are_evicted_after_surges_with_the_deadline() {
    let pods = [
        pod(
            "api-1",
            Owner::Deployment(deployment("api", 3)),
            enabled(Surge::Auto),
        ),
        pod(
            "db-0",
            Owner::StatefulSet {
                name: "db".into(),
                replicas: 3,
            },
            enabled(Surge::Auto),
        ),
        pod(
            "web-1",
            Owner::Deployment(deployment("web", 1)),
            enabled(Surge::Auto),
        ),
    ];
    let actions = decide(&spot_event(), &node(), &pods, now(), &plan());
    let deadline = Some("2026-11-20T10:17:00Z".parse().unwrap());
    assert!(matches!(actions[1], Action::RestartDeployment { .. }));
    assert_eq!(
        actions[2..],
        [
            Action::Evict {
                namespace: "shop".into(),
                name: "api-1".into(),
                deadline
            },
            Action::Evict {
                namespace: "shop".into(),
                name: "db-0".into(),
                deadline
            },
        ]
    );
}

#[test]
fn daemonset_mirror_bare_finished_and_opted_out_pods_are_left_alone() {
    let mut finished = pod(
        "api-1",
        Owner::Deployment(deployment("api", 3)),
        enabled(Surge::Auto),
    );
    finished.done = true;
    let pods = [
        pod("agent", Owner::DaemonSet, enabled(Surge::Auto)),
        pod("static", Owner::Mirror, enabled(Surge::Auto)),
        pod("bare", Owner::None, enabled(Surge::Auto)),
        finished,
        pod(
            "other-1",
            Owner::Deployment(deployment("other", 1)),
            Policy::default(),
        ),
    ];
    assert_eq!(
        decide(&spot_event(), &node(), &pods, now(), &plan()).len(),
        1
    );
}

#[test]
fn surge_off_single_replica_is_evicted_not_surged() {
    let pods = [pod(
        "web-1",
        Owner::Deployment(deployment("web", 1)),
        enabled(Surge::Off),
    )];
    let actions = decide(&spot_event(), &node(), &pods, now(), &plan());
    assert!(matches!(actions[1], Action::Evict { .. }));
}

#[test]
fn deciding_again_on_an_acted_node_surges_nothing_twice() {
    let acted_node = interrupted();
    let mut restarted = deployment("web", 1);
    restarted.surged_for = Some(key());
    let mut scaled = deployment("batch", 2);
    scaled.surge_from = Some(1);
    let pods = [
        pod("web-1", Owner::Deployment(restarted), enabled(Surge::Auto)),
        pod("batch-1", Owner::Deployment(scaled), enabled(Surge::Scale)),
        // Two pods of one Deployment on one node: one surge.
    ];
    assert_eq!(
        decide(&spot_event(), &acted_node, &pods, now(), &plan()),
        vec![]
    );
}

#[test]
fn one_surge_per_deployment_even_with_two_pods_on_the_node() {
    let d = Owner::Deployment(deployment("web", 1));
    let pods = [
        pod("web-old", d.clone(), enabled(Surge::Auto)),
        pod("web-new", d, enabled(Surge::Auto)),
    ];
    assert_eq!(
        decide(&spot_event(), &node(), &pods, now(), &plan()).len(),
        2
    );
}

#[test]
fn rebalance_prefers_no_schedule_and_moves_single_replica_statefulsets_early() {
    let event = events::parse(REBALANCE).unwrap();
    let pods = [
        pod(
            "db-0",
            Owner::StatefulSet {
                name: "db".into(),
                replicas: 1,
            },
            enabled(Surge::Auto),
        ),
        pod(
            "web-1",
            Owner::Deployment(deployment("web", 1)),
            enabled(Surge::Auto),
        ),
    ];
    let actions = decide(&event, &node(), &pods, now(), &plan());
    assert_eq!(
        actions,
        vec![
            Action::MarkNode {
                effect: TaintEffect::PreferNoSchedule,
                cordon: false,
                notice: InterruptionNotice {
                    kind: InterruptionKind::RebalanceRecommendation,
                    deadline: None,
                    event_id: Some(event.dedupe_key()),
                    drain_from: None,
                    source: None,
                }
            },
            Action::Evict {
                namespace: "shop".into(),
                name: "db-0".into(),
                deadline: None
            },
        ]
    );
}

#[test]
fn rebalance_after_an_interruption_changes_nothing() {
    let event = events::parse(REBALANCE).unwrap();
    assert_eq!(decide(&event, &interrupted(), &[], now(), &plan()), vec![]);
}

#[test]
fn scheduled_change_records_its_start_as_deadline() {
    let event = events::parse(HEALTH).unwrap();
    let actions = decide(&event, &node(), &[], now(), &plan());
    let Action::MarkNode { effect, notice, .. } = &actions[0] else {
        panic!()
    };
    assert_eq!(*effect, TaintEffect::PreferNoSchedule);
    assert_eq!(notice.kind, InterruptionKind::ScheduledChange);
    assert_eq!(
        notice.deadline,
        Some("2026-11-28T13:19:03Z".parse().unwrap())
    );
}

#[test]
fn shutting_down_cleans_a_marked_node_and_ignores_a_clean_one() {
    let event = events::parse(STATE).unwrap();
    assert_eq!(decide(&event, &node(), &[], now(), &plan()), vec![]);
    let marked = NodeView {
        taint: Some(TaintEffect::NoSchedule),
        unschedulable: true,
        ..node()
    };
    // Going away: the marks go, the cordon stays (nothing may land there).
    assert_eq!(
        decide(&event, &marked, &[], now(), &plan()),
        vec![Action::CleanNode { uncordon: false }]
    );
}

fn state_change(state: &str, time: &str) -> SpotEvent {
    let mut value: serde_json::Value = serde_json::from_str(STATE).unwrap();
    value["detail"]["state"] = state.into();
    value["time"] = time.into();
    events::parse(&value.to_string()).unwrap()
}

/// A spot instance whose interruption behaviour is `stop` (or `hibernate`) comes back.
#[test]
fn running_again_after_the_deadline_cleans_and_uncordons_a_stop_marked_node() {
    let stopped = interrupted();
    assert!(stopped.unschedulable);
    let deadline = stopped.notice.as_ref().unwrap().deadline.unwrap();
    // A stale `running` from before the warning's deadline changes nothing...
    let early = state_change("running", "2026-11-20T10:16:00Z");
    assert!(early.envelope.time < deadline);
    assert_eq!(decide(&early, &stopped, &[], now(), &plan()), vec![]);
    // ...the instance running again afterwards takes spotkube's marks and cordon away.
    let back = state_change("running", "2026-11-20T11:30:00Z");
    let actions = decide(&back, &stopped, &[], now(), &plan());
    assert_eq!(actions, vec![Action::CleanNode { uncordon: true }]);
    let cleaned = stopped.after(&actions);
    assert_eq!(
        (cleaned.taint, cleaned.notice, cleaned.unschedulable),
        (None, None, false)
    );
    // Stopping or pending never cleans.
    for state in ["stopping", "stopped", "pending"] {
        let event = state_change(state, "2026-11-20T11:30:00Z");
        assert_eq!(
            decide(&event, &stopped, &[], now(), &plan()),
            vec![],
            "{state}"
        );
    }
}

fn health(status: &str) -> SpotEvent {
    let mut value: serde_json::Value = serde_json::from_str(HEALTH).unwrap();
    value["detail"]["statusCode"] = status.into();
    events::parse(&value.to_string()).unwrap()
}

fn health_time() -> Timestamp {
    events::parse(HEALTH).unwrap().envelope.time
}

fn single_replica_pods() -> Vec<PodView> {
    vec![
        pod(
            "web-1",
            Owner::Deployment(deployment("web", 1)),
            enabled(Surge::Auto),
        ),
        pod(
            "api-1",
            Owner::Deployment(deployment("api", 3)),
            enabled(Surge::Auto),
        ),
        pod(
            "db-0",
            Owner::StatefulSet {
                name: "db".into(),
                replicas: 1,
            },
            enabled(Surge::Auto),
        ),
    ]
}

/// Days ahead of a scheduled change nothing drains: the node is only avoided.
#[test]
fn a_scheduled_change_is_planned_until_its_lead_time() {
    let event = health("upcoming");
    let at = health_time();
    let actions = decide(&event, &node(), &single_replica_pods(), at, &plan());
    let start: Timestamp = "2026-11-28T13:19:03Z".parse().unwrap();
    assert_eq!(
        actions,
        vec![Action::MarkNode {
            effect: TaintEffect::PreferNoSchedule,
            cordon: false,
            notice: InterruptionNotice {
                kind: InterruptionKind::ScheduledChange,
                deadline: Some(start),
                event_id: Some(event.dedupe_key()),
                drain_from: Some("2026-11-28T13:04:03Z".parse().unwrap()),
                source: None,
            },
        }]
    );
    let marked = node().after(&actions);
    assert_eq!(drain(&marked, &single_replica_pods(), at), vec![]);
    assert_eq!(due_marks(&marked, at), vec![]);
    // A redelivery or the backup region's copy changes nothing.
    assert_eq!(
        decide(&event, &marked, &single_replica_pods(), at, &plan()),
        vec![]
    );

    // From the lead time on it is drained like an interruption, start as deadline.
    let due: Timestamp = "2026-11-28T13:04:03Z".parse().unwrap();
    let escalation = due_marks(&marked, due);
    let [
        Action::MarkNode {
            effect: TaintEffect::NoSchedule,
            cordon: true,
            notice,
        },
    ] = &escalation[..]
    else {
        panic!("{escalation:?}")
    };
    assert!(notice.is_imminent());
    let draining = marked.after(&escalation);
    let work = drain(&draining, &single_replica_pods(), due);
    assert!(
        matches!(&work[0], Action::RestartDeployment { name, .. } if name == "web"),
        "{work:?}"
    );
    assert_eq!(
        work.len(),
        3,
        "web surged, api-1 and db-0 evicted: {work:?}"
    );
    // A later event for the same node keeps the surge key: nothing surges twice.
    let spot = spot_event();
    let later = decide(&spot, &draining, &single_replica_pods(), due, &plan());
    let Action::MarkNode {
        notice: spot_notice,
        ..
    } = &later[0]
    else {
        panic!("{later:?}")
    };
    assert_eq!(spot_notice.event_id, Some(event.dedupe_key()));
}

#[test]
fn a_scheduled_change_inside_its_lead_time_drains_at_once() {
    let event = health("open");
    let at: Timestamp = "2026-11-28T13:10:00Z".parse().unwrap();
    let actions = decide(&event, &node(), &single_replica_pods(), at, &plan());
    let Action::MarkNode {
        effect,
        cordon,
        notice,
    } = &actions[0]
    else {
        panic!()
    };
    assert_eq!(
        (*effect, *cordon, notice.drain_from),
        (TaintEffect::NoSchedule, true, None)
    );
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::RestartDeployment { .. }))
    );
}

#[test]
fn a_closed_scheduled_change_clears_its_marks_and_no_one_elses() {
    let at = health_time();
    let planned = node().after(&decide(&health("upcoming"), &node(), &[], at, &plan()));
    assert_eq!(
        decide(&health("closed"), &planned, &[], at, &plan()),
        vec![Action::CleanNode { uncordon: false }]
    );
    let draining = planned.after(&due_marks(
        &planned,
        "2026-11-28T13:05:00Z".parse().unwrap(),
    ));
    assert_eq!(
        decide(&health("closed"), &draining, &[], at, &plan()),
        vec![Action::CleanNode { uncordon: true }]
    );
    // A spot interruption's marks are not the Health event's to clear.
    assert_eq!(
        decide(&health("closed"), &interrupted(), &[], at, &plan()),
        vec![]
    );
    assert_eq!(decide(&health("closed"), &node(), &[], at, &plan()), vec![]);
}

#[test]
fn a_scheduled_change_never_weakens_an_interruption() {
    assert_eq!(
        decide(&health("upcoming"), &interrupted(), &[], now(), &plan()),
        vec![]
    );
}

#[test]
fn scale_back_only_when_due_and_untouched() {
    let until: Timestamp = "2026-11-20T10:20:00Z".parse().unwrap();
    let before: Timestamp = "2026-11-20T10:19:59Z".parse().unwrap();
    let after: Timestamp = "2026-11-20T10:20:01Z".parse().unwrap();
    let cleared = SurgeNode::Cleared;
    assert_eq!(scale_back(1, until, 2, before, cleared), ScaleBack::Wait);
    assert_eq!(
        scale_back(1, until, 2, after, cleared),
        ScaleBack::ScaleTo { replicas: 1 }
    );
    assert_eq!(scale_back(1, until, 5, after, cleared), ScaleBack::Forget);
    assert_eq!(scale_back(1, until, 1, after, cleared), ScaleBack::Forget);
}

/// Found by the fault tests: a hold shorter than the node's remaining life scaled back
/// while the old pod still ran on the marked node (and, ending at once on the node's
/// deletion, while the old pod object was still bound to it), and the ReplicaSet
/// controller deleted the newest pod, the replacement.
#[test]
fn a_surge_is_kept_while_a_pod_is_on_its_node_and_ends_when_node_and_pods_are_gone() {
    let until: Timestamp = "2026-11-20T10:20:00Z".parse().unwrap();
    let before: Timestamp = "2026-11-20T10:19:59Z".parse().unwrap();
    let after: Timestamp = "2026-11-20T10:20:01Z".parse().unwrap();
    assert_eq!(
        scale_back(1, until, 2, after, SurgeNode::Holding),
        ScaleBack::Wait
    );
    assert_eq!(
        scale_back(1, until, 2, before, SurgeNode::Marked),
        ScaleBack::Wait
    );
    assert_eq!(
        scale_back(1, until, 2, after, SurgeNode::Marked),
        ScaleBack::ScaleTo { replicas: 1 }
    );
    assert_eq!(
        scale_back(1, until, 2, before, SurgeNode::Gone),
        ScaleBack::ScaleTo { replicas: 1 }
    );
    assert_eq!(
        scale_back(1, until, 3, before, SurgeNode::Gone),
        ScaleBack::Forget
    );
}

#[test]
fn drain_protects_what_remains_until_the_deadline_only() {
    let marked = interrupted();
    let mut surged = deployment("web", 1);
    surged.surged_for = Some(key());
    let pods = [
        pod("web-1", Owner::Deployment(surged), enabled(Surge::Auto)),
        pod(
            "api-1",
            Owner::Deployment(deployment("api", 3)),
            enabled(Surge::Auto),
        ),
    ];
    let actions = drain(&marked, &pods, now());
    assert_eq!(
        actions,
        vec![Action::Evict {
            namespace: "shop".into(),
            name: "api-1".into(),
            deadline: Some("2026-11-20T10:17:00Z".parse().unwrap()),
        }]
    );
    let late: Timestamp = "2026-11-20T10:17:01Z".parse().unwrap();
    assert_eq!(drain(&marked, &pods, late), vec![]);
    // A rebalance notice is no reason to drain.
    let event = events::parse(REBALANCE).unwrap();
    let rebalanced = marked_by(&event);
    assert_eq!(drain(&rebalanced, &pods, now()), vec![]);
}

#[test]
fn an_event_for_a_node_another_tool_marked_first_keeps_its_key_and_source() {
    let external = InterruptionNotice {
        kind: InterruptionKind::ScheduledChange,
        deadline: Some("2026-11-20T10:20:00Z".parse().unwrap()),
        event_id: Some("nth/spot-a/0f1e2d3c".into()),
        drain_from: None,
        source: Some("nth".into()),
    };
    let node = NodeView {
        taint: Some(TaintEffect::NoSchedule),
        notice: Some(external),
        ..node()
    };
    let pods = [pod(
        "web-1",
        Owner::Deployment(DeploymentView {
            surged_for: Some("nth/spot-a/0f1e2d3c".into()),
            ..deployment("web", 1)
        }),
        enabled(Surge::Auto),
    )];
    let actions = decide(&spot_event(), &node, &pods, now(), &plan());
    let [Action::MarkNode { notice, .. }] = &actions[..] else {
        panic!("one mark, no second surge and no eviction: {actions:?}");
    };
    assert_eq!(notice.event_id.as_deref(), Some("nth/spot-a/0f1e2d3c"));
    assert_eq!(notice.source.as_deref(), Some("nth"));
}

fn to_fargate(surge: Surge) -> Policy {
    Policy {
        fallback: spotkube_shared::annotations::Fallback::Fargate,
        ..enabled(surge)
    }
}

#[test]
fn fallback_fargate_fails_over_with_the_surge_kept_for_an_uncovered_namespace() {
    let pods = [pod(
        "web-1",
        Owner::Deployment(deployment("web", 1)),
        to_fargate(Surge::Auto),
    )];
    let actions = decide(&spot_event(), &node(), &pods, now(), &plan());
    assert_eq!(
        actions[1..],
        [Action::FailoverToFargate {
            namespace: "shop".into(),
            name: "web".into(),
            reason: key(),
            instead: Some(Box::new(Action::RestartDeployment {
                namespace: "shop".into(),
                name: "web".into(),
                reason: key(),
            })),
        }]
    );
}

#[test]
fn a_multi_replica_fargate_workload_fails_over_once_and_its_pods_are_still_evicted() {
    let d = Owner::Deployment(deployment("api", 3));
    let pods = [
        pod("api-1", d.clone(), to_fargate(Surge::Auto)),
        pod("api-2", d, to_fargate(Surge::Auto)),
    ];
    let actions = decide(&spot_event(), &node(), &pods, now(), &plan());
    let failovers: Vec<_> = actions
        .iter()
        .filter(|a| matches!(a, Action::FailoverToFargate { instead: None, .. }))
        .collect();
    assert_eq!(failovers.len(), 1);
    let evictions = actions
        .iter()
        .filter(|a| matches!(a, Action::Evict { .. }))
        .count();
    assert_eq!(evictions, 2);
    // The failover comes before the evictions.
    assert!(matches!(actions[1], Action::FailoverToFargate { .. }));
}

#[test]
fn a_workload_failed_over_for_this_event_is_not_failed_over_again() {
    let mut moved = deployment("web", 1);
    moved.surged_for = Some(key());
    let pods = [pod(
        "web-1",
        Owner::Deployment(moved),
        to_fargate(Surge::Auto),
    )];
    assert_eq!(
        decide(&spot_event(), &interrupted(), &pods, now(), &plan()),
        vec![]
    );
}
