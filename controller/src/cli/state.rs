//! `spotkube-controller state get|set NAMESPACE/DEPLOYMENT`: an operator's view of a
//! workload's spotkube state, and a way to change it. `state capacity`: the Nodes'
//! capacity requests and the on-demand fallback Nodes.

use std::fmt::Write as _;

use clap::{Args, Subcommand};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::runtime::events::{Event, Recorder, Reporter};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;
use spotkube_shared::annotations::{self, CAPACITY_REQUEST, FALLBACK_FOR, WorkloadState};

use super::rank::Output;
use crate::capacity::request::CapacityRequest;
use crate::config::FailoverArgs;
use crate::error::{Error, KubeResultExt, Result};
use crate::fargate::transitions::{self, Failover};
use crate::fargate::{FargateRecord, record};
use crate::reconcile::capacity::STABLE_SINCE;

#[derive(Args)]
pub struct StateArgs {
    #[command(subcommand)]
    action: StateAction,
}

#[derive(Subcommand)]
enum StateAction {
    /// Print the workload's spotkube state: state, reason, timestamps, failed
    /// recoveries, the rollout in flight and when the next recovery may start.
    Get {
        workload: String,
        #[command(flatten)]
        failover: FailoverArgs,
    },
    /// Move the workload to Fargate or back to spot, as the controller does: the same
    /// patch (profile labels, maxUnavailable 0, state), followed to its end by the
    /// leader's recovery loop. `spot` skips the cooldown and the room check.
    Set {
        workload: String,
        #[arg(value_parser = parse_target)]
        state: WorkloadState,
        /// Why, recorded in `spotkube.io/reason` and the Event.
        #[arg(long, default_value = "manual")]
        reason: String,
        #[command(flatten)]
        failover: FailoverArgs,
    },
    /// List every Node's capacity request and every on-demand fallback Node.
    Capacity {
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// `fargate` or `spot`: the states a workload can be sent to (the others are the way
/// there).
fn parse_target(value: &str) -> Result<WorkloadState, String> {
    match value.parse() {
        Ok(state @ (WorkloadState::Fargate | WorkloadState::Spot)) => Ok(state),
        Ok(other) => Err(format!(
            "{other} is a transition, not a target: use fargate or spot"
        )),
        Err(e) => Err(annotations::InvalidValue::to_string(&e)),
    }
}

fn split(workload: &str) -> Result<(&str, &str)> {
    workload
        .split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
        .ok_or_else(|| Error::Invalid(format!("{workload:?}: expected NAMESPACE/DEPLOYMENT")))
}

/// The keys `state get` shows, in this order.
const SHOWN: &[&str] = &[
    annotations::STATE,
    annotations::REASON,
    annotations::MIGRATED_AT,
    annotations::SURGE_FROM,
    annotations::SURGE_UNTIL,
    annotations::FAILED_RECOVERIES,
    annotations::NEXT_RECOVERY,
    annotations::FARGATE_COOLDOWN,
    annotations::SURGE,
    annotations::SURGE_HOLD,
    annotations::FALLBACK,
];

pub async fn main(args: StateArgs) -> Result<()> {
    let client = kube::Client::try_default()
        .await
        .kube("connect", "the API server (KUBECONFIG or in-cluster)")?;
    match args.action {
        StateAction::Get { workload, failover } => {
            let (ns, name) = split(&workload)?;
            let d = Api::<Deployment>::namespaced(client, ns)
                .get(name)
                .await
                .kube("get", format_args!("deployment/{workload}"))?;
            print!("{}", describe(&workload, &d, failover.fargate_cooldown));
        }
        StateAction::Set {
            workload,
            state,
            reason,
            failover,
        } => {
            let (ns, name) = split(&workload)?;
            let done = match state {
                WorkloadState::Fargate => {
                    let settings = failover.settings().ok_or_else(|| {
                        Error::Invalid("no Fargate profile: set --fargate-profile (or SPOTKUBE_FARGATE_PROFILES) as the controller has it".into())
                    })?;
                    match transitions::fail_over(
                        &client,
                        &settings,
                        ns,
                        name,
                        &reason,
                        Timestamp::now(),
                    )
                    .await?
                    {
                        Failover::NotCovered => {
                            return Err(Error::Invalid(format!(
                                "no Fargate profile covers namespace {ns}"
                            )));
                        }
                        Failover::Already => {
                            println!(
                                "{workload}: already on Fargate (or on its way); nothing done"
                            );
                            return Ok(());
                        }
                        Failover::Done(done) => *done,
                    }
                }
                _ => {
                    let d = Api::<Deployment>::namespaced(client.clone(), ns)
                        .get(name)
                        .await
                        .kube("get", format_args!("deployment/{workload}"))?;
                    match FargateRecord::of(&d) {
                        None => {
                            println!("{workload}: not on Fargate; nothing done");
                            return Ok(());
                        }
                        Some(Err(e)) => return Err(Error::Invalid(e.to_string())),
                        Some(Ok(record)) => {
                            if let Some(rollout) = record.rollout {
                                return Err(Error::Invalid(format!(
                                    "a {} rollout is in flight since {}: wait for it to end",
                                    rollout.kind.as_str(),
                                    rollout.started
                                )));
                            }
                        }
                    }
                    transitions::recover(&client, &d, &reason, Timestamp::now())
                        .await?
                        .ok_or_else(|| Error::Conflict {
                            object: format!("deployment/{workload}"),
                            message: "changed while being read: run again".into(),
                        })?
                }
            };
            let recorder = Recorder::new(
                client.clone(),
                Reporter {
                    controller: "spotkube-controller".into(),
                    instance: Some("state-set".into()),
                },
            );
            let event = Event {
                type_: done.type_,
                reason: done.reason.into(),
                note: Some(format!("{} (by hand)", done.note)),
                action: done.reason.into(),
                secondary: None,
            };
            if let Err(error) = recorder
                .publish(&event, &done.deployment.object_ref(&()))
                .await
            {
                eprintln!("warning: the Event was not recorded: {error}");
            }
            println!(
                "{workload}: {}; the controller's recovery loop follows the rollout",
                done.note
            );
        }
        StateAction::Capacity { output } => {
            let nodes = Api::<Node>::all(client)
                .list(&ListParams::default())
                .await
                .kube("list", "nodes")?;
            let view = CapacityView::of(&nodes.items);
            let now = Timestamp::now();
            match output {
                Output::Table => print!("{}", view.table(now)),
                Output::Json => println!("{}", view.json(now)),
            }
        }
    }
    Ok(())
}

/// What `state get` prints of a workload: its annotations, the Fargate rollout in
/// flight, and when the next recovery may start.
fn describe(workload: &str, d: &Deployment, default_cooldown: std::time::Duration) -> String {
    let a = d.annotations();
    let mut out = format!(
        "{workload}: replicas {}\n",
        d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    );
    for key in SHOWN {
        let _ = writeln!(
            out,
            "  {key}: {}",
            a.get(*key).map(String::as_str).unwrap_or("-")
        );
    }
    match FargateRecord::of(d) {
        None => {}
        Some(Err(e)) => {
            let _ = writeln!(out, "  fargate record: unreadable: {e}");
        }
        Some(Ok(r)) => {
            let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "  fargate labels: {}", labels.join(","));
            match &r.rollout {
                Some(rollout) => {
                    let _ = writeln!(
                        out,
                        "  rollout in flight: {} since {}",
                        rollout.kind.as_str(),
                        rollout.started
                    );
                }
                None => {
                    let due = record::recovery_due(d, default_cooldown)
                        .map_or("now".to_string(), |t| t.to_string());
                    let _ = writeln!(out, "  next recovery: not before {due} (if spot has room)");
                }
            }
        }
    }
    out
}

/// A Node's capacity request.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRow {
    pub node: String,
    /// Seconds since the request entered its phase.
    pub age_seconds: i64,
    #[serde(flatten)]
    pub request: CapacityRequest,
}

