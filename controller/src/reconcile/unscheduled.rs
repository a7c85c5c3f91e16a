//! The unscheduled-pods watch: every opted-in pod names spotkube's scheduler, so while
//! that scheduler is down (not deployed, crash-looping, evicted) those pods wait in
//! Pending and nothing in the cluster says why: no scheduler has written a condition
//! on them. The leader watches them and, once one has waited longer than the
//! threshold, records a Warning Event on it and counts it in
//! `spotkube_controller_unscheduled_pods`.

use std::collections::{BTreeMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use spotkube_shared::admin::{Gate, Readiness};
use spotkube_shared::watch::{self, WatchIndex};
use tokio_util::sync::CancellationToken;

use crate::context::Context;

/// The reason of the Warning Event on a pod the scheduler has not picked up.
pub const REASON: &str = "SchedulerUnavailable";

/// A pod waiting for spotkube's scheduler, as the index keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub uid: String,
    /// When the pod was created: how long it has waited is measured from here.
    pub since: Timestamp,
    pub reference: ObjectReference,
}

/// Whether no scheduler has looked at `pod` yet: not bound, not being deleted, and no
/// `PodScheduled` condition, or a False one without a reason. A scheduler that tried
/// and failed always says why (`Unschedulable`), and a pod held by scheduling gates
/// says `SchedulingGated`: neither is the scheduler being down.
pub fn awaits_scheduler(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some()
        || pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some()
    {
        return false;
    }
    let scheduled = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"));
    match scheduled {
        None => true,
        Some(c) => c.status == "False" && c.reason.as_deref().unwrap_or("").is_empty(),
    }
}

/// What a [`PodIndex`] keeps of a pod it tracks.
pub trait Tracked: Clone + Send + 'static {
    /// `None`: the pod is not (or no longer) tracked.
    fn read(pod: &Pod) -> Option<Self>;
    fn uid(&self) -> &str;
    /// Since when the pod has waited.
    fn since(&self) -> Timestamp;
}

impl Tracked for Waiting {
    fn read(pod: &Pod) -> Option<Waiting> {
        if !awaits_scheduler(pod) {
            return None;
        }
        Some(Waiting {
            uid: pod.uid()?,
            since: pod.creation_timestamp()?.0,
            reference: pod.object_ref(&()),
        })
    }

    fn uid(&self) -> &str {
        &self.uid
    }

    fn since(&self) -> Timestamp {
        self.since
    }
}

/// Tracked pods by uid; fed by the shared watch driver.
pub struct PodIndex<T> {
    inner: Arc<Mutex<BTreeMap<String, T>>>,
}

/// The pods waiting for the scheduler.
pub type WaitingPods = PodIndex<Waiting>;

impl<T> Clone for PodIndex<T> {
    fn clone(&self) -> Self {
        PodIndex {
            inner: self.inner.clone(),
        }
    }
}

impl<T> Default for PodIndex<T> {
    fn default() -> Self {
        PodIndex {
            inner: Arc::default(),
        }
    }
}

impl<T: Tracked> PodIndex<T> {
    /// Pods that have waited longer than `after` at `now`, oldest first.
    pub fn overdue(&self, now: Timestamp, after: Duration) -> Vec<T> {
        let mut overdue: Vec<T> = self
            .lock()
            .values()
            .filter(|w| waited(w.since(), now) > after)
            .cloned()
            .collect();
        overdue.sort_by_key(|w| w.since());
        overdue
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.lock().contains_key(uid)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, T>> {
        self.inner.lock().expect("pod index lock")
    }
}

/// How long a pod has waited at `now` since `since` (zero if its clock is ahead of ours).
pub fn waited(since: Timestamp, now: Timestamp) -> Duration {
    now.duration_since(since)
        .try_into()
        .unwrap_or(Duration::ZERO)
}

impl<T: Tracked> WatchIndex<Pod> for PodIndex<T> {
    type Entry = T;

    fn entry(&self, pod: &Pod) -> Option<T> {
        T::read(pod)
    }

    fn reset(&self, entries: Vec<T>) {
        *self.lock() = entries
            .into_iter()
            .map(|w| (w.uid().to_string(), w))
            .collect();
    }

    fn apply(&self, pod: &Pod) {
        let mut inner = self.lock();
        match T::read(pod) {
            Some(tracked) => inner.insert(tracked.uid().to_string(), tracked),
            None => inner.remove(&pod.uid().unwrap_or_default()),
        };
    }

