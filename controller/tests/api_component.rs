//! Component tests of the controller's I/O against a mocked API server (no rig): the
//! exact requests of the Node patch and its 409 retry, how an intake outcome maps to
//! deleting or keeping the SQS message, owner resolution (and its cache), surges under
//! a precondition, and the scale-back's writes.

mod mock;

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use mock::Expect;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use spotkube_controller::decide::{Action, Owner, Planning, TaintEffect};
use spotkube_controller::intake::{Intake, Outcome};
use spotkube_controller::nodes_index::NodesIndex;
use spotkube_controller::reconcile::scale_back;
use spotkube_controller::view;
use spotkube_shared::annotations::{InterruptionKind, InterruptionNotice};
use spotkube_shared::policy::Policy;
use spotkube_shared::watch::WatchIndex;

const NODE: &str = "/api/v1/nodes/spot-a";
const INSTANCE: &str = "i-0a1b2c3d4e5f60718";

fn mark() -> Action {
    Action::MarkNode {
        effect: TaintEffect::NoSchedule,
        cordon: true,
        notice: InterruptionNotice {
            kind: InterruptionKind::SpotInterruption,
            deadline: Some("2026-11-20T10:17:00Z".parse::<Timestamp>().unwrap()),
            event_id: Some("e-1".into()),
            drain_from: None,
            source: None,
        },
    }
}

/// The patch is made under the resourceVersion of the read it edited.
fn patched_under(version: &'static str) -> impl Fn(&Value) -> Result<(), String> + Send + Sync {
    move |body: &Value| match &body["metadata"]["resourceVersion"] {
        v if v == version => Ok(()),
        v => Err(format!("patched under resourceVersion {v}, not {version}")),
    }
}

/// The list of the pods on node `spot-a`, as the controller asks for it.
fn pods_on_spot_a() -> Expect {
    Expect::get("/api/v1/pods").with_query("fieldSelector=spec.nodeName%3Dspot-a")
}

/// `Err(what)` unless `holds`.
fn ensure(holds: bool, what: impl Into<String>) -> Result<(), String> {
    if holds { Ok(()) } else { Err(what.into()) }
}

/// Carries `action` out for node `spot-a` against the scripted API; the served
/// requests and the metrics registry are left to check.
async fn execute_scripted(
    script: Vec<Expect>,
    action: Action,
) -> (spotkube_controller::Result<()>, mock::Served, Registry) {
    let (client, served) = mock::client(script);
    let (actor, registry) = mock::actor(client, NodesIndex::default());
    let result = actor.execute("spot-a", vec![action], Instant::now()).await;
    (result, served, registry)
}

/// `spotkube_controller_actions_total{<labels>}` reads 1.
fn assert_action_counted(registry: &Registry, labels: &str) {
    let metrics = mock::scrape(registry);
    let line = format!("spotkube_controller_actions_total{{{labels}}} 1");
    assert!(metrics.contains(&line), "no {line} in\n{metrics}");
}