/// An on-demand fallback Node (`spotkube.io/fallback-for`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FallbackRow {
    pub node: String,
    pub pool: String,
    /// Since when the pool's spot group has been whole (scale-back after the window).
    pub spot_stable_since: Option<String>,
}

/// A `spotkube.io/capacity-request` that does not parse (shown, not hidden).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InvalidRow {
    pub node: String,
    pub error: String,
}

/// What `state capacity` shows, from one LIST of Nodes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CapacityView {
    pub requests: Vec<(String, CapacityRequest)>,
    pub fallbacks: Vec<FallbackRow>,
    pub invalid: Vec<InvalidRow>,
}

impl CapacityView {
    pub fn of(nodes: &[Node]) -> CapacityView {
        let mut view = CapacityView::default();
        for node in nodes {
            let name = node.name_any();
            let a = node.annotations();
            match a
                .get(CAPACITY_REQUEST)
                .map(|v| CapacityRequest::from_annotation(v))
            {
                Some(Ok(request)) => view.requests.push((name.clone(), request)),
                Some(Err(e)) => view.invalid.push(InvalidRow {
                    node: name.clone(),
                    error: e.to_string(),
                }),
                None => {}
            }
            if let Some(pool) = a.get(FALLBACK_FOR) {
                view.fallbacks.push(FallbackRow {
                    node: name,
                    pool: pool.clone(),
                    spot_stable_since: a.get(STABLE_SINCE).cloned(),
                });
            }
        }
        // Oldest phase first: what has waited longest is read first.
        view.requests
            .sort_by(|a, b| (a.1.since, &a.0).cmp(&(b.1.since, &b.0)));
        view.fallbacks.sort_by(|a, b| a.node.cmp(&b.node));
        view
    }