    fn delete(&self, pod: &Pod) {
        self.lock().remove(&pod.uid().unwrap_or_default());
    }
}

/// The pods already reported this term: each once; a pod that leaves the index
/// (scheduled, deleted) is forgotten, so it is reported again if it comes back.
#[derive(Debug, Default)]
pub struct Reported(HashSet<String>);

impl Reported {
    /// Forgets the pods `index` no longer tracks.
    pub fn forget_gone<T: Tracked>(&mut self, index: &PodIndex<T>) {
        self.0.retain(|uid| index.contains(uid));
    }

    /// `true` the first time for `uid`.
    pub fn first_time(&mut self, uid: &str) -> bool {
        self.0.insert(uid.to_string())
    }
}

/// How often to look: often enough that a report comes soon after `after`.
pub fn poll_every(after: Duration) -> Duration {
    (after / 4).clamp(Duration::from_secs(1), Duration::from_secs(15))
}

/// Watches the pods matching `fields` into `index` until dropped (the driver retries
/// watch errors with backoff: it never ends on its own); `synced` opens once listed.
pub fn watch_pods<'a, T: Tracked>(
    ctx: &Context,
    fields: &str,
    index: &'a PodIndex<T>,
    synced: &'a Gate,
    what: &'a str,
) -> impl Future<Output = ()> + Send + 'a {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(fields);
    watch::watch(pods, config, index, synced, what)
}

/// Drives `watch` for `every` and then until `synced` is open: `true` when it is time
/// to look, `false` once `stop` fires.
pub async fn next_tick<F: Future<Output = ()>>(
    mut watch: Pin<&mut F>,
    synced: &Gate,
    every: Duration,
    stop: &CancellationToken,
) -> bool {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = &mut watch => return false,
            _ = tokio::time::sleep(every) => {
                if synced.is_open() {
                    return true;
                }
            }
        }
    }
}

/// What the watch looks for.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The scheduler opted-in pods name (`spotkube-scheduler`).
    pub scheduler_name: String,
    /// How long a pod may wait before it is reported.
    pub after: Duration,
}

impl Settings {
    /// Only Pending, unbound pods of spotkube's scheduler: the API server filters.
    pub fn field_selector(&self) -> String {
        format!(
            "spec.schedulerName={},status.phase=Pending,spec.nodeName=",
            self.scheduler_name
        )
    }

    fn every(&self) -> Duration {
        poll_every(self.after)
    }
}

/// Watches the scheduler's pending pods until `stop`; reports each overdue pod once per
/// term and keeps the gauge current.
pub async fn run(ctx: Context, settings: Settings, stop: CancellationToken) {
    let index = WaitingPods::default();
    let synced = Readiness::default().gate("unscheduled pods");
    let fields = settings.field_selector();
    let watch = watch_pods(&ctx, &fields, &index, &synced, "unscheduled pods");
    let mut watch = std::pin::pin!(watch);
    let mut reported = Reported::default();
    while next_tick(watch.as_mut(), &synced, settings.every(), &stop).await {
        report(&ctx, &settings, &index, &mut reported).await;
    }
    // A former leader no longer knows: leave the count to the new one.
    ctx.metrics.unscheduled_pods.set(0);
}

