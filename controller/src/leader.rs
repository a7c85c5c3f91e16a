//! Leader election on a coordination.k8s.io Lease: of N replicas, one runs the work;
//! when it dies, another takes over within the lease duration.

use std::future::Future;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use spotkube_shared::admin::Gate;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
    /// Seconds a lease stays valid after its last renewal.
    pub duration_secs: u64,
    pub grace_secs: u64,
}

/// The work of one term, and the token that ends it.
type Running = (CancellationToken, JoinHandle<Result<()>>);

/// Runs `work` (with a token cancelled on losing leadership) only while leader, until
/// `shutdown` resolves; then stops the work and releases the lease so a standby
/// takes over at once. Work that fails while leading ends this too, with its error:
/// the process exits and is restarted rather than hold the Lease doing nothing.
pub async fn run_while_leader<W, F>(
    client: Client,
    config: LeaderConfig,
    leading: Gate,
    work: W,
    shutdown: impl Future<Output = ()>,
) -> Result<()>
where
    W: Fn(CancellationToken) -> F,
    F: Future<Output = Result<()>> + Send + 'static,
{
    let manager = LeaseManagerBuilder::new(client, &config.lease_name)
        .with_namespace(&config.namespace)
        .with_parameters(LeaseParams::new(
            &config.identity,
            config.duration_secs,
            config.grace_secs,
        ))
        .build()
        .await
        .map_err(|e| Error::Leadership(e.to_string()))?;
    let (mut is_leader, lease_task) = manager.watch().await;
    let mut running: Option<Running> = None;
    let mut failure = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            ended = finished(&mut running) => {
                failure = Some(match ended {
                    Ok(Err(error)) => error,
                    Ok(Ok(())) => Error::TaskEnded("the leader's work".into()),
                    Err(error) => Error::TaskEnded(format!("the leader's work (panicked: {error})")),
                });
                running = None;
                leading.close();
                break;
            }
            changed = is_leader.changed() => {
                if changed.is_err() {
                    return Err(Error::Leadership("lease manager stopped".into()));
                }
                let leader = *is_leader.borrow_and_update();
                match (leader, running.is_some()) {
                    (true, false) => {
                        tracing::info!(identity = %config.identity, "became leader");
                        leading.open();
                        let token = CancellationToken::new();
                        // Supervised: awaited below when leadership or the process ends.
                        running = Some((token.clone(), tokio::spawn(work(token))));
                    }
                    (false, true) => {
                        tracing::warn!("lost leadership: stopping work");
                        leading.close();
                        if let Some((token, task)) = running.take() {
                            token.cancel();
                            let _ = task.await;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    if let Some((token, task)) = running.take() {
        token.cancel();
        let _ = task.await;
    }
    drop(is_leader);
    match lease_task.await {
        Ok(Ok(manager)) => {
            if let Err(error) = manager.release().await {
                tracing::warn!(%error, "could not release the lease");
            } else {
                tracing::info!("lease released");
            }
        }
        Ok(Err(error)) => tracing::warn!(%error, "lease manager failed"),
        Err(error) => tracing::warn!(%error, "lease task panicked"),
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Resolves when the running work ends on its own; pending while there is none.
async fn finished(
    running: &mut Option<Running>,
) -> std::result::Result<Result<()>, tokio::task::JoinError> {
    match running {
        Some((_, task)) => task.await,
        None => std::future::pending().await,
    }
}
