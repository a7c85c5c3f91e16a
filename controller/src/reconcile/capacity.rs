//! The capacity reconcile: carries every Node's capacity request (see
//! [`crate::capacity::request`]) one step further per pass, and scales back on-demand
//! fallback Nodes once their pool's spot group is back and stable.
//!
//! Replacement before removal: a Node at risk is drained only once a new Node of its
//! pool is Ready, and is then terminated through its group with the desired capacity
//! lowered, so the group ends at its size. Every step is recorded on the Node before
//! the next is taken; the intake only records that a replacement is wanted and wakes
//! this loop.
//!
//! Requests are carried out one at a time (one loop): two requests for one group never
//! read the same desired capacity.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_autoscaling::types::Activity;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;
use spotkube_shared::annotations::{
    CAPACITY_REQUEST, FALLBACK_FOR, InterruptionKind, InterruptionNotice,
};
use spotkube_shared::node::NodeIdentity;
use spotkube_shared::ranking::{CONFIGMAP_KEY, Ranking};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::act::Actor;
use crate::capacity::CapacityType;
use crate::capacity::activity::{self, Outcome};
use crate::capacity::asg::{self, Request, Termination};
use crate::capacity::ice::{Offering, Reason};
use crate::capacity::launcher::{self, Launch, LaunchPool, LaunchRequest};
use crate::capacity::metrics::labels;
use crate::capacity::pools::{self, DiscoveryConfig, Pools};
use crate::capacity::request::{self, CapacityRequest, Phase, Trigger};
use crate::decide::{Action, Owner, TaintEffect};
use crate::error::{Error, KubeResultExt, Result};

/// How the loop works (flags of `run`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub discovery: DiscoveryConfig,
    /// How long a request waits for a Ready replacement before the fallback
    /// (`--capacity-timeout`; an interruption waits what its deadline leaves).
    pub timeout: Duration,
    /// At-risk Nodes drained at once after rebalance recommendations
    /// (`--capacity-max-drains`); interruptions are never held back.
    pub max_drains: usize,
    /// A rebalance left without capacity is unmarked after this (`--rebalance-expiry`).
    pub rebalance_expiry: Duration,
    /// How long a pool's spot group must be whole before its on-demand fallback Nodes
    /// are drained (`--fallback-stable-window`).
    pub stable_window: Duration,
    pub every: Duration,
    /// The published ranking (`--ranking-configmap`): launch-template pools walk it.
    pub ranking_configmap: (String, String),
}

/// The loop and what it needs.
#[derive(Clone)]
pub struct CapacityLoop {
    pub actor: Actor,
    pub autoscaling: aws_sdk_autoscaling::Client,
    /// Launch-template pools launch and terminate through EC2.
    pub ec2: aws_sdk_ec2::Client,
    pub settings: Settings,
    /// Woken by the intake when it records a request, so the request is sent at once.
    pub wake: Arc<Notify>,
}

/// Records on Node `node` what the event makes of its capacity request (see
/// [`request::after_event`]) and wakes the loop. The intake calls it after marking the
/// Node.
pub async fn record_wanted(
    actor: &Actor,
    wake: &Notify,
    node: &Node,
    trigger: Trigger,
    deadline: Option<Timestamp>,
) -> Result<()> {
    let current = node
        .annotations()
        .get(CAPACITY_REQUEST)
        .and_then(|v| CapacityRequest::from_annotation(v).ok());
    let Some(next) = request::after_event(current.as_ref(), trigger, deadline, Timestamp::now())
    else {
        return Ok(());
    };
    write(actor, &node.name_any(), &next).await?;
    wake.notify_one();
    Ok(())
}

async fn write(actor: &Actor, node: &str, request: &CapacityRequest) -> Result<()> {
    let api: Api<Node> = Api::all(actor.ctx.client.clone());
    let patch =
        json!({ "metadata": { "annotations": { CAPACITY_REQUEST: request.to_annotation() } } });
    api.patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .kube("patch", format_args!("node/{node}"))?;
    Ok(())
}

fn reference(node: &Node) -> k8s_openapi::api::core::v1::ObjectReference {
    node.object_ref(&())
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// What one pass knows across Nodes.
struct Pass<'a> {
    run: &'a CapacityLoop,
    nodes: Api<Node>,
    /// Discovered once per pass, when a step needs it.
    pools: Option<Pools>,
    launch_pools: Option<Vec<LaunchPool>>,
    /// Each group's state and scaling activities, read once per pass: every request of
    /// a group is judged from the same read.
    outcomes: HashMap<String, (Timestamp, pools::Group, Vec<Activity>)>,
    /// Instances already paired with a Node.
    claimed: HashSet<String>,
    /// At-risk Nodes draining after a rebalance (or a scale-back) now.
    draining: usize,
    now: Timestamp,
}

