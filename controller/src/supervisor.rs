//! The tasks of one leadership term, all under the term's cancellation token: when
//! leadership ends, every one of them stops, so a former leader never keeps evicting
//! or following rollouts beside the new one.
//!
//! Two kinds: the term's named loops (intake, drain, scale-back, ranking), started by
//! [`Term::start`], which watch the token themselves and finish what they hold (a batch
//! of messages); and background work of actions (an eviction retried until its
//! deadline, a rollout followed until Ready), spawned with [`Tasks::spawn`] and dropped
//! at their next await when the term ends.

use std::future::Future;

use prometheus_client::metrics::gauge::Gauge;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::error::Error;
use crate::metrics::Metrics;

/// A handle for spawning a term's background work. Cloning shares the term.
#[derive(Clone)]
pub struct Tasks {
    token: CancellationToken,
    tracker: TaskTracker,
    metrics: Metrics,
}

/// Counts a running task in `spotkube_controller_leader_tasks{task}` while alive,
/// whether it finishes, is cancelled or panics.
struct Running(Gauge);

impl Running {
    fn new(gauge: Gauge) -> Running {
        gauge.inc();
        Running(gauge)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Tasks {
    pub fn new(token: CancellationToken, metrics: Metrics) -> Tasks {
        Tasks {
            token,
            tracker: TaskTracker::new(),
            metrics,
        }
    }

    /// The term's token: cancelled when leadership ends.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Runs `work` until it finishes or the term ends, in the caller's span.
    pub fn spawn(&self, task: &'static str, work: impl Future<Output = ()> + Send + 'static) {
        let token = self.token.clone();
        let running = Running::new(self.metrics.leader_task(task));
        let work = async move {
            let _running = running;
            tokio::select! {
                _ = token.cancelled() => tracing::debug!(task, "stopped: leadership ended"),
                _ = work => {}
            }
        };
        self.tracker
            .spawn(work.instrument(tracing::Span::current()));
    }

    /// Waits for every spawned task (call after cancelling the token).
    async fn wait(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// One leadership term: its named loops and its background work.
pub struct Term {
    tasks: Tasks,
    loops: JoinSet<&'static str>,
}

impl Term {
    pub fn new(token: CancellationToken, metrics: Metrics) -> Term {
        Term {
            tasks: Tasks::new(token, metrics),
            loops: JoinSet::new(),
        }
    }

    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// Starts the loop `name`. It must return once the term's token is cancelled.
    pub fn start(&mut self, name: &'static str, work: impl Future<Output = ()> + Send + 'static) {
        let running = Running::new(self.tasks.metrics.leader_task(name));
        self.loops.spawn(
            async move {
                let _running = running;
                work.await;
                name
            }
            .instrument(tracing::info_span!("leader", task = name)),
        );
    }

    /// Runs until the token is cancelled, then waits for every loop and task to stop.
    /// A loop that ends on its own (a bug, a panic) ends the whole term with an error:
    /// a leader that no longer consumes events must not keep the Lease.
    pub async fn run(mut self) -> Result<(), Error> {
        let token = self.tasks.token.clone();
        let mut failed = None;
        tokio::select! {
            // Token first: a loop that ends because the term ended is no failure.
            biased;
            _ = token.cancelled() => {}
            Some(ended) = self.loops.join_next(), if !token.is_cancelled() => {
                let name = match ended {
                    Ok(name) => name.to_string(),
                    Err(error) => format!("a loop panicked: {error}"),
                };
                tracing::error!(task = %name, "leader loop ended while leading; ending the term");
                failed = Some(name);
                token.cancel();
            }
        }
        while let Some(ended) = self.loops.join_next().await {
            match ended {
                Ok(name) => tracing::debug!(task = name, "stopped"),
                Err(error) => tracing::error!(%error, "a leader loop panicked"),
            }
        }
        self.tasks.wait().await;
        match failed {
            Some(task) => Err(Error::TaskEnded(task)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use prometheus_client::registry::Registry;

    use super::*;

    fn metrics() -> Metrics {
        Metrics::register(&mut Registry::default())
    }

    fn running(metrics: &Metrics, task: &str) -> i64 {
        metrics.leader_task(task).get()
    }

    #[tokio::test]
    async fn cancelling_the_term_stops_loops_and_background_work() {
        let token = CancellationToken::new();
        let metrics = metrics();
        let mut term = Term::new(token.clone(), metrics.clone());
        let loop_token = token.clone();
        term.start("intake", async move { loop_token.cancelled().await });
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        term.tasks().spawn("evict", async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            flag.store(true, Ordering::SeqCst);
        });
        assert_eq!(running(&metrics, "intake"), 1);
        assert_eq!(running(&metrics, "evict"), 1);
        let cancel = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            token.cancel();
        };
        let (ran, ()) = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(term.run(), cancel)
        })
        .await
        .expect("the term stops at once");
        ran.unwrap();
        assert!(!finished.load(Ordering::SeqCst), "the eviction was dropped");
        assert_eq!(running(&metrics, "intake"), 0);
        assert_eq!(running(&metrics, "evict"), 0);
    }

    #[tokio::test]
    async fn a_loop_that_ends_on_its_own_ends_the_term_with_an_error() {
        let token = CancellationToken::new();
        let metrics = metrics();
        let mut term = Term::new(token.clone(), metrics.clone());
        let other = token.clone();
        term.start("drain", async move { other.cancelled().await });
        term.start("intake", async {});
        let error = tokio::time::timeout(Duration::from_secs(5), term.run())
            .await
            .expect("the term ends")
            .unwrap_err();
        assert_eq!(error.to_string(), "leader task intake ended while leading");
        assert!(token.is_cancelled(), "the other loops were told to stop");
        assert_eq!(running(&metrics, "drain"), 0);
    }
}
