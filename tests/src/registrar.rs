//! A node registrar: the rig's stand-in for what joins an EC2 instance to an EKS cluster
//! (bootstrap + kubelet registration) and what removes its Node when the instance is gone
//! (the cloud controller manager's node lifecycle controller).
//!
//! It polls moto's EC2 `DescribeInstances` every [`RegistrarOptions::poll`]; an instance
//! that has been `running` for [`RegistrarOptions::join_delay`] (counted from when the
//! registrar first saw it running) becomes a kwok Node built by [`FakeNode`], so it looks
//! exactly like the rig's other nodes: providerID `aws:///<az>/<instance-id>`,
//! instance-type / zone labels, `eks.amazonaws.com/capacityType` SPOT or ON_DEMAND (and
//! `karpenter.sh/capacity-type`) from the instance's `InstanceLifecycle`, plus
//! [`RegistrarOptions::labels`]. An instance that is `shutting-down`, `terminated` or gone
//! loses its Node; a `stopping` / `stopped` one keeps it (the cloud controller only taints
//! those). Each instance joins once: a Node someone else deletes while its instance runs
//! is not re-created. Node names are the rig's random `ip-10-…` names, not moto's private
//! DNS names (moto's /20 subnets would collide across the private motos of one cluster).
//!
//! Joins and leaves are logged with `tracing` (target `spotkube_rig::registrar`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Instance, InstanceLifecycleType};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams};
use tokio::sync::watch;

use crate::aws::Moto;
use crate::nodes::{Capacity, FakeNode};

/// What the registrar joins and how.
#[derive(Debug, Clone)]
pub struct RegistrarOptions {
    /// How long an instance must have been running before its Node appears.
    pub join_delay: Duration,
    /// How often moto is polled.
    pub poll: Duration,
    /// Only instances carrying this tag key (and value, when given) join, e.g. the
    /// cluster tag `kubernetes.io/cluster/<name>`; `None` joins every instance.
    pub instance_tag: Option<(String, Option<String>)>,
    /// Extra labels on every Node (e.g. a test's pool label).
    pub labels: BTreeMap<String, String>,
}

impl Default for RegistrarOptions {
    fn default() -> Self {
        Self {
            join_delay: Duration::from_secs(2),
            poll: Duration::from_millis(250),
            instance_tag: None,
            labels: BTreeMap::new(),
        }
    }
}

impl RegistrarOptions {
    pub fn join_delay(mut self, delay: Duration) -> Self {
        self.join_delay = delay;
        self
    }

    pub fn poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Only instances tagged `key` (`= value` when given) join.
    pub fn tagged(mut self, key: impl Into<String>, value: Option<&str>) -> Self {
        self.instance_tag = Some((key.into(), value.map(Into::into)));
        self
    }

    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
}

/// A running registrar; it stops when dropped or with [`Registrar::stop`].
#[derive(Debug)]
pub struct Registrar {
    /// Instance id → Node name, for the instances that joined and have not left.
    joined: Arc<Mutex<BTreeMap<String, String>>>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Registrar {
    /// Starts polling `moto`; Nodes are created and deleted with `client`.
    pub async fn start(moto: &Moto, client: kube::Client, options: RegistrarOptions) -> Registrar {
        crate::init();
        let ec2 = moto.ec2().await;
        let joined = Arc::new(Mutex::new(BTreeMap::new()));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(ec2, client, options, joined.clone(), stopped));
        Registrar {
            joined,
            stop,
            task: Some(task),
        }
    }

    /// The Node name of `instance_id`, while it is joined.
    pub fn node_name(&self, instance_id: &str) -> Option<String> {
        self.joined.lock().unwrap().get(instance_id).cloned()
    }

    /// Waits up to `timeout` for `instance_id` to join and its Node to be Ready; its name.
    pub async fn ready_node(
        &self,
        client: &kube::Client,
        instance_id: &str,
        timeout: Duration,
    ) -> Result<String, crate::RigError> {
        let nodes: Api<Node> = Api::all(client.clone());
        let what = format!("instance {instance_id}'s Node Ready");
        crate::wait_for(&what, timeout, || async {
            let Some(name) = self.node_name(instance_id) else {
                return Ok(None);
            };
            let ready = nodes
                .get_opt(&name)
                .await?
                .is_some_and(|n| crate::nodes::is_ready(&n));
            Ok(ready.then_some(name))
        })
        .await
    }

    /// Instance id → Node name of every joined instance.
    pub fn joined(&self) -> BTreeMap<String, String> {
        self.joined.lock().unwrap().clone()
    }

