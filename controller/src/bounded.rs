//! Bounded concurrency with a deadline per job: the intake works on many messages at
//! once (a reclaim wave hits many nodes together) without one slow message holding up
//! another node's taint, and without taking more messages than it can start.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::supervisor::Tasks;

/// Runs jobs as the term's tasks, at most `limit` at once, each cut at `deadline`.
#[derive(Clone)]
pub struct Bounded {
    slots: Arc<Semaphore>,
    deadline: Duration,
    tasks: Tasks,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Finished,
    /// Cut at its deadline (dropped at its next await).
    TimedOut,
}

impl Bounded {
    pub fn new(limit: usize, deadline: Duration, tasks: Tasks) -> Bounded {
        Bounded {
            slots: Arc::new(Semaphore::new(limit.max(1))),
            deadline,
            tasks,
        }
    }

    /// Waits until at least one slot is free; returns how many are.
    pub async fn free(&self) -> usize {
        // Acquired and released at once: only waiting is wanted here.
        drop(self.slots.acquire().await.expect("never closed"));
        self.slots.available_permits().max(1)
    }

    /// Starts `job` as soon as a slot is free; `then` learns how it ended.
    pub async fn start<F, T>(&self, task: &'static str, job: F, then: T)
    where
        F: Future<Output = ()> + Send + 'static,
        T: FnOnce(Ended) + Send + 'static,
    {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let deadline = self.deadline;
        self.tasks.spawn(task, async move {
            let _slot = slot;
            let ended = match tokio::time::timeout(deadline, job).await {
                Ok(()) => Ended::Finished,
                Err(_) => Ended::TimedOut,
            };
            then(ended);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use prometheus_client::registry::Registry;
    use tokio::sync::{mpsc, oneshot};
    use tokio_util::sync::CancellationToken;

    fn bounded(limit: usize, deadline: Duration) -> Bounded {
        let metrics = Metrics::register(&mut Registry::default());
        Bounded::new(
            limit,
            deadline,
            Tasks::new(CancellationToken::new(), metrics),
        )
    }

    #[tokio::test]
    async fn a_stuck_job_does_not_hold_up_the_next_one_and_is_cut_at_its_deadline() {
        let runner = bounded(4, Duration::from_millis(300));
        let (ended_tx, mut ended) = mpsc::unbounded_channel();
        let slow_tx = ended_tx.clone();
        runner
            .start("slow", std::future::pending(), move |e| {
                slow_tx.send(("slow", e)).unwrap()
            })
            .await;
        let (done_tx, done) = oneshot::channel();
        runner
            .start(
                "fast",
                async move {
                    done_tx.send(()).unwrap();
                },
                move |e| ended_tx.send(("fast", e)).unwrap(),
            )
            .await;
        done.await.unwrap();
        assert_eq!(ended.recv().await, Some(("fast", Ended::Finished)));
        assert_eq!(ended.recv().await, Some(("slow", Ended::TimedOut)));
    }

    #[tokio::test]
    async fn no_more_than_the_limit_run_and_a_cut_job_frees_its_slot() {
        let runner = bounded(1, Duration::from_millis(200));
        runner.start("stuck", std::future::pending(), |_| {}).await;
        // The one slot is taken: a second job waits for it...
        let (started_tx, started) = oneshot::channel();
        let second = runner.start(
            "second",
            async move {
                started_tx.send(()).unwrap();
            },
            |_| {},
        );
        tokio::time::timeout(Duration::from_millis(50), runner.free())
            .await
            .expect_err("no slot is free while the stuck job runs");
        // ...and starts once the stuck one is cut.
        second.await;
        started.await.unwrap();
        assert_eq!(runner.free().await, 1);
    }
}