/// Sets the gauge and records one Warning Event on each newly overdue pod.
async fn report(ctx: &Context, settings: &Settings, index: &WaitingPods, reported: &mut Reported) {
    let now = Timestamp::now();
    let overdue = index.overdue(now, settings.after);
    ctx.metrics.unscheduled_pods.set(overdue.len() as i64);
    reported.forget_gone(index);
    for pod in overdue {
        if !reported.first_time(&pod.uid) {
            continue;
        }
        let waited = waited(pod.since, now).as_secs();
        let name = pod.reference.name.as_deref().unwrap_or_default();
        let namespace = pod.reference.namespace.as_deref().unwrap_or_default();
        tracing::warn!(
            pod = %format!("{namespace}/{name}"),
            waited,
            scheduler = %settings.scheduler_name,
            "pod not picked up by its scheduler"
        );
        let note = format!(
            "{} has not picked this pod up for {waited} s: is the {} Deployment \
             running? (kubectl -n spotkube-system get deploy,pods -l \
             app.kubernetes.io/name=spotkube-scheduler)",
            settings.scheduler_name, settings.scheduler_name
        );
        ctx.event(&pod.reference, EventType::Warning, REASON, note)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::api::ObjectMeta;
    use kube::runtime::watcher::Event;

    use super::*;

    const T0: &str = "2026-11-20T10:00:00Z";

    fn pod(uid: &str, created: &str, node: Option<&str>, scheduled: Option<(&str, &str)>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("pod-{uid}")),
                namespace: Some("shop".into()),
                uid: Some(uid.into()),
                creation_timestamp: Some(Time(created.parse().unwrap())),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(Into::into),
                scheduler_name: Some("spotkube-scheduler".into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                conditions: scheduled.map(|(status, reason)| {
                    vec![PodCondition {
                        type_: "PodScheduled".into(),
                        status: status.into(),
                        reason: Some(reason.into()).filter(|r: &String| !r.is_empty()),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    fn at(offset_secs: i64) -> Timestamp {
        T0.parse::<Timestamp>().unwrap() + jiff::SignedDuration::from_secs(offset_secs)
    }

    #[test]
    fn only_pods_no_scheduler_has_looked_at_await_it() {
        assert!(awaits_scheduler(&pod("a", T0, None, None)));
        assert!(awaits_scheduler(&pod("b", T0, None, Some(("False", "")))));
        // The scheduler looked and said why: it is running.
        assert!(!awaits_scheduler(&pod(
            "c",
            T0,
            None,
            Some(("False", "Unschedulable"))
        )));
        assert!(!awaits_scheduler(&pod(
            "d",
            T0,
            None,
            Some(("False", "SchedulingGated"))
        )));
        assert!(!awaits_scheduler(&pod("e", T0, None, Some(("True", "")))));
        assert!(!awaits_scheduler(&pod("f", T0, Some("node-1"), None)));
        let mut deleting = pod("g", T0, None, None);
        deleting.metadata.deletion_timestamp = Some(Time(at(5)));
        assert!(!awaits_scheduler(&deleting));
    }

    #[test]
    fn overdue_pods_are_those_waiting_past_the_threshold_and_leave_once_scheduled() {
        let index = WaitingPods::default();
        let gate = Readiness::default().gate("test");
        let events = vec![
            Event::Init,
            Event::InitApply(pod("old", T0, None, None)),
            Event::InitApply(pod("young", "2026-11-20T10:00:50Z", None, None)),
            Event::InitApply(pod("seen", T0, None, Some(("False", "Unschedulable")))),
            Event::InitDone,
        ];
        let feed = |events: Vec<Event<Pod>>| {
            futures::executor::block_on(watch::drive(
                futures::stream::iter(events.into_iter().map(Ok)),
                &index,
                &gate,
                "test",
            ))
        };
        feed(events);
        let after = Duration::from_secs(60);
        let uids = |now| {
            index
                .overdue(now, after)
                .into_iter()
                .map(|w| w.uid)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            uids(at(60)),
            Vec::<String>::new(),
            "exactly 60 s is not over"
        );
        assert_eq!(uids(at(61)), ["old"]);
        assert_eq!(uids(at(200)), ["old", "young"], "oldest first");
        let overdue = index.overdue(at(61), after);
        assert_eq!(overdue[0].reference.kind.as_deref(), Some("Pod"));
        assert_eq!(overdue[0].reference.namespace.as_deref(), Some("shop"));

        // Bound at last, and the young one deleted: nothing left.
        feed(vec![
            Event::Apply(pod("old", T0, Some("node-1"), Some(("True", "")))),
            Event::Delete(pod("young", "2026-11-20T10:00:50Z", None, None)),
        ]);
        assert!(uids(at(200)).is_empty());
        assert!(!index.contains("old"));
    }

    #[test]
    fn the_watch_asks_the_api_server_for_unbound_pending_pods_of_the_scheduler() {
        let settings = Settings {
            scheduler_name: "spotkube-scheduler".into(),
            after: Duration::from_secs(60),
        };
        assert_eq!(
            settings.field_selector(),
            "spec.schedulerName=spotkube-scheduler,status.phase=Pending,spec.nodeName="
        );
        assert_eq!(settings.every(), Duration::from_secs(15));
        let quick = Settings {
            after: Duration::from_secs(2),
            ..settings
        };
        assert_eq!(quick.every(), Duration::from_secs(1));
    }
}
