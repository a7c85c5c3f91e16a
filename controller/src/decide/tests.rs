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

fn spot_event() -> SpotEvent {
    events::parse(SPOT).unwrap()
}

fn key() -> String {
    spot_event().dedupe_key()
}

#[test]
fn interruption_taints_cordons_and_records_kind_deadline_and_event() {
    let actions = decide(&spot_event(), &node(), &[], now());
    assert_eq!(
        actions,
        vec![Action::MarkNode {
            effect: TaintEffect::NoSchedule,
            cordon: true,
            notice: InterruptionNotice {
                kind: InterruptionKind::SpotInterruption,
                deadline: Some("2026-11-20T10:17:00Z".parse().unwrap()),
                event_id: Some(key()),
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
    let actions = decide(&spot_event(), &node(), &pods, now());
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
        let actions = decide(&spot_event(), &node(), &pods, now());
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
    let actions = decide(&spot_event(), &node(), &pods, now());
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
        let actions = decide(&spot_event(), &node(), &pods, now());
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
    let actions = decide(&spot_event(), &node(), &pods, now());
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
    assert_eq!(decide(&spot_event(), &node(), &pods, now()).len(), 1);
}

#[test]
fn surge_off_single_replica_is_evicted_not_surged() {
    let pods = [pod(
        "web-1",
        Owner::Deployment(deployment("web", 1)),
        enabled(Surge::Off),
    )];
    let actions = decide(&spot_event(), &node(), &pods, now());
    assert!(matches!(actions[1], Action::Evict { .. }));
}

#[test]
fn deciding_again_on_an_acted_node_surges_nothing_twice() {
    let first = decide(&spot_event(), &node(), &[], now());
    let Action::MarkNode { notice, .. } = &first[0] else {
        panic!()
    };
    let acted_node = NodeView {
        unschedulable: true,
        taint: Some(TaintEffect::NoSchedule),
        notice: Some(notice.clone()),
        ..node()
    };
    let mut restarted = deployment("web", 1);
    restarted.surged_for = Some(key());
    let mut scaled = deployment("batch", 2);
    scaled.surge_from = Some(1);
    let pods = [
        pod("web-1", Owner::Deployment(restarted), enabled(Surge::Auto)),
        pod("batch-1", Owner::Deployment(scaled), enabled(Surge::Scale)),
        // Two pods of one Deployment on one node: one surge.
    ];
    assert_eq!(decide(&spot_event(), &acted_node, &pods, now()), vec![]);
}

#[test]
fn one_surge_per_deployment_even_with_two_pods_on_the_node() {
    let d = Owner::Deployment(deployment("web", 1));
    let pods = [
        pod("web-old", d.clone(), enabled(Surge::Auto)),
        pod("web-new", d, enabled(Surge::Auto)),
    ];
    assert_eq!(decide(&spot_event(), &node(), &pods, now()).len(), 2);
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
    let actions = decide(&event, &node(), &pods, now());
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
    let Action::MarkNode { notice, .. } = decide(&spot_event(), &node(), &[], now()).remove(0)
    else {
        panic!()
    };
    let interrupted = NodeView {
        unschedulable: true,
        taint: Some(TaintEffect::NoSchedule),
        notice: Some(notice),
        ..node()
    };
    let event = events::parse(REBALANCE).unwrap();
    assert_eq!(decide(&event, &interrupted, &[], now()), vec![]);
}

#[test]
fn scheduled_change_records_its_start_as_deadline() {
    let event = events::parse(HEALTH).unwrap();
    let actions = decide(&event, &node(), &[], now());
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
    assert_eq!(decide(&event, &node(), &[], now()), vec![]);
    let marked = NodeView {
        taint: Some(TaintEffect::NoSchedule),
        ..node()
    };
    assert_eq!(decide(&event, &marked, &[], now()), vec![Action::CleanNode]);
    let mut value: serde_json::Value = serde_json::from_str(STATE).unwrap();
    value["detail"]["state"] = "running".into();
    let running = events::parse(&value.to_string()).unwrap();
    assert_eq!(decide(&running, &marked, &[], now()), vec![]);
}

#[test]
fn scale_back_only_when_due_and_untouched() {
    let until: Timestamp = "2026-11-20T10:20:00Z".parse().unwrap();
    let before: Timestamp = "2026-11-20T10:19:59Z".parse().unwrap();
    let after: Timestamp = "2026-11-20T10:20:01Z".parse().unwrap();
    assert_eq!(scale_back(1, until, 2, before), ScaleBack::Wait);
    assert_eq!(
        scale_back(1, until, 2, after),
        ScaleBack::ScaleTo { replicas: 1 }
    );
    assert_eq!(scale_back(1, until, 5, after), ScaleBack::Forget);
    assert_eq!(scale_back(1, until, 1, after), ScaleBack::Forget);
}

#[test]
fn drain_protects_what_remains_until_the_deadline_only() {
    let Action::MarkNode { notice, .. } = decide(&spot_event(), &node(), &[], now()).remove(0)
    else {
        panic!()
    };
    let marked = NodeView {
        unschedulable: true,
        taint: Some(TaintEffect::NoSchedule),
        notice: Some(notice),
        ..node()
    };
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
    let Action::MarkNode { notice, .. } = decide(&event, &node(), &[], now()).remove(0) else {
        panic!()
    };
    let rebalanced = NodeView {
        notice: Some(notice),
        ..node()
    };
    assert_eq!(drain(&rebalanced, &pods, now()), vec![]);
}