    /// Stops polling and waits for the loop to end; the Nodes stay.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What the registrar needs of one instance.
struct Seen {
    state: String,
    instance_type: String,
    zone: String,
    capacity: Capacity,
    tags: HashMap<String, String>,
}

fn seen(instance: &Instance) -> Option<(String, Seen)> {
    let id = instance.instance_id()?.to_owned();
    let capacity = match instance.instance_lifecycle() {
        Some(InstanceLifecycleType::Spot) => Capacity::Spot,
        _ => Capacity::OnDemand,
    };
    Some((
        id,
        Seen {
            state: instance
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_owned())
                .unwrap_or_default(),
            instance_type: instance
                .instance_type()
                .map(|t| t.as_str().to_owned())
                .unwrap_or_default(),
            zone: instance
                .placement()
                .and_then(|p| p.availability_zone())
                .unwrap_or_default()
                .to_owned(),
            capacity,
            tags: instance
                .tags()
                .iter()
                .filter_map(|t| {
                    Some((
                        t.key()?.to_owned(),
                        t.value().unwrap_or_default().to_owned(),
                    ))
                })
                .collect(),
        },
    ))
}

/// Every instance moto knows, all pages. The state filter is applied here, not by moto
/// (moto answers 500 to some instance filters, e.g. `instance-lifecycle`).
async fn describe(ec2: &aws_sdk_ec2::Client) -> anyhow::Result<HashMap<String, Seen>> {
    let mut all = HashMap::new();
    let mut pages = ec2.describe_instances().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page
            .map_err(|e| anyhow::anyhow!(aws_sdk_ec2::error::DisplayErrorContext(e).to_string()))?;
        for reservation in page.reservations() {
            all.extend(reservation.instances().iter().filter_map(seen));
        }
    }
    Ok(all)
}

fn wanted(options: &RegistrarOptions, instance: &Seen) -> bool {
    match &options.instance_tag {
        None => true,
        Some((key, value)) => instance
            .tags
            .get(key)
            .is_some_and(|v| value.as_ref().is_none_or(|want| want == v)),
    }
}

async fn run(
    ec2: aws_sdk_ec2::Client,
    client: kube::Client,
    options: RegistrarOptions,
    joined: Arc<Mutex<BTreeMap<String, String>>>,
    mut stopped: watch::Receiver<bool>,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    // Instance id → when it was first seen running (not yet joined).
    let mut waiting: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tokio::time::sleep(options.poll) => {}
        }
        let instances = match describe(&ec2).await {
            Ok(instances) => instances,
            Err(e) => {
                tracing::warn!("registrar: DescribeInstances failed: {e:#}");
                continue;
            }
        };
        let now = Instant::now();
        // An instance that stops running before it joins starts over if it runs again.
        waiting.retain(|id, _| instances.get(id).is_some_and(|i| i.state == "running"));
        let already: Vec<String> = joined.lock().unwrap().keys().cloned().collect();
        for (id, instance) in &instances {
            if instance.state != "running" || !wanted(&options, instance) || already.contains(id) {
                continue;
            }
            let since = *waiting.entry(id.clone()).or_insert(now);
            if now.duration_since(since) < options.join_delay {
                continue;
            }
            let mut node =
                FakeNode::ec2(&instance.instance_type, &instance.zone, instance.capacity)
                    .with_instance_id(id);
            for (k, v) in &options.labels {
                node = node.with_label(k, v);
            }
            match node.create(&client).await {
                Ok(_) => {
                    tracing::info!(
                        instance = %id,
                        node = %node.name,
                        instance_type = %instance.instance_type,
                        zone = %instance.zone,
                        capacity = ?instance.capacity,
                        "registrar: instance joined as a Node"
                    );
                    waiting.remove(id);
                    joined.lock().unwrap().insert(id.clone(), node.name.clone());
                }
                // Tried again at the next poll.
                Err(e) => tracing::warn!(instance = %id, "registrar: cannot create its Node: {e}"),
            }
        }
        // Cloned first: a guard in the `for` expression would live through the loop.
        let current = joined.lock().unwrap().clone();
        for (id, name) in current {
            let gone = instances
                .get(&id)
                .is_none_or(|i| matches!(i.state.as_str(), "shutting-down" | "terminated"));
            if !gone {
                continue;
            }
            let deleted = match nodes.delete(&name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(e),
            };
            match deleted {
                Ok(()) => {
                    let state = instances.get(&id).map_or("absent", |i| i.state.as_str());
                    tracing::info!(instance = %id, node = %name, state, "registrar: instance left, Node deleted");
                    joined.lock().unwrap().remove(&id);
                }
                Err(e) => {
                    tracing::warn!(instance = %id, node = %name, "registrar: cannot delete its Node: {e}")
                }
            }
        }
    }
}