impl CapacityLoop {
    pub async fn run(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.settings.every) => {}
                _ = self.wake.notified() => {}
            }
            if let Err(error) = self.pass().await {
                tracing::warn!(%error, "capacity pass failed");
            }
        }
    }

    /// One pass over every Node with capacity work.
    pub async fn pass(&self) -> Result<()> {
        let names = self.actor.ctx.nodes.with_capacity_work();
        let nodes: Api<Node> = Api::all(self.actor.ctx.client.clone());
        let mut requests = Vec::new();
        let mut fallbacks = Vec::new();
        for name in names {
            let Some(node) = nodes
                .get_opt(&name)
                .await
                .kube("get", format_args!("node/{name}"))?
            else {
                continue;
            };
            match node.annotations().get(CAPACITY_REQUEST) {
                Some(value) => match CapacityRequest::from_annotation(value) {
                    Ok(request) => requests.push((node, request)),
                    Err(error) => tracing::warn!(node = %name, %error, "capacity request ignored"),
                },
                None if node.annotations().contains_key(FALLBACK_FOR) => fallbacks.push(node),
                None => {}
            }
        }
        let pending = requests
            .iter()
            .filter(|(_, r)| r.phase.is_pending())
            .count();
        self.actor.ctx.metrics.capacity.pending.set(pending as i64);
        let mut pass = Pass {
            run: self,
            nodes,
            pools: None,
            launch_pools: None,
            outcomes: HashMap::new(),
            claimed: requests
                .iter()
                .filter_map(|(_, r)| r.replacement.clone())
                .collect(),
            draining: requests
                .iter()
                .filter(|(_, r)| r.phase == Phase::Draining && r.trigger != Trigger::Interruption)
                .count(),
            now: Timestamp::now(),
        };
        let attempted = requests.len() + fallbacks.len();
        let mut failures = Vec::new();
        // Oldest requests first: they pair with the first replacements.
        requests.sort_by_key(|(_, r)| r.requested_at.unwrap_or(r.since));
        let (wanted, requests): (Vec<_>, Vec<_>) = requests
            .into_iter()
            .partition(|(_, r)| r.phase == Phase::Wanted);
        if let Err(error) = pass.ask_wanted(wanted).await {
            failures.push(error);
        }
        for (node, request) in requests {
            let span = tracing::info_span!("capacity", node = %node.name_any(), phase = request.phase.as_str());
            if let Err(error) = pass.step(&node, request).instrument(span).await {
                tracing::warn!(node = %node.name_any(), %error, "capacity step failed; retried next pass");
                failures.push(error);
            }
        }
        for node in fallbacks {
            let span = tracing::info_span!("scale-back", node = %node.name_any());
            if let Err(error) = pass.scale_back(&node).instrument(span).await {
                failures.push(error);
            }
        }
        Error::collect(failures, attempted)
    }
}

