//! Carrying decisions out against the API server. Every touched object gets a
//! Kubernetes Event; every action a metric by outcome.

mod evict;
pub mod guard;
mod surge;
mod taint;

pub use surge::{RESTARTED_AT, end_surge, patch_as_decided, replacement_ready};

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::runtime::events::EventType;
use tracing::Instrument;

use crate::context::Context;
use crate::decide::Action;
use crate::error::{Error, Result};
use crate::fargate::transitions::{self, Failover};
use crate::supervisor::Tasks;

/// What actions need: the process's [`Context`] and the current leadership term's
/// [`Tasks`], which own the work an action leaves running (evictions, rollout
/// follows) so it ends with the term.
#[derive(Clone)]
pub struct Actor {
    pub ctx: Context,
    pub tasks: Tasks,
    /// Evictions in progress (namespace, pod): the drain reconcile asks again.
    evicting: Arc<Mutex<HashSet<(String, String)>>>,
    /// Deployments whose eviction guard this term created (namespace, name): released
    /// once their replacement is Ready.
    guarded: Arc<Mutex<HashSet<(String, String)>>>,
    /// One decision at a time per Node: the SQS intake and the external-signal watch
    /// never decide on one Node concurrently, so whichever comes second sees the
    /// first's notice and surges nothing twice.
    node_locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Actor {
    pub fn new(ctx: Context, tasks: Tasks) -> Actor {
        Actor {
            ctx,
            tasks,
            evicting: Arc::default(),
            guarded: Arc::default(),
            node_locks: Arc::default(),
        }
    }

    /// Holds Node `name` for one decide-and-act; released when the guard drops.
    pub async fn lock_node(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.node_locks.lock().expect("node locks");
            // Forget the locks nobody holds or waits for.
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            locks.entry(name.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    fn guarded(&self, namespace: &str, name: &str) {
        self.guarded
            .lock()
            .expect("guarded lock")
            .insert((namespace.to_string(), name.to_string()));
    }

    /// Whether this term guarded `namespace/name` (and forgets it).
    fn take_guard(&self, namespace: &str, name: &str) -> bool {
        self.guarded
            .lock()
            .expect("guarded lock")
            .remove(&(namespace.to_string(), name.to_string()))
    }

    /// Carries out `actions` in order for the node `node_name`. Every action is
    /// attempted: one that fails (its Deployment deleted meanwhile, an admission
    /// denial, a conflict) never keeps the others from happening. Each failure is
    /// counted and reported as a Warning Event on its object; they come back together
    /// so the caller retries (the message is redelivered, the drain reconcile asks
    /// again). Evictions run in the background until their deadline.
    pub async fn execute(
        &self,
        node_name: &str,
        actions: Vec<Action>,
        received: Instant,
    ) -> Result<()> {
        self.execute_seen(node_name, None, actions, received).await
    }

    /// [`Actor::execute`] for a Node the caller has just read: the first taint change
    /// starts from `seen` instead of reading the Node again.
    pub async fn execute_on(
        &self,
        node: &Node,
        actions: Vec<Action>,
        received: Instant,
    ) -> Result<()> {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        self.execute_seen(name, Some(node), actions, received).await
    }

    async fn execute_seen(
        &self,
        node_name: &str,
        mut seen: Option<&Node>,
        actions: Vec<Action>,
        received: Instant,
    ) -> Result<()> {
        let attempted = actions.len();
        let mut failures = Vec::new();
        for action in actions {
            let label = action_label(&action);
            let object = object_of(&action, node_name);
            let span = tracing::info_span!("action", action = label, object = %object.display());
            // Only the first change of the Node may start from what was read before it.
            let seen = match action {
                Action::MarkNode { .. } | Action::CleanNode { .. } => seen.take(),
                _ => None,
            };
            let result = self
                .act(node_name, seen, action, received)
                .instrument(span.clone())
                .await;
            self.ctx.metrics.action_result(label, &result);
            if let Err(error) = result {
                span.in_scope(|| tracing::warn!(%error, "action failed; it will be retried"));
                self.ctx
                    .event(
                        &object.reference(),
                        EventType::Warning,
                        "SpotkubeActionFailed",
                        format!("{label} for node {node_name} failed (retried): {error}"),
                    )
                    .await;
                failures.push(error);
            }
        }
        Error::collect(failures, attempted)
    }

    async fn act(
        &self,
        node_name: &str,
        seen: Option<&Node>,
        action: Action,
        received: Instant,
    ) -> Result<()> {
        match action {
            Action::MarkNode {
                effect,
                cordon,
                notice,
            } => {
                let r = taint::mark(self, node_name, seen, effect, cordon, &notice).await;
                if r.is_ok() {
                    self.ctx
                        .metrics
                        .receipt_to_taint
                        .observe(received.elapsed().as_secs_f64());
                }
                r
            }
            Action::CleanNode { uncordon } => taint::clean(self, node_name, seen, uncordon).await,
            Action::GuardEvictions {
                namespace,
                name,
                until,
            } => guard::guard(self, &namespace, &name, until).await,
            Action::RestartDeployment {
                namespace,
                name,
                reason,
            } => surge::restart(self, &namespace, &name, &reason, received).await,
            Action::ScaleDeployment {
                namespace,
                name,
                from,
                to,
                until,
                reason,
            } => {
                let surge = surge::Scaled {
                    from,
                    to,
                    until,
                    reason: &reason,
                    node: node_name,
                };
                surge::scale(self, &namespace, &name, surge, received).await
            }
            Action::FailoverToFargate {
                namespace,
                name,
                reason,
                instead,
            } => {
                let outcome = match self.ctx.fargate.as_deref() {
                    Some(settings) => {
                        transitions::fail_over(
                            &self.ctx.client,
                            settings,
                            &namespace,
                            &name,
                            &reason,
                            jiff::Timestamp::now(),
                        )
                        .await?
                    }
                    None => Failover::NotCovered,
                };
                match outcome {
                    Failover::Done(done) => {
                        self.ctx
                            .metrics
                            .fargate
                            .receipt_to_failover
                            .observe(received.elapsed().as_secs_f64());
                        transitions::announce(&self.ctx, &done).await;
                        Ok(())
                    }
                    Failover::Already => Ok(()),
                    Failover::NotCovered => {
                        self.ctx.metrics.fargate.transition("not-covered");
                        let then = match &instead {
                            Some(_) => "surged on spot instead",
                            None => "its pods are evicted as usual",
                        };
                        let object = Touched {
                            kind: "Deployment",
                            api_version: "apps/v1",
                            namespace: Some(namespace.clone()),
                            name: name.clone(),
                        };
                        self.ctx
                            .event(
                                &object.reference(),
                                EventType::Warning,
                                "SpotkubeFargateNotCovered",
                                format!("fallback fargate, but no Fargate profile covers namespace {namespace} (--fargate-profile): {then}"),
                            )
                            .await;
                        match instead {
                            Some(action) => {
                                Box::pin(self.act(node_name, None, *action, received)).await
                            }
                            None => Ok(()),
                        }
                    }
                }
            }
            Action::Evict {
                namespace,
                name,
                deadline,
            } => {
                let key = (namespace.clone(), name.clone());
                if self
                    .evicting
                    .lock()
                    .expect("evicting lock")
                    .insert(key.clone())
                {
                    let actor = self.clone();
                    self.tasks.spawn("evict", async move {
                        // Forgotten however the task ends, so the next term asks again.
                        let _forget = Forget(actor.evicting.clone(), key);
                        evict::evict_until(&actor, &namespace, &name, deadline).await;
                    });
                }
                Ok(())
            }
        }
    }
}

/// Removes an eviction from the in-progress set when dropped.
struct Forget(Arc<Mutex<HashSet<(String, String)>>>, (String, String));

impl Drop for Forget {
    fn drop(&mut self) {
        self.0.lock().expect("evicting lock").remove(&self.1);
    }
}

/// The object an action touches: named in its span, and the subject of the Event
/// when it fails.
struct Touched {
    kind: &'static str,
    api_version: &'static str,
    namespace: Option<String>,
    name: String,
}

impl Touched {
    /// `node/N`, `deployment/NS/N`, `pod/NS/N`.
    fn display(&self) -> String {
        match &self.namespace {
            Some(namespace) => format!("{}/{namespace}/{}", self.kind.to_lowercase(), self.name),
            None => format!("{}/{}", self.kind.to_lowercase(), self.name),
        }
    }

    fn reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(self.api_version.into()),
            kind: Some(self.kind.into()),
            namespace: self.namespace.clone(),
            name: Some(self.name.clone()),
            ..ObjectReference::default()
        }
    }
}

fn object_of(action: &Action, node_name: &str) -> Touched {
    let (kind, api_version, namespace, name) = match action {
        Action::MarkNode { .. } | Action::CleanNode { .. } => ("Node", "v1", None, node_name),
        Action::RestartDeployment {
            namespace, name, ..
        }
        | Action::ScaleDeployment {
            namespace, name, ..
        } => ("Deployment", "apps/v1", Some(namespace), name.as_str()),
        Action::GuardEvictions {
            namespace, name, ..
        }
        | Action::FailoverToFargate {
            namespace, name, ..
        } => ("Deployment", "apps/v1", Some(namespace), name.as_str()),
        Action::Evict {
            namespace, name, ..
        } => ("Pod", "v1", Some(namespace), name.as_str()),
    };
    Touched {
        kind,
        api_version,
        namespace: namespace.cloned(),
        name: name.to_string(),
    }
}

fn action_label(action: &Action) -> &'static str {
    match action {
        Action::MarkNode { .. } => "mark-node",
        Action::CleanNode { .. } => "clean-node",
        Action::RestartDeployment { .. } => "restart",
        Action::ScaleDeployment { .. } => "scale",
        Action::GuardEvictions { .. } => "guard",
        Action::Evict { .. } => "evict",
        Action::FailoverToFargate { .. } => "fargate-failover",
    }
}