#[tokio::test]
async fn node_patch_conflict_is_retried_on_a_fresh_read() {
    let (result, served, registry) = execute_scripted(
        vec![
            Expect::get(NODE).returns(mock::node("spot-a", INSTANCE, "1")),
            Expect::patch(NODE)
                .checks(patched_under("1"))
                .fails(409, "Conflict"),
            Expect::get(NODE).returns(mock::node("spot-a", INSTANCE, "2")),
            Expect::patch(NODE)
                .checks(|body| {
                    patched_under("2")(body)?;
                    ensure(body["spec"]["unschedulable"] == true, "not cordoned")?;
                    let taint =
                        json!([{"key": "spotkube.io/interruption", "effect": "NoSchedule"}]);
                    ensure(body["spec"]["taints"] == taint, format!("taints {body}"))?;
                    let notice = &body["metadata"]["annotations"]["spotkube.io/interruption"];
                    ensure(
                        notice.as_str().is_some_and(|n| n.contains("e-1")),
                        format!("notice {notice}"),
                    )
                })
                .returns(mock::node("spot-a", INSTANCE, "3")),
        ],
        mark(),
    )
    .await;
    result.unwrap();
    served.check();
    assert_action_counted(&registry, r#"action="mark-node",outcome="ok",error="none""#);
}

#[tokio::test]
async fn conflicts_that_never_end_fail_the_action_as_a_conflict() {
    let mut script = Vec::new();
    for version in ["1", "2", "3", "4", "5"] {
        script.push(Expect::get(NODE).returns(mock::node("spot-a", INSTANCE, version)));
        script.push(Expect::patch(NODE).fails(409, "Conflict"));
    }
    let (result, served, registry) = execute_scripted(script, mark()).await;
    let error = result.unwrap_err();
    served.check();
    assert_eq!(error.category(), "conflict", "{error}");
    assert_action_counted(
        &registry,
        r#"action="mark-node",outcome="error",error="conflict""#,
    );
}

fn spot_warning(instance: &str) -> String {
    json!({
        "version": "0", "id": "4b1d2f0e-7c55-4a8e-9f1b-2d6a1c3e5f70",
        "detail-type": "EC2 Spot Instance Interruption Warning", "source": "aws.ec2",
        "account": "111122223333", "time": "2026-11-20T10:15:00Z", "region": "us-east-1",
        "resources": [format!("arn:aws:ec2:us-east-1:111122223333:instance/{instance}")],
        "detail": { "instance-id": instance, "instance-action": "terminate" },
    })
    .to_string()
}

/// The intake of a fresh term over `script`, with `spot-a` backed by [`INSTANCE`].
fn intake(script: Vec<Expect>) -> (Intake, mock::Served) {
    let (client, served) = mock::client(script);
    let nodes = NodesIndex::default();
    let node = serde_json::from_value(mock::node("spot-a", INSTANCE, "1")).unwrap();
    nodes.apply(&node);
    let (actor, _registry) = mock::actor(client, nodes);
    let intake = Intake {
        actor,
        queue_url: "http://127.0.0.1:1/queue".into(),
        visibility_timeout: Duration::from_secs(60),
        origin: Default::default(),
        planning: Planning::default(),
        concurrency: 4,
        message_deadline: Duration::from_secs(30),
        capacity_wake: None,
    };
    (intake, served)
}

#[tokio::test]
async fn intake_outcomes_delete_what_is_done_or_not_ours_and_keep_the_rest() {
    // The mapping itself: only Done and NotOurs delete the message.
    assert!(Outcome::Done.deletes() && Outcome::NotOurs.deletes());
    assert!(!Outcome::Rejected.deletes() && !Outcome::Failed.deletes());

    let cases: Vec<(&str, String, Vec<Expect>, Outcome)> = vec![
        ("garbage", "not json".into(), vec![], Outcome::Rejected),
        (
            "unknown kind",
            json!({"id": "x", "source": "aws.s3", "detail-type": "Object Created",
                   "time": "2026-11-20T10:15:00Z", "detail": {}})
            .to_string(),
            vec![],
            Outcome::Rejected,
        ),
        (
            "a Health event for another service",
            json!({
                "id": "h", "source": "aws.health", "detail-type": "AWS Health Event",
                "time": "2026-11-18T01:43:21Z",
                "detail": {"service": "RDS", "eventTypeCategory": "scheduledChange",
                           "eventTypeCode": "X", "communicationId": "c", "affectedEntities": []},
            })
            .to_string(),
            vec![],
            Outcome::NotOurs,
        ),
        (
            "an instance of another cluster",
            spot_warning("i-00000000000000001"),
            vec![],
            Outcome::NotOurs,
        ),
        (
            "a node gone meanwhile",
            spot_warning(INSTANCE),
            vec![Expect::get(NODE).fails(404, "NotFound")],
            Outcome::Done,
        ),
        (
            "a node that cannot be read",
            spot_warning(INSTANCE),
            vec![Expect::get(NODE).fails(403, "Forbidden")],
            Outcome::Failed,
        ),
        (
            // One read: the taint is patched under the resourceVersion the decision
            // was made on.
            "an acted-on node",
            spot_warning(INSTANCE),
            vec![
                Expect::get(NODE).returns(mock::node("spot-a", INSTANCE, "1")),
                Expect::patch(NODE)
                    .checks(patched_under("1"))
                    .returns(mock::node("spot-a", INSTANCE, "2")),
                pods_on_spot_a().returns(
                    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
                ),
            ],
            Outcome::Done,
        ),
        (
            // The Node changed between the read and the patch: it is read again and
            // patched under the new resourceVersion.
            "a node that changed after it was read",
            spot_warning(INSTANCE),
            vec![
                Expect::get(NODE).returns(mock::node("spot-a", INSTANCE, "1")),
                Expect::patch(NODE).fails(409, "Conflict"),
                Expect::get(NODE).returns(mock::node("spot-a", INSTANCE, "5")),
                Expect::patch(NODE)
                    .checks(patched_under("5"))
                    .returns(mock::node("spot-a", INSTANCE, "6")),
                pods_on_spot_a().returns(
                    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
                ),
            ],
            Outcome::Done,
        ),
        (
            // The taint comes from the Node alone, before any workload is read: a
            // failed read of the pods (or their owners) fails the message after it.
            "a node whose pods cannot be read",
            spot_warning(INSTANCE),
            vec![
                Expect::get(NODE).returns(mock::node("spot-a", INSTANCE, "1")),
                Expect::patch(NODE)
                    .checks(|body| {
                        ensure(
                            body["spec"]["unschedulable"] == json!(true),
                            format!("cordoned: {body}"),
                        )
                    })
                    .returns(mock::node("spot-a", INSTANCE, "2")),
                pods_on_spot_a().fails(403, "Forbidden"),
            ],
            Outcome::Failed,
        ),
    ];
    for (what, body, script, expected) in cases {
        let (intake, served) = intake(script);
        let outcome = intake.process(&body, Instant::now()).await;
        assert_eq!(outcome, expected, "{what}");
        served.check();
    }
}

fn pod(name: &str, owner: Option<(&str, &str)>) -> Value {
    let owners: Vec<Value> = owner
        .map(|(kind, owner)| {
            json!({"apiVersion": "apps/v1", "kind": kind, "name": owner, "uid": "u", "controller": true})
        })
        .into_iter()
        .collect();
    json!({
        "metadata": {"name": name, "namespace": "shop", "ownerReferences": owners},
        "spec": {"nodeName": "spot-a", "containers": []},
        "status": {"phase": "Running"},
    })
}

#[tokio::test]
async fn owners_resolve_pod_to_replicaset_to_deployment_statefulset_and_bare_pod() {
    let apps = "/apis/apps/v1/namespaces/shop";
    let (client, served) = mock::client(vec![
        pods_on_spot_a()
            .returns(json!({
                "apiVersion": "v1", "kind": "PodList", "metadata": {},
                "items": [
                    pod("web-5d4f-x", Some(("ReplicaSet", "web-5d4f"))),
                    pod("db-0", Some(("StatefulSet", "db"))),
                    pod("bare", None),
                ],
            })),
        Expect::get("/api/v1/namespaces/shop").returns(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "annotations": {"spotkube.io/enabled": "true"}},
        })),
        Expect::get(&format!("{apps}/replicasets/web-5d4f")).returns(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-5d4f", "namespace": "shop", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d", "controller": true}
            ]},
            "spec": {"selector": {}},
        })),
        Expect::get(&format!("{apps}/deployments/web")).returns(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "annotations": {"spotkube.io/reason": "e-0"}},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
        })),
        Expect::get("/apis/autoscaling/v2/namespaces/shop/horizontalpodautoscalers").returns(json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscalerList", "metadata": {},
            "items": [{
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"maxReplicas": 3, "scaleTargetRef": {"kind": "Deployment", "name": "web"}},
            }],
        })),
        Expect::get(&format!("{apps}/statefulsets/db")).returns(json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"replicas": 1, "selector": {}, "template": {}, "serviceName": "db"},
        })),
    ]);
    let views = view::pods_on(&client, "spot-a", &Policy::default())
        .await
        .unwrap();
    served.check();
    let owners: Vec<(&str, &Owner)> = views.iter().map(|v| (v.name.as_str(), &v.owner)).collect();
    let Owner::Deployment(web) = owners[0].1 else {
        panic!("web's owner: {:?}", owners[0]);
    };
    assert_eq!(
        (
            web.name.as_str(),
            web.replicas,
            web.hpa_managed,
            web.surged_for.as_deref()
        ),
        ("web", 1, true, Some("e-0"))
    );
    assert_eq!(
        owners[1],
        (
            "db-0",
            &Owner::StatefulSet {
                name: "db".into(),
                replicas: 1
            }
        )
    );
    assert_eq!(owners[2], ("bare", &Owner::None));
    assert!(
        views.iter().all(|v| v.policy.enabled),
        "namespace opt-in applies"
    );
}

