//! Polling helpers: wait until a condition holds, with a deadline and a clear error.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};

use crate::RigError;

/// How often every `wait_*` helper polls.
pub const POLL: Duration = Duration::from_millis(100);

/// Polls `probe` every 100 ms until it returns `Ok(Some(value))`, for at most `timeout`.
/// `Ok(None)` and `Err` mean "not yet"; the last error is reported on timeout.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T, RigError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("condition not met");
    loop {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            return Err(RigError::Timeout {
                what: what.into(),
                after: timeout,
                last,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Ready endpoints over every EndpointSlice of Service `namespace/service`.
pub async fn ready_endpoints(
    client: &kube::Client,
    namespace: &str,
    service: &str,
) -> Result<usize, RigError> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let slices = api
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .map_err(|e| {
            RigError::Kube(format!("list endpointslices of {namespace}/{service}: {e}"))
        })?;
    Ok(slices
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
        .count())
}

/// Polls a Service's ready endpoints every 100 ms until [`EndpointWatch::finish`]; keeps
/// the minimum: the "never zero ready endpoints" of the zero-downtime tests.
pub struct EndpointWatch {
    min: Arc<AtomicUsize>,
    samples: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl EndpointWatch {
    /// Starts polling Service `namespace/service`.
    pub fn start(client: &kube::Client, namespace: &str, service: &str) -> EndpointWatch {
        let min = Arc::new(AtomicUsize::new(usize::MAX));
        let samples = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (client, namespace, service) =
            (client.clone(), namespace.to_string(), service.to_string());
        let (m, s, st) = (min.clone(), samples.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !st.load(Ordering::Relaxed) {
                if let Ok(ready) = ready_endpoints(&client, &namespace, &service).await {
                    m.fetch_min(ready, Ordering::Relaxed);
                    s.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(POLL).await;
            }
        });
        EndpointWatch {
            min,
            samples,
            stop,
            task,
        }
    }

    /// Stops polling: (minimum ready endpoints, samples taken).
    pub async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (
            self.min.load(Ordering::Relaxed),
            self.samples.load(Ordering::Relaxed),
        )
    }
}

/// Waits until Service `namespace/service` has at least `count` ready endpoints.
pub async fn wait_for_ready_endpoints(
    client: &kube::Client,
    namespace: &str,
    service: &str,
    count: usize,
    timeout: Duration,
) -> Result<usize, RigError> {
    wait_for(
        &format!("{count} ready endpoints of {namespace}/{service}"),
        timeout,
        || async {
            let ready = ready_endpoints(client, namespace, service).await?;
            Ok((ready >= count).then_some(ready))
        },
    )
    .await
}

/// Waits until Deployment `namespace/name` has rolled out: observed its latest generation and
/// all desired replicas are updated and available.
pub async fn wait_for_rollout(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<Deployment, RigError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    wait_for(
        &format!("rollout of deployment {namespace}/{name}"),
        timeout,
        || async {
            let d = api.get(name).await?;
            let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let generation = d.metadata.generation.unwrap_or_default();
            let Some(status) = d.status.as_ref() else {
                return Ok(None);
            };
            let done = status.observed_generation.unwrap_or_default() >= generation
                && status.updated_replicas.unwrap_or_default() == desired
                && status.available_replicas.unwrap_or_default() == desired
                && status.replicas.unwrap_or_default() == desired;
            Ok(done.then_some(d))
        },
    )
    .await
}

/// Waits until `count` Nodes matching `label_selector` are Ready and free of the
/// lifecycle taints (`node.kubernetes.io/not-ready`, `.../unreachable`), i.e. the
/// scheduler may use them. New kwok nodes carry `not-ready` for a moment: a test that
/// schedules before then sees fewer feasible nodes than it created (and kube-scheduler
/// skips an extender's prioritize when fewer than two nodes pass its filters).
pub async fn wait_for_schedulable_nodes(
    client: &kube::Client,
    label_selector: &str,
    count: usize,
    timeout: Duration,
) -> Result<(), RigError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let params = ListParams::default().labels(label_selector);
    wait_for(
        &format!("{count} schedulable nodes with {label_selector}"),
        timeout,
        || async {
            let schedulable = nodes
                .list(&params)
                .await?
                .items
                .iter()
                .filter(|n| crate::nodes::is_ready(n) && !has_lifecycle_taint(n))
                .count();
            Ok((schedulable >= count).then_some(()))
        },
    )
    .await
}

fn has_lifecycle_taint(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|taints| {
            taints.iter().any(|t| {
                t.key == "node.kubernetes.io/not-ready" || t.key == "node.kubernetes.io/unreachable"
            })
        })
}