    fn rows(&self, now: Timestamp) -> Vec<RequestRow> {
        self.requests
            .iter()
            .map(|(node, request)| RequestRow {
                node: node.clone(),
                age_seconds: now.duration_since(request.since).as_secs().max(0),
                request: request.clone(),
            })
            .collect()
    }

    pub fn json(&self, now: Timestamp) -> String {
        let value = json!({
            "requests": self.rows(now),
            "fallbacks": self.fallbacks,
            "invalid": self.invalid,
        });
        serde_json::to_string_pretty(&value).expect("capacity view serializes")
    }

    pub fn table(&self, now: Timestamp) -> String {
        let mut out = String::new();
        if self.requests.is_empty() && self.invalid.is_empty() {
            out.push_str("No capacity requests.\n");
        } else {
            let _ = writeln!(
                out,
                "{:<28} {:<12} {:<12} {:<16} {:<24} {:<8} {:<7} {:<20} {:<28} {:>6}  MESSAGE",
                "NODE",
                "PHASE",
                "TRIGGER",
                "POOL",
                "GROUP",
                "FALLBACK",
                "DESIRED",
                "REQUESTED AT",
                "REPLACEMENT",
                "AGE"
            );
            for row in self.rows(now) {
                let r = &row.request;
                let dash = |v: Option<&str>| v.unwrap_or("-").to_string();
                let desired = match (r.from, r.to) {
                    (Some(from), Some(to)) => format!("{from}->{to}"),
                    (Some(from), None) => format!("{from}->"),
                    _ => "-".into(),
                };
                let replacement = match (&r.replacement, &r.replacement_node) {
                    (Some(i), Some(n)) => format!("{i}/{n}"),
                    (Some(i), None) => i.clone(),
                    (None, Some(n)) => n.clone(),
                    (None, None) => "-".into(),
                };
                let _ = writeln!(
                    out,
                    "{:<28} {:<12} {:<12} {:<16} {:<24} {:<8} {:<7} {:<20} {:<28} {:>6}  {}",
                    row.node,
                    r.phase.as_str(),
                    r.trigger.as_str(),
                    dash(r.pool.as_deref()),
                    dash(r.group.as_deref()),
                    if r.fallback { "yes" } else { "no" },
                    desired,
                    r.requested_at
                        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
                        .unwrap_or_else(|| "-".into()),
                    replacement,
                    age(row.age_seconds),
                    dash(r.message.as_deref()),
                );
            }
            for bad in &self.invalid {
                let _ = writeln!(out, "{:<28} invalid: {}", bad.node, bad.error);
            }
        }
        if self.fallbacks.is_empty() {
            out.push_str("No on-demand fallback nodes.\n");
        } else {
            let _ = writeln!(
                out,
                "\n{:<28} {:<16} SPOT STABLE SINCE",
                "FALLBACK NODE", "POOL"
            );
            for f in &self.fallbacks {
                let _ = writeln!(
                    out,
                    "{:<28} {:<16} {}",
                    f.node,
                    f.pool,
                    f.spot_stable_since.as_deref().unwrap_or("-")
                );
            }
        }
        out
    }
}