impl Pass<'_> {
    fn ctx(&self) -> &crate::context::Context {
        &self.run.actor.ctx
    }

    fn autoscaling(&self) -> &aws_sdk_autoscaling::Client {
        &self.run.autoscaling
    }

    async fn pools(&mut self) -> Result<&Pools> {
        if self.pools.is_none() {
            let found = pools::discover(self.autoscaling(), &self.run.settings.discovery).await?;
            for skipped in &found.skipped {
                tracing::debug!(group = %skipped.group, reason = %skipped.reason, "group not a pool");
            }
            self.pools = Some(found);
        }
        Ok(self.pools.as_ref().expect("discovered"))
    }

    async fn save(&self, node: &Node, request: &CapacityRequest) -> Result<()> {
        write(&self.run.actor, &node.name_any(), request).await
    }

    async fn event(&self, node: &Node, type_: EventType, reason: &str, note: String) {
        self.ctx()
            .event(&reference(node), type_, reason, note)
            .await;
    }

    async fn step(&mut self, node: &Node, request: CapacityRequest) -> Result<()> {
        match request.phase {
            Phase::Wanted => self.wanted(node, request).await,
            Phase::Requesting => self.requesting(node, request).await,
            Phase::Requested => self.requested(node, request).await,
            Phase::Ready => self.ready(node, request).await,
            Phase::Draining => self.draining(node, request).await,
            Phase::Unavailable => self.unavailable(node, request).await,
            Phase::Terminated | Phase::NoPool => Ok(()),
        }
    }

    /// Asks for every `wanted` request: those of Auto Scaling pools together, one
    /// `SetDesiredCapacity` per group for all of its requests of this pass (a burst of
    /// recommendations costs one call per group, not one per node); the others one by
    /// one.
    async fn ask_wanted(&mut self, wanted: Vec<(Node, CapacityRequest)>) -> Result<()> {
        let attempted = wanted.len();
        let mut failures = Vec::new();
        let mut by_group: BTreeMap<String, Vec<(Node, CapacityRequest)>> = BTreeMap::new();
        for (node, request) in wanted {
            let span = tracing::info_span!("capacity", node = %node.name_any(), phase = "wanted");
            match self
                .group_of(&node, &request)
                .instrument(span.clone())
                .await
            {
                Ok(Some((group, pool))) => {
                    let request = CapacityRequest {
                        pool: Some(pool),
                        ..request
                    };
                    by_group.entry(group).or_default().push((node, request));
                }
                Ok(None) => {
                    if let Err(error) = self.wanted(&node, request).instrument(span).await {
                        failures.push(error);
                    }
                }
                Err(error) => failures.push(error),
            }
        }
        for (group, members) in by_group {
            let span = tracing::info_span!("capacity", group = %group, requests = members.len());
            if let Err(error) = self.ask_batch(&group, members).instrument(span).await {
                failures.push(error);
            }
        }
        Error::collect(failures, attempted)
    }

    /// The Auto Scaling group (and pool) a Node's replacement comes from; `None` when
    /// the Node is in no group (a launch-template pool, or no pool at all).
    async fn group_of(
        &mut self,
        node: &Node,
        request: &CapacityRequest,
    ) -> Result<Option<(String, String)>> {
        let identity = NodeIdentity::of(node, None);
        if request.trigger == Trigger::Interruption
            && let (Some(t), Some(z)) = (&identity.instance_type, &identity.zone)
        {
            // AWS is reclaiming this offering: launching it again would fail the same way.
            self.mark(
                Offering::new(t, z, CapacityType::Spot),
                Reason::SpotInterruption,
            );
        }
        let Some(instance) = identity.instance_id() else {
            return Ok(None);
        };
        // The group itself chooses among its types and zones (and avoids a reclaimed
        // offering); its scaling activities tell whether it could.
        Ok(self
            .pools()
            .await?
            .pool_of_instance(instance, &[])
            .map(|m| (m.group.name.clone(), m.pool.name.clone())))
    }

    /// Raises `group` once by as many as it has room for, for `members` (oldest first);
    /// the rest are capped. Each member records `requesting` with the group's desired
    /// capacity before the call, so a new leader can tell whether it was made.
    async fn ask_batch(
        &mut self,
        group: &str,
        members: Vec<(Node, CapacityRequest)>,
    ) -> Result<()> {
        let state = pools::describe_group(self.autoscaling(), group).await?;
        let room = usize::try_from(state.max - state.desired).unwrap_or(0);
        let asked = members.len().min(room);
        let to = state.desired + asked as i32;
        let mut requesting = Vec::new();
        let mut rest = Vec::new();
        for (i, (node, request)) in members.into_iter().enumerate() {
            let request = CapacityRequest {
                group: Some(group.to_string()),
                fallback: false,
                from: Some(state.desired),
                to: Some(to),
                requested_at: None,
                ..request.enter(Phase::Requesting, self.now)
            };
            if i < asked {
                self.save(&node, &request).await?;
                requesting.push((node, request));
            } else {
                rest.push((node, request));
            }
        }
        let sent = match requesting.is_empty() {
            true => false,
            false => asg::set_desired(self.autoscaling(), group, to).await?,
        };
        if !sent {
            // Nothing asked (no room, or the group changed under us): capped.
            rest.splice(0..0, requesting.drain(..));
        }
        let at = Timestamp::now();
        for (node, request) in requesting {
            let recorded = request.since;
            let request = CapacityRequest {
                requested_at: Some(at),
                ..request.enter(Phase::Requested, at)
            };
            self.save(&node, &request).await?;
            self.requested_counted(&node, &request, recorded, "spot")
                .await;
        }
        for (node, request) in rest {
            let request = CapacityRequest {
                to: None,
                ..request
            };
            self.capped(&node, request, state.max).await?;
        }
        Ok(())
    }

    /// The metrics and Event of a request sent.
    async fn requested_counted(
        &self,
        node: &Node,
        request: &CapacityRequest,
        recorded: Timestamp,
        side: &str,
    ) {
        let m = &self.ctx().metrics.capacity;
        m.recorded_to_requested.observe(
            Timestamp::now()
                .duration_since(recorded)
                .as_secs_f64()
                .max(0.0),
        );
        let pool = request.pool.clone().unwrap_or_default();
        m.requests
            .get_or_create(&labels(&pool, "capacity", side))
            .inc();
        self.event(
            node,
            EventType::Normal,
            "SpotkubeCapacityRequested",
            format!(
                "asked Auto Scaling group {} for a node to replace this one ({}): desired capacity {} -> {}{}",
                request.group.as_deref().unwrap_or_default(),
                request.trigger.as_str(),
                request.from.unwrap_or_default(),
                request.to.unwrap_or_default(),
                match request.to.zip(request.from) {
                    Some((to, from)) if to - from > 1 => {
                        format!(" (one request for {} nodes at risk)", to - from)
                    }
                    _ => String::new(),
                }
            ),
        )
        .await;
    }

    /// A Node in no Auto Scaling group: a launch-template pool, or no pool.
    async fn wanted(&mut self, node: &Node, request: CapacityRequest) -> Result<()> {
        let identity = NodeIdentity::of(node, None);
        let Some(instance) = identity.instance_id().map(str::to_string) else {
            return self
                .no_pool(node, request, "it has no AWS providerID")
                .await;
        };
        if let Some(member) = self.pools().await?.pool_of_instance(&instance, &[]) {
            // Resumed from `requesting` without a group recorded.
            let request = CapacityRequest {
                pool: Some(member.pool.name.clone()),
                ..request
            };
            let group = member.group.name.clone();
            return self.ask(node, request, &group, false).await;
        }
        self.via_launch_template(node, request, &instance, &identity)
            .await
    }

    async fn no_pool(&self, node: &Node, request: CapacityRequest, why: &str) -> Result<()> {
        let mut request = request.enter(Phase::NoPool, self.now);
        request.message = Some(why.to_string());
        self.save(node, &request).await?;
        self.ctx()
            .metrics
            .capacity
            .unavailable
            .get_or_create(&vec![("pool", "none".to_string())])
            .inc();
        self.event(
            node,
            EventType::Normal,
            "SpotkubeNoCapacityPool",
            format!("spotkube brings no replacement capacity for this node ({why}): its provisioner does; spotkube still protects its workloads"),
        )
        .await;
        Ok(())
    }

    /// Records `requesting` with the group's desired capacity, then raises it by one.
    async fn ask(
        &mut self,
        node: &Node,
        request: CapacityRequest,
        group: &str,
        fallback: bool,
    ) -> Result<()> {
        let state = pools::describe_group(self.autoscaling(), group).await?;
        let mut request = CapacityRequest {
            group: Some(group.to_string()),
            fallback,
            from: Some(state.desired),
            to: None,
            requested_at: None,
            ..request.enter(Phase::Requesting, self.now)
        };
        if !state.below_max() {
            return self.capped(node, request, state.max).await;
        }
        self.save(node, &request).await?;
        match asg::request_above(self.autoscaling(), &state).await? {
            Request::Requested { from, to } => {
                let recorded = request.since;
                request = CapacityRequest {
                    from: Some(from),
                    to: Some(to),
                    requested_at: Some(Timestamp::now()),
                    ..request.enter(Phase::Requested, Timestamp::now())
                };
                self.save(node, &request).await?;
                let side = if fallback { "on-demand" } else { "spot" };
                self.requested_counted(node, &request, recorded, side).await;
                Ok(())
            }
            Request::Capped { max } => self.capped(node, request, max).await,
        }
    }

    /// The group is at its MaxSize: the fallback, else unavailable.
    async fn capped(&mut self, node: &Node, request: CapacityRequest, max: i32) -> Result<()> {
        let group = request.group.clone().unwrap_or_default();
        let pool = request.pool.clone().unwrap_or_default();
        self.ctx()
            .metrics
            .capacity
            .requests
            .get_or_create(&labels(&pool, "capacity", "capped"))
            .inc();
        self.event(
            node,
            EventType::Warning,
            "SpotkubeCapacityCapped",
            format!(
                "Auto Scaling group {group} is at its MaxSize ({max}): no node asked for there"
            ),
        )
        .await;
        let why = format!("group {group} is at its MaxSize ({max})");
        self.fall_back(node, request, "at-max", why).await
    }

    /// The side asked could not deliver (`why`): ask the pool's on-demand group, unless
    /// this already was the fallback; else the request ends unavailable.
    async fn fall_back(
        &mut self,
        node: &Node,
        request: CapacityRequest,
        reason: &str,
        why: String,
    ) -> Result<()> {
        if request.trigger == Trigger::Rebalance && !request.fallback {
            // Spot cannot replace it: what prefers Fargate to on-demand moves now, while
            // there is time (a Fargate pod takes longer to start than a warning leaves).
            let reason = format!("rebalance recommendation, no spot replacement: {why}");
            crate::fargate::transitions::fail_over_node(self.ctx(), &node.name_any(), &reason)
                .await;
        }
        let pool_name = request.pool.clone().unwrap_or_default();
        let fallback = match request.fallback {
            true => None,
            false => self
                .pools()
                .await?
                .pools
                .get(&pool_name)
                .and_then(|p| p.fallback_for(CapacityType::Spot))
                .map(|g| g.name.clone()),
        };
        match fallback {
            Some(group) => {
                self.fallback_counted(&pool_name, reason);
                self.event(
                    node,
                    EventType::Warning,
                    "SpotkubeCapacityFallback",
                    format!("{why}: asking the pool's on-demand group {group} instead"),
                )
                .await;
                let request = CapacityRequest {
                    message: Some(why),
                    ..request
                };
                Box::pin(self.ask(node, request, &group, true)).await
            }
            None => {
                let mut request = request.enter(Phase::Unavailable, self.now);
                request.message = Some(why.clone());
                self.save(node, &request).await?;
                self.ctx()
                    .metrics
                    .capacity
                    .unavailable
                    .get_or_create(&vec![("pool", pool_name)])
                    .inc();
                let after = match request.trigger {
                    Trigger::Rebalance => format!(
                        "the node stays PreferNoSchedule with its workloads ready to move; unmarked after {} if no interruption follows",
                        humantime::format_duration(self.run.settings.rebalance_expiry)
                    ),
                    _ => "its workloads are protected without a replacement".to_string(),
                };
                self.event(
                    node,
                    EventType::Warning,
                    "SpotkubeCapacityUnavailable",
                    format!("no replacement capacity: {why}; {after}"),
                )
                .await;
                Ok(())
            }
        }
    }

    fn fallback_counted(&self, pool: &str, reason: &str) {
        self.ctx()
            .metrics
            .capacity
            .fallbacks
            .get_or_create(&labels(pool, "reason", reason))
            .inc();
    }

    fn mark(&self, offering: Offering, reason: Reason) {
        tracing::info!(%offering, reason = reason.as_str(), "offering marked unavailable");
        self.ctx().ice.mark(offering, reason);
        self.ctx()
            .metrics
            .capacity
            .offerings_marked
            .get_or_create(&vec![("reason", reason.as_str().to_string())])
            .inc();
    }

    /// A Node in no Auto Scaling group: its instance's launch-template pool, if any,
    /// launches the replacement in the Node's zone walking the zone's ranking.
    async fn via_launch_template(
        &mut self,
        node: &Node,
        request: CapacityRequest,
        instance: &str,
        identity: &NodeIdentity,
    ) -> Result<()> {
        let ec2 = self.run.ec2.clone();
        let tags = launcher::instance_tags(&ec2, instance).await?;
        if self.launch_pools.is_none() {
            self.launch_pools = Some(launcher::discover(&ec2).await?);
        }
        let pools = self.launch_pools.as_deref().unwrap_or_default();
        let (Some(pool), Some(zone)) = (
            launcher::pool_of(&tags, pools).cloned(),
            identity.zone.clone(),
        ) else {
            let why = format!(
                "no Auto Scaling group tagged {} lists instance {instance}, and no launch template tagged {} launched it",
                pools::POOL_TAG,
                launcher::POOL_TAG
            );
            return self.no_pool(node, request, &why).await;
        };
        let mut request = CapacityRequest {
            pool: Some(pool.name.clone()),
            launch_template: Some(pool.launch_template_id.clone()),
            ..request.enter(Phase::Requesting, self.now)
        };
        self.save(node, &request).await?;
        // A leader that died after the launch left it tagged with the instance it replaces.
        let launch = match launcher::replacement_of(&ec2, instance).await? {
            Some(instance_id) => Launch::Launched {
                instance_id,
                instance_type: String::new(),
                capacity: CapacityType::Unknown,
                tried: Vec::new(),
            },
            None => {
                let ranking = self.ranking().await?;
                let ask = LaunchRequest {
                    pool: &pool,
                    zone: &zone,
                    max_instances: pool.max_instances.unwrap_or(usize::MAX),
                    replaces: Some(instance),
                };
                launcher::launch_one(&ec2, &self.ctx().ice, &ranking, ask).await?
            }
        };
        match launch {
            Launch::Launched {
                instance_id,
                instance_type,
                capacity,
                tried,
            } => {
                self.marked_by_launch(&tried);
                let recorded = request.since;
                request = CapacityRequest {
                    replacement: Some(instance_id.clone()),
                    requested_at: Some(Timestamp::now()),
                    fallback: capacity == CapacityType::OnDemand,
                    ..request.enter(Phase::Requested, Timestamp::now())
                };
                self.save(node, &request).await?;
                let m = &self.ctx().metrics.capacity;
                m.recorded_to_requested.observe(
                    Timestamp::now()
                        .duration_since(recorded)
                        .as_secs_f64()
                        .max(0.0),
                );
                m.requests
                    .get_or_create(&labels(&pool.name, "capacity", capacity.as_str()))
                    .inc();
                self.event(
                    node,
                    EventType::Normal,
                    "SpotkubeCapacityRequested",
                    format!(
                        "launched instance {instance_id} ({instance_type} {}, {zone}) from pool {}'s launch template to replace this one ({})",
                        capacity.as_str(),
                        pool.name,
                        request.trigger.as_str()
                    ),
                )
                .await;
                Ok(())
            }
            Launch::Exhausted { tried } => {
                self.marked_by_launch(&tried);
                let tried: Vec<String> = tried
                    .iter()
                    .map(|(o, code)| format!("{o}: {code}"))
                    .collect();
                let why = format!(
                    "no ranked offering of zone {zone} could launch ({})",
                    if tried.is_empty() {
                        "every one is marked unavailable".to_string()
                    } else {
                        tried.join(", ")
                    }
                );
                self.fall_back(node, request, "capacity-error", why).await
            }
            Launch::Capped { running, max } => {
                let why = format!(
                    "pool {} has {running} instances, its limit is {max}",
                    pool.name
                );
                self.fall_back(node, request, "at-max", why).await
            }
        }
    }

    /// The launcher marks the offerings it found without capacity: count them.
    fn marked_by_launch(&self, tried: &[(Offering, String)]) {
        let marks = &self.ctx().metrics.capacity.offerings_marked;
        for _ in tried {
            marks
                .get_or_create(&vec![(
                    "reason",
                    Reason::CapacityError.as_str().to_string(),
                )])
                .inc();
        }
    }

    /// The published ranking, for launch-template pools.
    async fn ranking(&self) -> Result<Ranking> {
        let (namespace, name) = &self.run.settings.ranking_configmap;
        let api: Api<ConfigMap> = Api::namespaced(self.ctx().client.clone(), namespace);
        let text = api
            .get_opt(name)
            .await
            .kube("get", format_args!("configmap/{namespace}/{name}"))?
            .and_then(|c| c.data)
            .and_then(|mut d| d.remove(CONFIGMAP_KEY))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "no ranking in configmap/{namespace}/{name}: launch-template pools walk the published ranking (--publish-ranking)"
                ))
            })?;
        Ranking::from_json(&text)
            .map_err(|e| Error::Invalid(format!("configmap/{namespace}/{name}: {e}")))
    }

    /// A launch-template pool's replacement is known from the launch: wait for its
    /// Node to be Ready, up to the timeout.
    async fn launched_joined(&mut self, node: &Node, request: CapacityRequest) -> Result<()> {
        let Some(instance) = request.replacement.clone() else {
            return self
                .wanted(node, request.enter(Phase::Wanted, self.now))
                .await;
        };
        if let Some(name) = self.ctx().nodes.node_for(&instance) {
            let joined = self.nodes.get_opt(&name).await;
            let joined = joined.kube("get", format!("node/{name}"))?;
            if joined.as_ref().is_some_and(is_ready) {
                return self.replacement_ready(node, request, instance, name).await;
            }
        }
        if request.timed_out(self.run.settings.timeout, self.now) {
            let why = format!(
                "instance {instance} has no Ready node after {}",
                humantime::format_duration(request.wait_limit(self.run.settings.timeout))
            );
            return self.fall_back(node, request, "timeout", why).await;
        }
        Ok(())
    }

    /// A leader died between `requesting` and `requested`: the group tells whether the
    /// request was sent.
    async fn requesting(&mut self, node: &Node, request: CapacityRequest) -> Result<()> {
        let (Some(group), Some(from)) = (request.group.clone(), request.from) else {
            return self
                .wanted(node, request.enter(Phase::Wanted, self.now))
                .await;
        };
        let state = pools::describe_group(self.autoscaling(), &group).await?;
        if state.desired > from {
            let request = CapacityRequest {
                to: Some(request.to.unwrap_or(from + 1)),
                requested_at: Some(request.since),
                ..request.enter(Phase::Requested, request.since)
            };
            tracing::info!(
                group,
                "the request was sent before the restart; not asking again"
            );
            return self.save(node, &request).await;
        }
        let fallback = request.fallback;
        self.ask(node, request, &group, fallback).await
    }

    /// Waits for a Ready Node of a new instance of the group; a capacity error or the
    /// timeout moves the request to the fallback.
    async fn requested(&mut self, node: &Node, request: CapacityRequest) -> Result<()> {
        if request.launch_template.is_some() {
            return self.launched_joined(node, request).await;
        }
        let (Some(group), Some(at)) = (request.group.clone(), request.requested_at) else {
            return self
                .wanted(node, request.enter(Phase::Wanted, self.now))
                .await;
        };
        let outcome = self.outcome(&group, at).await?;
        match outcome {
            Outcome::Launched(instances) => {
                let ctx = self.ctx().clone();
                let nodes = self.nodes.clone();
                let mut ready = Vec::new();
                for instance in &instances {
                    if let Some(name) = ctx.nodes.node_for(instance)
                        && let Some(n) = nodes
                            .get_opt(&name)
                            .await
                            .kube("get", format_args!("node/{name}"))?
                        && is_ready(&n)
                    {
                        ready.push((instance.clone(), name));
                    }
                }
                let picked = request::pick_replacement(&instances, &self.claimed, |i| {
                    ready.iter().find(|(r, _)| r == i).map(|(_, n)| n.clone())
                });
                if let Some((instance, replacement)) = picked {
                    let instance = instance.to_string();
                    return self
                        .replacement_ready(node, request, instance, replacement)
                        .await;
                }
            }
            Outcome::CapacityError {
                message,
                instance_type,
                zone,
            } => {
                let identity = NodeIdentity::of(node, None);
                let side = if request.fallback {
                    CapacityType::OnDemand
                } else {
                    CapacityType::Spot
                };
                let t = instance_type.or(identity.instance_type);
                let z = zone.or(identity.zone);
                if let (Some(t), Some(z)) = (t, z) {
                    self.mark(Offering::new(&t, &z, side), Reason::CapacityError);
                }
                let why = format!("group {group} could not launch: {message}");
                return self.fall_back(node, request, "capacity-error", why).await;
            }
            Outcome::Pending => {}
        }
        if request.timed_out(self.run.settings.timeout, self.now) {
            let waited = request.wait_limit(self.run.settings.timeout);
            let why = format!(
                "no Ready node from group {group} within {}",
                humantime::format_duration(waited)
            );
            return self.fall_back(node, request, "timeout", why).await;
        }
        Ok(())
    }

    /// [`activity::outcome`], from one read of the group per pass (refreshed when an
    /// older request needs activities from further back).
    async fn outcome(&mut self, group: &str, since: Timestamp) -> Result<Outcome> {
        let fresh = self
            .outcomes
            .get(group)
            .is_some_and(|(from, _, _)| *from <= since);
        if !fresh {
            let state = pools::describe_group(self.autoscaling(), group).await?;
            let activities = activity::activities_since(self.autoscaling(), group, since).await?;
            self.outcomes
                .insert(group.to_string(), (since, state, activities));
        }
        let (_, state, activities) = &self.outcomes[group];
        Ok(activity::classify(activities, since, state))
    }

    async fn replacement_ready(
        &mut self,
        node: &Node,
        request: CapacityRequest,
        instance: String,
        replacement: String,
    ) -> Result<()> {
        self.claimed.insert(instance.clone());
        if request.fallback && request.launch_template.is_none() {
            // The fallback Node carries its pool: it is scaled back once spot is back.
            let pool = request.pool.clone().unwrap_or_default();
            let patch = json!({ "metadata": { "annotations": { FALLBACK_FOR: pool } } });
            self.nodes
                .patch(&replacement, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .kube("patch", format_args!("node/{replacement}"))?;
        }
        if let Some(at) = request.requested_at {
            let waited = self.now.duration_since(at).as_secs_f64().max(0.0);
            self.ctx()
                .metrics
                .capacity
                .requested_to_ready
                .observe(waited);
        }
        let request = CapacityRequest {
            replacement: Some(instance.clone()),
            replacement_node: Some(replacement.clone()),
            ..request.enter(Phase::Ready, self.now)
        };
        self.save(node, &request).await?;
        self.event(
            node,
            EventType::Normal,
            "SpotkubeReplacementReady",
            format!("replacement node {replacement} (instance {instance}) is Ready"),
        )
        .await;
        Box::pin(self.ready(node, request)).await
    }

    /// Begins the drain when the drain limit allows (an interruption's Node is being
    /// drained already).
    async fn ready(&mut self, node: &Node, request: CapacityRequest) -> Result<()> {
        let notice = node
            .annotations()
            .get(spotkube_shared::annotations::INTERRUPTION)
            .and_then(|v| InterruptionNotice::from_annotation(v).ok());
        let imminent = notice.as_ref().is_some_and(|n| n.is_imminent());
        if !imminent {
            if self.draining >= self.run.settings.max_drains {
                tracing::debug!("drain limit reached; the drain waits");
                return Ok(());
            }
            self.draining += 1;
            let event_id = notice
                .and_then(|n| n.event_id)
                .unwrap_or_else(|| format!("replacement/{}/{}", node.name_any(), request.since));
            let mark = Action::MarkNode {
                effect: TaintEffect::NoSchedule,
                cordon: true,
                notice: InterruptionNotice {
                    kind: InterruptionKind::Replacement,
                    deadline: None,
                    event_id: Some(event_id),
                    drain_from: None,
                    source: None,
                },
            };
            self.run
                .actor
                .execute(&node.name_any(), vec![mark], Instant::now())
                .await?;
        }
        let request = request.enter(Phase::Draining, self.now);
        self.save(node, &request).await
    }

    /// Once nothing that must move is left (or the deadline is near), terminates the
    /// instance through its group with the desired capacity lowered.
    async fn draining(&mut self, node: &Node, request: CapacityRequest) -> Result<()> {
        let name = node.name_any();
        let pods = self.ctx().pods_on(&name).await?;
        let left = pods
            .iter()
            .filter(|p| !p.done && !matches!(p.owner, Owner::DaemonSet | Owner::Mirror))
            .count();
        if left > 0 && !request.must_terminate(self.now) {
            tracing::debug!(left, "drain in progress");
            return Ok(());
        }
        let identity = NodeIdentity::of(node, None);
        let Some(instance) = identity.instance_id() else {
            return Ok(());
        };
        let result = match request.launch_template {
            Some(_) => {
                launcher::terminate(&self.run.ec2, instance).await?;
                Termination::Terminating { activity: None }
            }
            None => asg::terminate_with_decrement(self.autoscaling(), instance).await?,
        };
        let note = match &result {
            Termination::Terminating { .. } => format!(
                "drained{}; instance {instance} terminated through its Auto Scaling group with the desired capacity lowered{}",
                if left > 0 {
                    format!(" ({left} pods left at the deadline)")
                } else {
                    String::new()
                },
                request
                    .replacement_node
                    .as_ref()
                    .map(|r| format!(": {r} takes its place"))
                    .unwrap_or_default()
            ),
            Termination::NotInGroup => format!(
                "drained; instance {instance} is in no Auto Scaling group any more: nothing to terminate"
            ),
        };
        let pool = request.pool.clone().unwrap_or_default();
        self.ctx()
            .metrics
            .capacity
            .replaced
            .get_or_create(&labels(&pool, "trigger", request.trigger.as_str()))
            .inc();
        let request = request.enter(Phase::Terminated, self.now);
        self.save(node, &request).await?;
        self.event(node, EventType::Normal, "SpotkubeNodeTerminated", note)
            .await;
        Ok(())
    }

    /// A rebalance without capacity: after the expiry with no interruption, the Node's
    /// mark, taint and request go.
    async fn unavailable(&mut self, node: &Node, request: CapacityRequest) -> Result<()> {
        if !request.expired(self.run.settings.rebalance_expiry, self.now) {
            return Ok(());
        }
        let name = node.name_any();
        let rebalance_only = node
            .annotations()
            .get(spotkube_shared::annotations::INTERRUPTION)
            .and_then(|v| InterruptionNotice::from_annotation(v).ok())
            .is_some_and(|n| n.kind == InterruptionKind::RebalanceRecommendation);
        if rebalance_only {
            self.run
                .actor
                .execute(
                    &name,
                    vec![Action::CleanNode { uncordon: false }],
                    Instant::now(),
                )
                .await?;
        }
        let patch = json!({ "metadata": { "annotations": { CAPACITY_REQUEST: null } } });
        self.nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .kube("patch", format_args!("node/{name}"))?;
        self.ctx().metrics.capacity.expired.inc();
        self.event(
            node,
            EventType::Normal,
            "SpotkubeRebalanceExpired",
            format!(
                "no interruption followed the rebalance recommendation within {}: spotkube's mark and taint removed",
                humantime::format_duration(self.run.settings.rebalance_expiry)
            ),
        )
        .await;
        Ok(())
    }

    /// An on-demand fallback Node: once its pool's spot group has every instance it
    /// wants InService and Ready for the stable window, and no spot offering of the
    /// pool is marked unavailable, the Node is drained and terminated with decrement.
    async fn scale_back(&mut self, node: &Node) -> Result<()> {
        let pool_name = node
            .annotations()
            .get(FALLBACK_FOR)
            .cloned()
            .unwrap_or_default();
        let stable_since = node
            .annotations()
            .get(STABLE_SINCE)
            .and_then(|v| v.parse::<Timestamp>().ok());
        let spot = self
            .pools()
            .await?
            .pools
            .get(&pool_name)
            .and_then(|p| p.spot.clone());
        let whole = match &spot {
            Some(group) => self.spot_whole(group).await?,
            None => false,
        };
        let name = node.name_any();
        let set = |value: Option<String>| json!({ "metadata": { "annotations": { STABLE_SINCE: value } } });
        match (whole, stable_since) {
            (false, None) => Ok(()),
            (false, Some(_)) => {
                self.nodes
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&set(None)))
                    .await
                    .kube("patch", format_args!("node/{name}"))?;
                Ok(())
            }
            (true, None) => {
                self.nodes
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(&set(Some(self.now.to_string()))),
                    )
                    .await
                    .kube("patch", format_args!("node/{name}"))?;
                Ok(())
            }
            (true, Some(since)) => {
                let stable = Duration::try_from(self.now.duration_since(since)).unwrap_or_default();
                if stable < self.run.settings.stable_window {
                    return Ok(());
                }
                let request = CapacityRequest {
                    pool: Some(pool_name.clone()),
                    ..CapacityRequest::wanted(Trigger::ScaleBack, None, self.now)
                        .enter(Phase::Ready, self.now)
                };
                self.save(node, &request).await?;
                self.event(
                    node,
                    EventType::Normal,
                    "SpotkubeFallbackScaleBack",
                    format!(
                        "pool {pool_name}'s spot group has been whole for {}: this on-demand fallback node is drained and removed",
                        humantime::format_duration(self.run.settings.stable_window)
                    ),
                )
                .await;
                self.ready(node, request).await
            }
        }
    }

    /// Whether a spot group has every instance it wants InService, each one's Node
    /// Ready, and no offering of its Nodes marked unavailable.
    async fn spot_whole(&self, group: &pools::Group) -> Result<bool> {
        if group.in_service < group.desired || group.desired == 0 {
            return Ok(false);
        }
        for instance in &group.instances {
            let Some(name) = self.ctx().nodes.node_for(instance) else {
                return Ok(false);
            };
            let Some(node) = self
                .nodes
                .get_opt(&name)
                .await
                .kube("get", format_args!("node/{name}"))?
            else {
                return Ok(false);
            };
            let identity = NodeIdentity::of(&node, None);
            let marked = matches!((&identity.instance_type, &identity.zone), (Some(t), Some(z))
                if self.ctx().ice.is_unavailable(&Offering::new(t, z, CapacityType::Spot)));
            if !is_ready(&node) || marked {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// On a fallback Node: since when its pool's spot group has been whole.
pub const STABLE_SINCE: &str = "spotkube.io/spot-stable-since";