const WEB: &str = "/apis/apps/v1/namespaces/shop/deployments/web";

fn restart_web() -> Action {
    Action::RestartDeployment {
        namespace: "shop".into(),
        name: "web".into(),
        reason: "e-1".into(),
    }
}

fn scale_web() -> Action {
    Action::ScaleDeployment {
        namespace: "shop".into(),
        name: "web".into(),
        from: 1,
        to: 2,
        until: "2026-11-20T10:22:00Z".parse().unwrap(),
        reason: "e-1".into(),
    }
}

#[tokio::test]
async fn a_restart_conflicting_with_a_surge_by_another_leader_restarts_nothing_twice() {
    let (result, served, registry) = execute_scripted(
        vec![
        Expect::get(WEB).returns(mock::deployment("1", 1, json!({}))),
        Expect::patch(WEB)
            .checks(|body| {
                patched_under("1")(body)?;
                let restarted = &body["spec"]["template"]["metadata"]["annotations"]
                    ["kubectl.kubernetes.io/restartedAt"];
                ensure(restarted.is_string(), format!("no restartedAt: {body}"))?;
                ensure(
                    body["metadata"]["annotations"]["spotkube.io/reason"] == "e-1",
                    "reason not recorded",
                )
            })
            .fails(409, "Conflict"),
        // Read again: the other leader restarted it for the same event.
        Expect::get(WEB).returns(mock::deployment(
            "2",
            1,
            json!({"spotkube.io/reason": "e-1"}),
        )),
    ],
        restart_web(),
    )
    .await;
    result.unwrap();
    served.check();
    assert_action_counted(&registry, r#"action="restart",outcome="ok",error="none""#);
}

#[tokio::test]
async fn a_scale_conflict_is_decided_again_and_surges_once_under_the_new_version() {
    let (result, served, registry) = execute_scripted(
        vec![
            Expect::get(WEB).returns(mock::deployment("1", 1, json!({}))),
            Expect::patch(WEB)
                .checks(patched_under("1"))
                .fails(409, "Conflict"),
            // Changed meanwhile (say, its template), still one replica and not surged.
            Expect::get(WEB).returns(mock::deployment("2", 1, json!({}))),
            Expect::patch(WEB)
                .checks(|body| {
                    patched_under("2")(body)?;
                    ensure(body["spec"]["replicas"] == 2, "not scaled to 2")?;
                    ensure(
                        body["metadata"]["labels"]["spotkube.io/surging"] == "true",
                        format!("not labelled as surging: {body}"),
                    )?;
                    let annotations = &body["metadata"]["annotations"];
                    ensure(
                        annotations["spotkube.io/surge-from"] == "1"
                            && annotations["spotkube.io/surge-until"] == "2026-11-20T10:22:00Z",
                        format!("surge not recorded: {annotations}"),
                    )
                })
                .returns(mock::deployment(
                    "3",
                    2,
                    json!({"spotkube.io/surge-from": "1"}),
                )),
            // The rollout is followed by a watch on this one Deployment, not by polling.
            Expect::get("/apis/apps/v1/namespaces/shop/deployments")
                .with_query("fieldSelector=metadata.name%3Dweb")
                .returns(json!({
                    "apiVersion": "apps/v1", "kind": "DeploymentList",
                    "metadata": {"resourceVersion": "4"},
                    "items": [mock::deployment("4", 2, json!({"spotkube.io/surge-from": "1"}))],
                })),
        ],
        scale_web(),
    )
    .await;
    result.unwrap();
    served.settled(Duration::from_secs(5)).await;
    served.check();
    assert_action_counted(&registry, r#"action="scale",outcome="ok",error="none""#);
    wait_for_metric(
        &registry,
        "spotkube_controller_receipt_to_replacement_ready_seconds_count 1",
    )
    .await;
}

#[tokio::test]
async fn a_scale_conflict_with_a_surge_already_made_scales_nothing_twice() {
    let (result, served, _registry) = execute_scripted(
        vec![
            Expect::get(WEB).returns(mock::deployment("1", 1, json!({}))),
            Expect::patch(WEB)
                .checks(patched_under("1"))
                .fails(409, "Conflict"),
            Expect::get(WEB).returns(mock::deployment(
                "2",
                2,
                json!({"spotkube.io/reason": "e-1", "spotkube.io/surge-from": "1"}),
            )),
        ],
        scale_web(),
    )
    .await;
    result.unwrap();
    served.check();
}

/// Polls the registry until it shows `needle` (work left running by an action).
async fn wait_for_metric(registry: &prometheus_client::registry::Registry, needle: &str) {
    for _ in 0..500 {
        if mock::scrape(registry).contains(needle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never counted {needle}:\n{}", mock::scrape(registry));
}

fn surging(resource_version: &str, replicas: i32, annotations: Value) -> Deployment {
    let mut d = mock::deployment(resource_version, replicas, annotations);
    d["metadata"]["labels"] = json!({"spotkube.io/surging": "true"});
    serde_json::from_value(d).unwrap()
}

#[tokio::test]
async fn scale_back_ends_due_surges_and_drops_the_label_in_the_same_write() {
    let (client, served) = mock::client(vec![
        Expect::patch(WEB).checks(|body| {
            patched_under("7")(body)?;
            ensure(body["spec"]["replicas"] == 1, "not scaled back to 1")?;
            ensure(
                body["metadata"]["labels"]["spotkube.io/surging"].is_null()
                    && body["metadata"]["labels"]
                        .as_object()
                        .is_some_and(|l| l.contains_key("spotkube.io/surging")),
                format!("label not removed: {body}"),
            )?;
            ensure(
                body["metadata"]["annotations"]["spotkube.io/surge-from"].is_null(),
                "surge record kept",
            )
        }),
        // Labelled with no surge on record: the label alone goes.
        Expect::patch(WEB).checks(|body| {
            patched_under("8")(body)?;
            ensure(
                body.get("spec").is_none() && body["metadata"].get("annotations").is_none(),
                format!("more than the label: {body}"),
            )
        }),
    ]);
    let (actor, _registry) = mock::actor(client, NodesIndex::default());
    let due = surging(
        "7",
        2,
        json!({"spotkube.io/surge-from": "1", "spotkube.io/surge-until": "2026-11-20T10:22:00Z"}),
    );
    let held = surging(
        "9",
        2,
        json!({"spotkube.io/surge-from": "1", "spotkube.io/surge-until": "2026-11-20T11:00:00Z"}),
    );
    let unrecorded = surging("8", 2, json!({}));
    let now: Timestamp = "2026-11-20T10:30:00Z".parse().unwrap();
    scale_back::scale_back_once(&actor, &[due, held, unrecorded], now)
        .await
        .unwrap();
    served.check();
}

#[tokio::test]
async fn surges_of_an_older_version_are_found_page_by_page_and_labelled() {
    let list = |items: Vec<Value>, next: &str| {
        json!({
            "apiVersion": "apps/v1", "kind": "DeploymentList",
            "metadata": {"continue": next}, "items": items,
        })
    };
    let (client, served) = mock::client(vec![
        Expect::get("/apis/apps/v1/deployments")
            .with_query("labelSelector=%21spotkube.io%2Fsurging&limit=500")
            .returns(list(vec![mock::deployment("1", 1, json!({}))], "page-2")),
        Expect::get("/apis/apps/v1/deployments")
            .with_query("continue=page-2")
            .returns(list(
                vec![mock::deployment(
                    "2",
                    2,
                    json!({"spotkube.io/surge-from": "1", "spotkube.io/surge-until": "2026-11-20T10:22:00Z"}),
                )],
                "",
            )),
        Expect::patch(WEB).checks(|body| {
            ensure(
                body == &json!({"metadata": {"labels": {"spotkube.io/surging": "true"}}}),
                format!("not just the label: {body}"),
            )
        }),
    ]);
    let (actor, _registry) = mock::actor(client, NodesIndex::default());
    let labelled = scale_back::label_unlabelled_surges(&actor).await.unwrap();
    served.check();
    assert_eq!(labelled, 1);
}

#[tokio::test]
async fn owner_facts_are_cached_across_calls_and_deployments_read_every_time() {
    let apps = "/apis/apps/v1/namespaces/shop";
    let pods = || {
        pods_on_spot_a().returns(json!({
            "apiVersion": "v1", "kind": "PodList", "metadata": {},
            "items": [pod("web-5d4f-x", Some(("ReplicaSet", "web-5d4f")))],
        }))
    };
    let web = |replicas: i32| Expect::get(WEB).returns(mock::deployment("1", replicas, json!({})));
    let (client, served) = mock::client(vec![
        pods(),
        Expect::get("/api/v1/namespaces/shop").returns(json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"},
        })),
        Expect::get(&format!("{apps}/replicasets/web-5d4f")).returns(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-5d4f", "namespace": "shop", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d", "controller": true}
            ]},
            "spec": {"selector": {}},
        })),
        web(1),
        Expect::get("/apis/autoscaling/v2/namespaces/shop/horizontalpodautoscalers").returns(
            json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscalerList",
                   "metadata": {}, "items": []}),
        ),
        // The second call: the pods and the Deployment only.
        pods(),
        web(2),
    ]);
    let cache = view::OwnerCache::default();
    let replicas = |views: Vec<spotkube_controller::decide::PodView>| match &views[0].owner {
        Owner::Deployment(d) => d.replicas,
        other => panic!("owner {other:?}"),
    };
    let policy = Policy::default();
    let first = view::pods_on_cached(&client, &cache, "spot-a", &policy);
    assert_eq!(replicas(first.await.unwrap()), 1);
    let second = view::pods_on_cached(&client, &cache, "spot-a", &policy);
    assert_eq!(
        replicas(second.await.unwrap()),
        2,
        "the Deployment is read fresh"
    );
    served.check();
}