/// `kubectl`-style age: `45s`, `12m`, `5h`, `3d`.
fn age(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kube::api::ObjectMeta;

    use super::*;
    use crate::capacity::request::{Phase, Trigger};

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn node(name: &str, annotations: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn nodes() -> Vec<Node> {
        let t0 = at("2026-12-01T10:00:00Z");
        let mut requested = CapacityRequest::wanted(Trigger::Rebalance, None, t0)
            .enter(Phase::Requested, at("2026-12-01T10:00:05Z"));
        requested.pool = Some("web".into());
        requested.group = Some("web-spot".into());
        requested.from = Some(3);
        requested.to = Some(4);
        requested.requested_at = Some(at("2026-12-01T10:00:05Z"));
        let mut fell_back = CapacityRequest::wanted(Trigger::Interruption, None, t0)
            .enter(Phase::Ready, at("2026-12-01T09:00:00Z"));
        fell_back.pool = Some("web".into());
        fell_back.group = Some("web-od".into());
        fell_back.fallback = true;
        fell_back.replacement = Some("i-0new".into());
        fell_back.replacement_node = Some("ip-10-0-9-9".into());
        fell_back.message = Some("group web-spot could not launch".into());
        let requested = requested.to_annotation();
        let fell_back = fell_back.to_annotation();
        vec![
            node("ip-10-0-1-1", &[(CAPACITY_REQUEST, requested.as_str())]),
            node("ip-10-0-2-2", &[(CAPACITY_REQUEST, fell_back.as_str())]),
            node(
                "ip-10-0-9-9",
                &[
                    (FALLBACK_FOR, "web"),
                    (STABLE_SINCE, "2026-12-01T10:01:00Z"),
                ],
            ),
            node("ip-10-0-8-8", &[(FALLBACK_FOR, "batch")]),
            node("ip-10-0-3-3", &[(CAPACITY_REQUEST, "{not json")]),
            node("ip-10-0-4-4", &[("other", "x")]),
        ]
    }

    #[test]
    fn the_view_keeps_requests_oldest_phase_first_fallbacks_and_bad_annotations() {
        let view = CapacityView::of(&nodes());
        let names: Vec<&str> = view.requests.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["ip-10-0-2-2", "ip-10-0-1-1"]);
        let fallbacks: Vec<(&str, &str, Option<&str>)> = view
            .fallbacks
            .iter()
            .map(|f| {
                (
                    f.node.as_str(),
                    f.pool.as_str(),
                    f.spot_stable_since.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            fallbacks,
            [
                ("ip-10-0-8-8", "batch", None),
                ("ip-10-0-9-9", "web", Some("2026-12-01T10:01:00Z"))
            ]
        );
        assert_eq!(view.invalid.len(), 1);
        assert_eq!(view.invalid[0].node, "ip-10-0-3-3");
    }

    #[test]
    fn the_table_shows_each_request_and_fallback_node() {
        let table = CapacityView::of(&nodes()).table(at("2026-12-01T10:04:05Z"));
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NODE"), "{table}");
        let words = |line: &str| {
            line.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let fell_back = words(lines[1]);
        assert_eq!(
            fell_back[..10],
            [
                "ip-10-0-2-2",
                "ready",
                "interruption",
                "web",
                "web-od",
                "yes",
                "-",
                "-",
                "i-0new/ip-10-0-9-9",
                "64m"
            ],
            "{table}"
        );
        assert!(
            lines[1].ends_with("group web-spot could not launch"),
            "{table}"
        );
        assert_eq!(
            words(lines[2]),
            [
                "ip-10-0-1-1",
                "requested",
                "rebalance",
                "web",
                "web-spot",
                "no",
                "3->4",
                "2026-12-01T10:00:05Z",
                "-",
                "4m",
                "-"
            ],
            "{table}"
        );
        assert!(
            lines[3].starts_with("ip-10-0-3-3") && lines[3].contains("invalid"),
            "{table}"
        );
        assert!(lines[5].starts_with("FALLBACK NODE"), "{table}");
        assert_eq!(words(lines[6]), ["ip-10-0-8-8", "batch", "-"]);
        assert_eq!(
            words(lines[7]),
            ["ip-10-0-9-9", "web", "2026-12-01T10:01:00Z"]
        );
    }

    #[test]
    fn an_empty_cluster_says_so() {
        let table = CapacityView::of(&[node("n", &[])]).table(at("2026-12-01T10:00:00Z"));
        assert_eq!(
            table,
            "No capacity requests.\nNo on-demand fallback nodes.\n"
        );
    }

    #[test]
    fn the_json_carries_every_field_and_the_phase_age() {
        let text = CapacityView::of(&nodes()).json(at("2026-12-01T10:04:05Z"));
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let first = &value["requests"][0];
        assert_eq!(first["node"], "ip-10-0-2-2");
        assert_eq!(first["phase"], "ready");
        assert_eq!(first["fallback"], true);
        assert_eq!(first["replacementNode"], "ip-10-0-9-9");
        assert_eq!(first["ageSeconds"], 3845);
        let second = &value["requests"][1];
        assert_eq!(second["trigger"], "rebalance");
        assert_eq!(
            (second["from"].as_i64(), second["to"].as_i64()),
            (Some(3), Some(4))
        );
        assert_eq!(second["requestedAt"], "2026-12-01T10:00:05Z");
        assert_eq!(second["ageSeconds"], 240);
        assert_eq!(value["fallbacks"][1]["pool"], "web");
        assert_eq!(
            value["fallbacks"][1]["spotStableSince"],
            "2026-12-01T10:01:00Z"
        );
        assert_eq!(
            value["fallbacks"][0]["spotStableSince"],
            serde_json::Value::Null
        );
        assert_eq!(value["invalid"][0]["node"], "ip-10-0-3-3");
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(119), "119s");
        assert_eq!(age(120), "2m");
        assert_eq!(age(7199), "119m");
        assert_eq!(age(7200), "2h");
        assert_eq!(age(3 * 86400), "3d");
    }

    #[test]
    fn state_capacity_parses_its_output_flag() {
        use clap::Parser;

        use crate::config::{Cli, Command};
        let cli =
            Cli::try_parse_from(["spotkube-controller", "state", "capacity", "--output=json"])
                .unwrap();
        let Some(Command::State(StateArgs {
            action: StateAction::Capacity { output },
        })) = cli.command
        else {
            panic!("not state capacity");
        };
        assert_eq!(output, Output::Json);
    }
}
