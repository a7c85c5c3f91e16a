//! Leader election on a coordination.k8s.io Lease: of N replicas, one runs the work;
//! when it dies, another takes over within the lease duration.
//!
//! The lease manager (kube-lease-manager) logs and retries a failed renewal without
//! telling its user, so a leader that can no longer write its Lease would act on
//! beside the standby that takes the expired Lease over. Leadership is therefore
//! trusted only while the Lease itself, as a watch shows it, carries a renewal by
//! this replica younger than the renew deadline: shorter than the lease duration, so
//! the work stops before the Lease expires and another replica may take it.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
    /// Seconds a lease stays valid after its last renewal.
    pub duration_secs: u64,
    /// Seconds before expiry the holder renews.
    pub grace_secs: u64,
}

impl LeaderConfig {
    /// How old this replica's last renewal may be while it still acts: half the
    /// grace before the expiry, so it stops before anyone may take the Lease over.
    pub fn renew_deadline(&self) -> Duration {
        Duration::from_millis(self.duration_secs * 1000 - self.grace_secs * 500)
    }
}

/// How often the renew deadline is checked against the watched Lease.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// The work of one term, and the token that ends it.
type Running = (CancellationToken, JoinHandle<Result<()>>);

/// Runs `work` (with a token cancelled on losing leadership) only while leader, until
/// `shutdown` resolves; then stops the work and releases the lease so a standby
/// takes over at once. Work that fails while leading ends this too, with its error:
/// the process exits and is restarted rather than hold the Lease doing nothing.
/// `is_leader` reads 1 while this replica acts.
pub async fn run_while_leader<W, F>(
    client: Client,
    config: LeaderConfig,
    is_leader_gauge: Gauge,
    work: W,
    shutdown: impl Future<Output = ()>,
) -> Result<()>
where
    W: Fn(CancellationToken) -> F,
    F: Future<Output = Result<()>> + Send + 'static,
{
    let manager = LeaseManagerBuilder::new(client.clone(), &config.lease_name)
        .with_namespace(&config.namespace)
        .with_parameters(LeaseParams::new(
            &config.identity,
            config.duration_secs,
            config.grace_secs,
        ))
        .build()
        .await
        .map_err(|e| Error::Leadership(e.to_string()))?;
    let (renewals, renewal_watch) = watch_renewals(client, &config);
    let (mut holder, lease_task) = manager.watch().await;
    let renew_deadline = config.renew_deadline();
    let mut check = tokio::time::interval(CHECK_EVERY);
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
                break;
            }
            changed = holder.changed() => {
                if changed.is_err() {
                    return Err(Error::Leadership("lease manager stopped".into()));
                }
            }
            _ = check.tick() => {}
        }
        let lease = renewals.borrow().clone();
        let renewed = lease
            .as_ref()
            .is_some_and(|r| r.is_fresh(&config.identity, renew_deadline, Timestamp::now()));
        let leader = *holder.borrow_and_update() && renewed;
        match (leader, running.is_some()) {
            (true, false) => {
                tracing::info!(identity = %config.identity, "became leader");
                is_leader_gauge.set(1);
                let token = CancellationToken::new();
                // Supervised: awaited below when leadership or the process ends.
                running = Some((token.clone(), tokio::spawn(work(token))));
            }
            (false, true) => {
                match lease {
                    Some(lease) if lease.holder != config.identity => {
                        tracing::warn!(holder = %lease.holder, "lost leadership: stopping work")
                    }
                    _ if !*holder.borrow() => tracing::warn!("lost leadership: stopping work"),
                    _ => tracing::warn!(
                        deadline = ?renew_deadline,
                        "lease not renewed within the renew deadline: stopping work"
                    ),
                }
                // No longer acting from here on, whatever is still winding down.
                is_leader_gauge.set(0);
                stop(running.take()).await;
            }
            _ => {}
        }
    }
    stop(running.take()).await;
    is_leader_gauge.set(0);
    renewal_watch.abort();
    drop(holder);
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

async fn stop(running: Option<Running>) {
    if let Some((token, task)) = running {
        token.cancel();
        let _ = task.await;
    }
}

/// The holder and last renewal the Lease shows.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Renewal {
    holder: String,
    renewed: Timestamp,
}

impl Renewal {
    fn of(lease: &Lease) -> Option<Renewal> {
        let spec = lease.spec.as_ref()?;
        Some(Renewal {
            holder: spec.holder_identity.clone()?,
            renewed: spec.renew_time.as_ref()?.0,
        })
    }

    /// Whether `identity` holds the Lease and renewed it less than `deadline` ago.
    /// (The renewal time was written by this replica's own clock: no skew.)
    fn is_fresh(&self, identity: &str, deadline: Duration, now: Timestamp) -> bool {
        self.holder == identity
            && now
                .duration_since(self.renewed)
                .try_into()
                .is_ok_and(|age: Duration| age < deadline)
    }
}

/// Watches the Lease object: its latest holder and renewal, `None` while unknown.
fn watch_renewals(
    client: Client,
    config: &LeaderConfig,
) -> (watch::Receiver<Option<Renewal>>, JoinHandle<()>) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let (tx, rx) = watch::channel(None);
    let name = config.lease_name.clone();
    let task = tokio::spawn(async move {
        let mut leases = watcher::watch_object(api, &name).default_backoff().boxed();
        while let Some(event) = leases.next().await {
            match event {
                Ok(lease) => {
                    tx.send_replace(lease.as_ref().and_then(Renewal::of));
                }
                Err(error) => tracing::warn!(%error, "watching the Lease failed; retrying"),
            }
        }
    });
    (rx, task)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn the_renew_deadline_falls_before_the_lease_expires_and_after_the_renewal_is_due() {
        let config = LeaderConfig {
            namespace: "ns".into(),
            lease_name: "l".into(),
            identity: "me".into(),
            duration_secs: 15,
            grace_secs: 5,
        };
        // Renewed every 10 s (at expiry - grace); expires after 15 s.
        assert_eq!(config.renew_deadline(), Duration::from_millis(12_500));
    }

    #[test]
    fn only_our_own_recent_renewal_counts() {
        let renewal = Renewal {
            holder: "me".into(),
            renewed: at("2026-12-01T10:00:00Z"),
        };
        let deadline = Duration::from_millis(12_500);
        assert!(renewal.is_fresh("me", deadline, at("2026-12-01T10:00:12Z")));
        assert!(!renewal.is_fresh("me", deadline, at("2026-12-01T10:00:13Z")));
        assert!(!renewal.is_fresh("other", deadline, at("2026-12-01T10:00:01Z")));
    }
}
