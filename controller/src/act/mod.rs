//! Carrying decisions out against the API server. Every touched object gets a
//! Kubernetes Event; every action a metric by outcome.

mod evict;
mod surge;
mod taint;

pub use surge::end_surge;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::Instrument;

use crate::context::Context;
use crate::decide::Action;
use crate::error::Result;
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
}

impl Actor {
    pub fn new(ctx: Context, tasks: Tasks) -> Actor {
        Actor {
            ctx,
            tasks,
            evicting: Arc::default(),
        }
    }

    /// Carries out `actions` in order for the node `node_name`. Evictions run in the
    /// background until their deadline; everything else is done when this returns.
    pub async fn execute(
        &self,
        node_name: &str,
        actions: Vec<Action>,
        received: Instant,
    ) -> Result<()> {
        for action in actions {
            let label = action_label(&action);
            let span = tracing::info_span!(
                "action",
                action = label,
                object = %object_of(&action, node_name)
            );
            let result = self.act(node_name, action, received).instrument(span).await;
            self.ctx.metrics.action_result(label, &result);
            result?;
        }
        Ok(())
    }

    async fn act(&self, node_name: &str, action: Action, received: Instant) -> Result<()> {
        match action {
            Action::MarkNode {
                effect,
                cordon,
                notice,
            } => {
                let r = taint::mark(self, node_name, effect, cordon, &notice).await;
                if r.is_ok() {
                    self.ctx
                        .metrics
                        .receipt_to_taint
                        .observe(received.elapsed().as_secs_f64());
                }
                r
            }
            Action::CleanNode => taint::clean(self, node_name).await,
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
            } => surge::scale(self, &namespace, &name, from, to, until, &reason, received).await,
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

/// The object an action touches, for its span: `node/N`, `deployment/NS/N`, `pod/NS/N`.
fn object_of(action: &Action, node_name: &str) -> String {
    match action {
        Action::MarkNode { .. } | Action::CleanNode => format!("node/{node_name}"),
        Action::RestartDeployment {
            namespace, name, ..
        }
        | Action::ScaleDeployment {
            namespace, name, ..
        } => format!("deployment/{namespace}/{name}"),
        Action::Evict {
            namespace, name, ..
        } => format!("pod/{namespace}/{name}"),
    }
}

fn action_label(action: &Action) -> &'static str {
    match action {
        Action::MarkNode { .. } => "mark-node",
        Action::CleanNode => "clean-node",
        Action::RestartDeployment { .. } => "restart",
        Action::ScaleDeployment { .. } => "scale",
        Action::Evict { .. } => "evict",
    }
}
