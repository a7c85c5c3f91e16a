//! A Fargate stand-in: the rig's model of how EKS runs pods on Fargate, so spotkube's
//! end-to-end tests meet the same admission and scheduling path as on EKS.
//!
//! On EKS, Fargate is decided at admission. EKS's own mutating webhook (configuration
//! and webhook both named [`WEBHOOK_CONFIGURATION`]) sets `spec.schedulerName:
//! fargate-scheduler` on a pod whose namespace and labels match a Fargate profile's
//! selector; the `fargate-scheduler` then starts one micro-VM per pod, which registers
//! as a Node `fargate-ip-…` (label `eks.amazonaws.com/compute-type: fargate`, taint
//! `eks.amazonaws.com/compute-type=fargate:NoSchedule`), and binds the pod to it. The
//! Node lives exactly as long as its pod.
//!
//! The stand-in does both, in-process:
//!
//! - **The webhook**: HTTPS on 127.0.0.1 with a serving certificate from the cluster CA,
//!   registered cluster-wide for Pod CREATE with `failurePolicy: Ignore`, `sideEffects:
//!   None`, `reinvocationPolicy: Never` and a [`WEBHOOK_TIMEOUT_SECONDS`] timeout. That is
//!   what the stand-in assumes EKS registers: the webhook runs once, before spotkube's
//!   (admission order is by configuration name, and `0500-…` sorts first), so a label
//!   another webhook adds later never sends a pod to Fargate. It answers a real
//!   `AdmissionReview`: a pod whose namespace (from the request) and labels match a served
//!   profile gets a JSONPatch setting `/spec/schedulerName` to
//!   [`FARGATE_SCHEDULER`]; any other request is allowed unpatched.
//! - **The fargate-scheduler**: a watch on the pods with field selector
//!   `spec.schedulerName=fargate-scheduler,spec.nodeName=` (cluster-wide). A pending pod
//!   of a served profile (the first one whose selector matches it, else the first one
//!   that covers its namespace; pods of namespaces no profile covers are ignored) is
//!   started once [`FargateOptions::start_delay`] has passed since the stand-in first saw
//!   it and the profile's rate limit allows: a kwok Node built by [`FakeNode::fargate`]
//!   in [`FargateOptions::zone`] (annotated [`POD_ANNOTATION`] with `<namespace>/<pod>`),
//!   then, once kwok has made the Node Ready, a `pods/binding` to it (with the pod's UID
//!   as precondition) and a `Scheduled` Event, as kube-scheduler does. kwok then makes the
//!   pod Running and Ready. A failed bind deletes the Node again and the pod is retried.
//! - **The failure switch** ([`ProfileHandle::set_failing`]): while it is on, the
//!   profile's pods stay Pending and every second the attempt is recorded the way a
//!   scheduler does: condition `PodScheduled=False`, reason `Unschedulable`, message
//!   starting with [`CAPACITY_UNAVAILABLE`], and a Warning Event `FailedScheduling`
//!   (events.k8s.io/v1, one per pod whose `series` counts the attempts). Once it is off
//!   the pods are started normally.
//! - **The rate limit** ([`FargateOptions::rate_per_second`]): a token bucket with a burst
//!   of one per profile, taken when a pod's Node is created; binds of the profile are
//!   also kept at least `1 / rate` apart (each one sent no earlier than that after the
//!   previous one was answered), so the pods' `PodScheduled` times on the API server are
//!   spaced by the rate whatever kwok's Node-ready latency.
//! - **Node lifecycle**: a second watch, on the bound fargate-scheduler pods, deletes a
//!   pod's Node when the pod is deleted or finishes (`Succeeded` / `Failed`), and a sweep
//!   every [`SWEEP`] checks each Node's pod by name and UID, so nothing depends on seeing
//!   one watch event. Deleting a test's namespace deletes its pods and so their Nodes; a
//!   start in flight when its pod goes fails to bind and deletes its Node.
//!
//! One stand-in per control plane ([`FargateStandIn::shared`]): the webhook configuration
//! has one fixed name and the tests of a binary share the cluster and run concurrently,
//! so each test adds its own profile ([`FargateStandIn::serve`]) for its own namespace and
//! gets a [`ProfileHandle`]; dropping the handle removes the profile (pods already bound
//! keep their Nodes until they go). The stand-in runs on its own Tokio runtime, because
//! every `#[tokio::test]` has a runtime that ends with the test; it is never stopped:
//! the shared cluster it serves goes at process exit (the stand-in of a private
//! [`Cluster::start`] outlives it, its watches retrying with backoff).
//!
//! Logged with `tracing`, target `spotkube_rig::fargate`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum_server::tls_rustls::RustlsConfig;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::{Binding, Container, Node, ObjectReference, Pod, PodSpec};
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, MicroTime};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::{WatchStreamExt, watcher};
use spotkube_shared::fargate::{FARGATE_SCHEDULER, FargateProfile};
use tokio::sync::{OnceCell, mpsc};
use tokio::time::Instant;

use crate::RigError;
use crate::cluster::Cluster;
use crate::nodes::{FakeNode, ZONES, is_ready};

/// The name of EKS's MutatingWebhookConfiguration and of its one webhook.
pub const WEBHOOK_CONFIGURATION: &str = "0500-amazon-eks-fargate-mutation.amazonaws.com";
/// The webhook's `timeoutSeconds`.
pub const WEBHOOK_TIMEOUT_SECONDS: i32 = 3;
/// How every `FailedScheduling` message of the failure switch begins.
pub const CAPACITY_UNAVAILABLE: &str = "Fargate capacity unavailable";
/// The annotation on a stand-in Node naming its pod, `<namespace>/<name>` (the rig's
/// own: EKS puts none).
pub const POD_ANNOTATION: &str = "spotkube.test/fargate-pod";
/// How often a pod of a failing profile is tried again.
pub const RETRY: Duration = Duration::from_secs(1);
/// How often every Node's pod is checked (besides the watch).
pub const SWEEP: Duration = Duration::from_secs(2);
/// How long a new Node may take to turn Ready before the start is given up and retried.
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the scheduling loop looks at its pending pods.
const TICK: Duration = Duration::from_millis(50);
/// The pods the fargate-scheduler schedules.
const UNASSIGNED: &str = "spec.schedulerName=fargate-scheduler,spec.nodeName=";
/// The pods on Fargate Nodes.
const ASSIGNED: &str = "spec.schedulerName=fargate-scheduler,spec.nodeName!=";
const FIELD_MANAGER: &str = "spotkube-rig-fargate";
const REPORTING_INSTANCE: &str = "fargate-scheduler-spotkube-rig";

/// How the stand-in serves one profile.
#[derive(Debug, Clone)]
pub struct FargateOptions {
    /// How long a pod waits before its Node is created, counted from when the stand-in
    /// first saw it pending (EKS takes tens of seconds to start a micro-VM).
    pub start_delay: Duration,
    /// Pod starts per second (a token bucket, burst one); `None`: no limit. Must be
    /// positive and finite.
    pub rate_per_second: Option<f64>,
    /// The zone of the profile's Nodes.
    pub zone: String,
}

impl Default for FargateOptions {
    /// No delay, no limit, the rig's first zone.
    fn default() -> Self {
        Self {
            start_delay: Duration::ZERO,
            rate_per_second: None,
            zone: ZONES[0].to_string(),
        }
    }
}

/// The cluster's Fargate stand-in; see the [module docs](self).
#[derive(Debug)]
pub struct FargateStandIn {
    webhook_url: String,
    registry: Arc<Registry>,
    nodes: Arc<Mutex<HashMap<String, Owned>>>,
}

/// A profile being served; dropping it removes the profile.
#[derive(Debug)]
pub struct ProfileHandle {
    registry: Arc<Registry>,
    served: Arc<Served>,
}

impl ProfileHandle {
    /// The failure switch: while on, the profile's pods stay Pending with a
    /// `FailedScheduling` for want of capacity.
    pub fn set_failing(&self, failing: bool) {
        self.served.failing.store(failing, Ordering::SeqCst);
        tracing::info!(profile = %self.served.profile, failing, "failure switch");
    }

    /// Whether the failure switch is on.
    pub fn failing(&self) -> bool {
        self.served.failing.load(Ordering::SeqCst)
    }

    pub fn profile(&self) -> &FargateProfile {
        &self.served.profile
    }

    pub fn options(&self) -> &FargateOptions {
        &self.served.options
    }
}

impl Drop for ProfileHandle {
    fn drop(&mut self) {
        self.registry.remove(self.served.id);
        tracing::info!(profile = %self.served.profile, "profile no longer served");
    }
}

impl FargateStandIn {
    /// The stand-in of `cluster`'s control plane, started on first use: its webhook
    /// registered (and seen to answer through the API server) and both watches running.
    /// Later calls for the same control plane return the same one.
    pub async fn shared(cluster: &Cluster) -> Result<&'static FargateStandIn, RigError> {
        static STAND_INS: Mutex<BTreeMap<String, Arc<OnceCell<&'static FargateStandIn>>>> =
            Mutex::new(BTreeMap::new());
        crate::init();
        let cell = STAND_INS
            .lock()
            .unwrap()
            .entry(format!("{} {}", cluster.dir.display(), cluster.server))
            .or_default()
            .clone();
        if let Some(stand_in) = cell.get() {
            return Ok(stand_in);
        }
        let dir = cluster.dir.join("fargate");
        let serving = cluster
            .pki
            .ca
            .server(&dir, "webhook", &["127.0.0.1", "localhost"])?;
        let setup = Setup {
            kubeconfig: cluster.kubeconfig.clone(),
            ca_pem: cluster.pki.ca.files.cert_pem.clone(),
            cert_pem: serving.cert_pem,
            key_pem: serving.key_pem,
        };
        // Started on the stand-in's runtime, so a caller that goes away mid-start never
        // leaves a half-started stand-in behind.
        runtime()
            .spawn(async move {
                cell.get_or_try_init(|| async {
                    let stand_in = start(setup).await?;
                    Ok::<_, RigError>(&*Box::leak(Box::new(stand_in)))
                })
                .await
                .copied()
            })
            .await
            .map_err(|e| RigError::Spawn {
                name: "fargate stand-in".into(),
                reason: e.to_string(),
            })?
    }

    /// Serves `profile` with `options` until the handle drops. Pods created from now on
    /// that match it are sent to the fargate-scheduler; its pending pods are started.
    pub fn serve(&self, profile: FargateProfile, options: FargateOptions) -> ProfileHandle {
        if let Some(rate) = options.rate_per_second {
            assert!(
                rate.is_finite() && rate > 0.0,
                "rate_per_second must be positive and finite, not {rate}"
            );
        }
        tracing::info!(
            %profile,
            start_delay = ?options.start_delay,
            rate_per_second = ?options.rate_per_second,
            zone = %options.zone,
            "serving profile"
        );
        ProfileHandle {
            served: self.registry.add(profile, options),
            registry: self.registry.clone(),
        }
    }

    /// `https://127.0.0.1:<port>/mutate`, the URL the API server calls.
    pub fn webhook_url(&self) -> &str {
        &self.webhook_url
    }

    /// The Node the stand-in made for pod `namespace/name`, while it exists.
    pub fn node_of(&self, namespace: &str, name: &str) -> Option<String> {
        self.nodes
            .lock()
            .unwrap()
            .values()
            .find(|o| o.namespace == namespace && o.pod == name)
            .map(|o| o.node.clone())
    }

    /// Every Node the stand-in made and has not deleted: Node name → `<namespace>/<pod>`.
    pub fn nodes(&self) -> BTreeMap<String, String> {
        self.nodes
            .lock()
            .unwrap()
            .values()
            .map(|o| (o.node.clone(), format!("{}/{}", o.namespace, o.pod)))
            .collect()
    }
}

/// The stand-ins' own runtime: it outlives every test's.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fargate-stand-in")
            .enable_all()
            .build()
            .expect("the Fargate stand-in's runtime")
    })
}

// ---- profiles ----------------------------------------------------------------------

#[derive(Debug)]
struct Served {
    id: u64,
    profile: FargateProfile,
    options: FargateOptions,
    failing: AtomicBool,
    limiter: Limiter,
}

#[derive(Debug, Default)]
struct Registry {
    next_id: AtomicU64,
    profiles: Mutex<Vec<Arc<Served>>>,
}

impl Registry {
    fn add(&self, profile: FargateProfile, options: FargateOptions) -> Arc<Served> {
        let served = Arc::new(Served {
            id: self.next_id.fetch_add(1, Ordering::SeqCst),
            limiter: Limiter::new(options.rate_per_second),
            profile,
            options,
            failing: AtomicBool::new(false),
        });
        self.profiles.lock().unwrap().push(served.clone());
        served
    }

    fn remove(&self, id: u64) {
        self.profiles.lock().unwrap().retain(|s| s.id != id);
    }

    /// The first profile whose selector matches the pod (what the webhook asks).
    fn matching(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Option<Arc<Served>> {
        let profiles = self.profiles.lock().unwrap();
        profiles
            .iter()
            .find(|s| s.profile.matches(namespace, labels))
            .cloned()
    }

    /// The profile a fargate-scheduler pod is started under: the first that matches it,
    /// else the first that covers its namespace.
    fn for_pod(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Option<Arc<Served>> {
        self.matching(namespace, labels).or_else(|| {
            let profiles = self.profiles.lock().unwrap();
            profiles
                .iter()
                .find(|s| s.profile.covers(namespace))
                .cloned()
        })
    }
}

/// A profile's rate limit: starts from a token bucket (burst one), binds spaced alike.
#[derive(Debug)]
struct Limiter {
    interval: Option<Duration>,
    next_start: Mutex<Option<Instant>>,
    last_bind: tokio::sync::Mutex<Option<Instant>>,
}

impl Limiter {
    fn new(rate_per_second: Option<f64>) -> Self {
        Self {
            interval: rate_per_second.map(|r| Duration::from_secs_f64(1.0 / r)),
            next_start: Mutex::new(None),
            last_bind: tokio::sync::Mutex::new(None),
        }
    }

    /// Takes the token if there is one.
    fn try_start(&self, now: Instant) -> bool {
        let Some(interval) = self.interval else {
            return true;
        };
        let mut next = self.next_start.lock().unwrap();
        if next.is_some_and(|n| now < n) {
            return false;
        }
        *next = Some(now + interval);
        true
    }

    /// Runs `bind` no earlier than one interval after the previous bind was answered.
    async fn bind<T>(&self, bind: impl Future<Output = T>) -> T {
        let Some(interval) = self.interval else {
            return bind.await;
        };
        let mut last = self.last_bind.lock().await;
        if let Some(last) = *last {
            tokio::time::sleep_until(last + interval).await;
        }
        let out = bind.await;
        *last = Some(Instant::now());
        out
    }
}

// ---- start-up ----------------------------------------------------------------------

struct Setup {
    kubeconfig: std::path::PathBuf,
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// Clones of what every task needs.
#[derive(Clone)]
struct Context {
    client: kube::Client,
    registry: Arc<Registry>,
    nodes: Arc<Mutex<HashMap<String, Owned>>>,
}

/// A Node the stand-in made, by its pod's UID.
#[derive(Debug, Clone)]
struct Owned {
    node: String,
    namespace: String,
    pod: String,
    /// Whether the pod was bound to it (only then may a sweep find the pod gone).
    bound: bool,
}

async fn start(setup: Setup) -> Result<FargateStandIn, RigError> {
    let client = crate::control_plane::client_from_kubeconfig(&setup.kubeconfig).await?;
    let registry = Arc::new(Registry::default());
    let nodes = Arc::new(Mutex::new(HashMap::new()));
    let context = Context {
        client: client.clone(),
        registry: registry.clone(),
        nodes: nodes.clone(),
    };

    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| RigError::Http(format!("fargate webhook listener: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| RigError::Http(e.to_string()))?;
    let tls = RustlsConfig::from_pem(setup.cert_pem.into_bytes(), setup.key_pem.into_bytes())
        .await
        .map_err(|e| RigError::Certs(format!("fargate webhook: {e}")))?;
    let server = axum_server::from_tcp_rustls(listener, tls)
        .map_err(|e| RigError::Http(format!("fargate webhook: {e}")))?;
    let router = Router::new()
        .route("/mutate", post(mutate))
        .with_state(registry.clone());
    tokio::spawn(async move {
        if let Err(e) = server.serve(router.into_make_service()).await {
            tracing::error!("webhook server ended: {e}");
        }
    });
    let webhook_url = format!("https://{addr}/mutate");

    tokio::spawn(schedule_loop(context.clone()));
    tokio::spawn(lifecycle_loop(context.clone()));
    tokio::spawn(sweep_loop(context));

    register(&client, &webhook_url, &setup.ca_pem).await?;
    probe(&client, &registry).await?;
    tracing::info!(%webhook_url, "Fargate stand-in ready");
    Ok(FargateStandIn {
        webhook_url,
        registry,
        nodes,
    })
}

/// Creates (or takes over) the MutatingWebhookConfiguration.
async fn register(client: &kube::Client, url: &str, ca_pem: &str) -> Result<(), RigError> {
    let config = MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(WEBHOOK_CONFIGURATION.into()),
            ..Default::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: WEBHOOK_CONFIGURATION.into(),
            client_config: WebhookClientConfig {
                url: Some(url.into()),
                ca_bundle: Some(ByteString(ca_pem.as_bytes().to_vec())),
                service: None,
            },
            rules: Some(vec![RuleWithOperations {
                operations: Some(vec!["CREATE".into()]),
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".into()]),
                resources: Some(vec!["pods".into()]),
                scope: Some("Namespaced".into()),
            }]),
            failure_policy: Some("Ignore".into()),
            side_effects: "None".into(),
            reinvocation_policy: Some("Never".into()),
            timeout_seconds: Some(WEBHOOK_TIMEOUT_SECONDS),
            admission_review_versions: vec!["v1".into()],
            match_policy: Some("Equivalent".into()),
            namespace_selector: Some(LabelSelector::default()),
            object_selector: Some(LabelSelector::default()),
            match_conditions: None,
        }]),
    };
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(
            WEBHOOK_CONFIGURATION,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&config),
        )
        .await
        .map_err(|e| RigError::Kube(format!("apply {WEBHOOK_CONFIGURATION}: {e}")))?;
    Ok(())
}

/// Waits until the API server calls the webhook: a dry-run pod matching a private probe
/// profile comes back with the fargate-scheduler (dry runs call webhooks without side
/// effects; nothing is stored, so the scheduling loop never sees it).
async fn probe(client: &kube::Client, registry: &Registry) -> Result<(), RigError> {
    let key = "spotkube.test/fargate-probe";
    let value = format!("{:08x}", rand::random::<u32>());
    let profile: FargateProfile = format!("default:{key}={value}")
        .parse()
        .map_err(|e| RigError::Kube(format!("probe profile: {e}")))?;
    let served = registry.add(profile, FargateOptions::default());
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(format!("fargate-probe-{value}")),
            labels: Some(BTreeMap::from([(key.to_string(), value.clone())])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "pause".into(),
                image: Some("registry.k8s.io/pause:3.10".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let result = crate::wait_for(
        "the API server calling the Fargate webhook",
        Duration::from_secs(30),
        || async {
            let created = pods.create(&dry_run, &pod).await?;
            let scheduler = created.spec.and_then(|s| s.scheduler_name);
            Ok((scheduler.as_deref() == Some(FARGATE_SCHEDULER)).then_some(()))
        },
    )
    .await;
    registry.remove(served.id);
    result
}

// ---- the webhook -------------------------------------------------------------------

async fn mutate(
    State(registry): State<Arc<Registry>>,
    Json(review): Json<AdmissionReview<Pod>>,
) -> Response {
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(request) => request,
        Err(_) => {
            return (StatusCode::BAD_REQUEST, "AdmissionReview has no request\n").into_response();
        }
    };
    let response = admit(&registry, &request);
    // kube serializes the patch as an array of numbers; the API server's own encoding
    // (and the project's webhook) is a base64 string.
    let mut wire = match serde_json::to_value(response.into_review()) {
        Ok(wire) => wire,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    if let Some(bytes) = wire["response"]["patch"].as_array() {
        use base64::Engine as _;
        let bytes: Vec<u8> = bytes
            .iter()
            .filter_map(|b| b.as_u64())
            .map(|b| b as u8)
            .collect();
        wire["response"]["patch"] = base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into();
    }
    Json(wire).into_response()
}

/// The answer to one request: the fargate-scheduler for a Pod CREATE that matches a
/// served profile, else allowed as is.
fn admit(registry: &Registry, request: &AdmissionRequest<Pod>) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(request);
    let pod_create = request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request.operation == Operation::Create
        && request.sub_resource.is_none();
    let Some(pod) = request.object.as_ref().filter(|_| pod_create) else {
        return allowed;
    };
    let namespace = request
        .namespace
        .as_deref()
        .or(pod.metadata.namespace.as_deref())
        .unwrap_or("default");
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let Some(served) = registry.matching(namespace, &labels) else {
        return allowed;
    };
    let name = pod
        .metadata
        .name
        .as_deref()
        .or(pod.metadata.generate_name.as_deref())
        .unwrap_or_default();
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        { "op": "add", "path": "/spec/schedulerName", "value": FARGATE_SCHEDULER }
    ]))
    .expect("a valid JSON patch");
    match allowed.clone().with_patch(patch) {
        Ok(patched) => {
            tracing::info!(%namespace, pod = %name, profile = %served.profile, "webhook: pod sent to Fargate");
            patched
        }
        Err(e) => {
            tracing::error!(%namespace, pod = %name, "webhook: cannot serialize the patch: {e}");
            allowed
        }
    }
}

// ---- the fargate-scheduler ---------------------------------------------------------

/// A pending fargate-scheduler pod.
#[derive(Debug)]
struct Waiting {
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    /// Whether the pod carries our `PodScheduled=False` condition already.
    marked_unschedulable: bool,
    first_seen: Instant,
    /// A start or a failure record is in flight.
    busy: bool,
    next_failure: Instant,
    /// After a failed start: not started again before this.
    retry_at: Instant,
    /// The `FailedScheduling` Event and how many attempts it counts.
    failure_event: Option<(String, i32)>,
}

/// What a task tells the scheduling loop about a pod (by UID).
enum Done {
    Bound(String),
    Retry(String),
    Gone(String),
    FailureRecorded(String, Option<(String, i32)>, bool),
}

fn pod_uid(pod: &Pod) -> Option<String> {
    pod.metadata.uid.clone()
}

/// The message of a failure switch's `FailedScheduling`.
fn capacity_message(zone: &str) -> String {
    format!(
        "{CAPACITY_UNAVAILABLE}: no Fargate capacity for this pod's profile in {zone} \
         right now (the rig's failure switch); retrying"
    )
}

fn has_unschedulable(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
                    && c.message
                        .as_deref()
                        .is_some_and(|m| m.starts_with(CAPACITY_UNAVAILABLE))
            })
        })
}

async fn schedule_loop(context: Context) {
    let pods: Api<Pod> = Api::all(context.client.clone());
    let mut events = watcher(pods, watcher::Config::default().fields(UNASSIGNED))
        .default_backoff()
        .boxed();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut waiting: HashMap<String, Waiting> = HashMap::new();
    let mut relisted: Option<HashSet<String>> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => on_pending_event(event, &mut waiting, &mut relisted),
                Some(Err(e)) => tracing::warn!("watch of pending pods: {e}"),
                None => return,
            },
            Some(done) = done_rx.recv() => on_done(done, &mut waiting),
            _ = tick.tick() => schedule(&context, &mut waiting, &done_tx),
        }
    }
}

fn on_pending_event(
    event: watcher::Event<Pod>,
    waiting: &mut HashMap<String, Waiting>,
    relisted: &mut Option<HashSet<String>>,
) {
    match event {
        watcher::Event::Init => *relisted = Some(HashSet::new()),
        watcher::Event::InitApply(pod) => {
            if let (Some(seen), Some(uid)) = (relisted.as_mut(), pod_uid(&pod)) {
                seen.insert(uid);
            }
            upsert(waiting, &pod);
        }
        watcher::Event::InitDone => {
            if let Some(seen) = relisted.take() {
                waiting.retain(|uid, w| w.busy || seen.contains(uid));
            }
        }
        watcher::Event::Apply(pod) => upsert(waiting, &pod),
        // Deleted, or bound (it left the field selector).
        watcher::Event::Delete(pod) => {
            if let Some(uid) = pod_uid(&pod) {
                waiting.remove(&uid);
            }
        }
    }
}

fn upsert(waiting: &mut HashMap<String, Waiting>, pod: &Pod) {
    let (Some(uid), Some(namespace), Some(name)) = (
        pod_uid(pod),
        pod.metadata.namespace.clone(),
        pod.metadata.name.clone(),
    ) else {
        return;
    };
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let marked = has_unschedulable(pod);
    match waiting.get_mut(&uid) {
        Some(w) => {
            w.labels = labels;
            w.marked_unschedulable = marked;
        }
        None => {
            let now = Instant::now();
            waiting.insert(
                uid,
                Waiting {
                    namespace,
                    name,
                    labels,
                    marked_unschedulable: marked,
                    first_seen: now,
                    busy: false,
                    next_failure: now,
                    retry_at: now,
                    failure_event: None,
                },
            );
        }
    }
}

fn on_done(done: Done, waiting: &mut HashMap<String, Waiting>) {
    match done {
        Done::Bound(uid) | Done::Gone(uid) => {
            waiting.remove(&uid);
        }
        Done::Retry(uid) => {
            if let Some(w) = waiting.get_mut(&uid) {
                w.busy = false;
                w.retry_at = Instant::now() + RETRY;
            }
        }
        Done::FailureRecorded(uid, event, marked) => {
            if let Some(w) = waiting.get_mut(&uid) {
                w.busy = false;
                w.failure_event = event;
                w.marked_unschedulable |= marked;
            }
        }
    }
}

/// One look at the pending pods, oldest first.
fn schedule(
    context: &Context,
    waiting: &mut HashMap<String, Waiting>,
    done: &mpsc::UnboundedSender<Done>,
) {
    let now = Instant::now();
    let mut order: Vec<(&String, &mut Waiting)> =
        waiting.iter_mut().filter(|(_, w)| !w.busy).collect();
    order.sort_by_key(|(_, w)| w.first_seen);
    for (uid, pod) in order {
        let Some(served) = context.registry.for_pod(&pod.namespace, &pod.labels) else {
            continue;
        };
        if served.failing.load(Ordering::SeqCst) {
            if now >= pod.next_failure {
                pod.busy = true;
                pod.next_failure = now + RETRY;
                let task = FailureTask {
                    client: context.client.clone(),
                    uid: uid.clone(),
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                    marked: pod.marked_unschedulable,
                    event: pod.failure_event.clone(),
                    message: capacity_message(&served.options.zone),
                };
                let done = done.clone();
                tokio::spawn(async move {
                    let _ = done.send(task.run().await);
                });
            }
            continue;
        }
        let due = now >= pod.first_seen + served.options.start_delay && now >= pod.retry_at;
        if !due || !served.limiter.try_start(now) {
            continue;
        }
        pod.busy = true;
        let task = StartTask {
            context: context.clone(),
            served,
            uid: uid.clone(),
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            waited: now - pod.first_seen,
        };
        let done = done.clone();
        tokio::spawn(async move {
            let _ = done.send(task.run().await);
        });
    }
}

/// Records one failed attempt: the condition (once) and the Event (or its series).
struct FailureTask {
    client: kube::Client,
    uid: String,
    namespace: String,
    name: String,
    marked: bool,
    event: Option<(String, i32)>,
    message: String,
}

impl FailureTask {
    async fn run(self) -> Done {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut marked = self.marked;
        if !marked {
            let status = serde_json::json!({ "status": { "conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": self.message,
                "lastProbeTime": null,
                "lastTransitionTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            }]}});
            match pods
                .patch_status(
                    &self.name,
                    &PatchParams::default(),
                    &Patch::Strategic(&status),
                )
                .await
            {
                Ok(_) => marked = true,
                Err(kube::Error::Api(s)) if s.code == 404 => return Done::Gone(self.uid),
                Err(e) => {
                    tracing::warn!(namespace = %self.namespace, pod = %self.name, "cannot mark the pod unschedulable: {e}")
                }
            }
        }
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), &self.namespace);
        let now = MicroTime(jiff::Timestamp::now());
        let mut event = self.event;
        if let Some((name, count)) = &event {
            let series = serde_json::json!({ "series": EventSeries { count: count + 1, last_observed_time: now.clone() } });
            match events
                .patch(name, &PatchParams::default(), &Patch::Merge(&series))
                .await
            {
                Ok(_) => event = Some((name.clone(), count + 1)),
                Err(e) => {
                    tracing::debug!(event = %name, "cannot count the attempt, a new Event: {e}");
                    event = None;
                }
            }
        }
        if event.is_none() {
            let reference = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                namespace: Some(self.namespace.clone()),
                name: Some(self.name.clone()),
                uid: Some(self.uid.clone()),
                ..Default::default()
            };
            let new = scheduler_event(reference, "Warning", "FailedScheduling", &self.message);
            match events.create(&PostParams::default(), &new).await {
                Ok(created) => event = created.metadata.name.map(|n| (n, 1)),
                Err(e) => {
                    tracing::warn!(namespace = %self.namespace, pod = %self.name, "cannot record FailedScheduling: {e}")
                }
            }
        }
        tracing::info!(namespace = %self.namespace, pod = %self.name, attempts = event.as_ref().map_or(0, |e| e.1), "pod left Pending: {}", self.message);
        Done::FailureRecorded(self.uid, event, marked)
    }
}

/// An events.k8s.io/v1 Event about a pod, reported by the fargate-scheduler.
fn scheduler_event(regarding: ObjectReference, type_: &str, reason: &str, note: &str) -> K8sEvent {
    let pod = regarding.name.clone().unwrap_or_default();
    K8sEvent {
        metadata: ObjectMeta {
            name: Some(format!("{pod}.{:016x}", rand::random::<u64>())),
            namespace: regarding.namespace.clone(),
            ..Default::default()
        },
        event_time: Some(MicroTime(jiff::Timestamp::now())),
        action: Some("Scheduling".into()),
        reason: Some(reason.into()),
        note: Some(note.into()),
        type_: Some(type_.into()),
        regarding: Some(regarding),
        reporting_controller: Some(FARGATE_SCHEDULER.into()),
        reporting_instance: Some(REPORTING_INSTANCE.into()),
        ..Default::default()
    }
}

/// Starts one pod: its Node, then the bind.
struct StartTask {
    context: Context,
    served: Arc<Served>,
    uid: String,
    namespace: String,
    name: String,
    waited: Duration,
}

impl StartTask {
    async fn run(self) -> Done {
        let client = &self.context.client;
        let node = FakeNode::fargate(&self.served.options.zone)
            .with_annotation(POD_ANNOTATION, format!("{}/{}", self.namespace, self.name));
        if let Err(e) = node.create(client).await {
            tracing::warn!(namespace = %self.namespace, pod = %self.name, "cannot create its Node: {e}");
            return Done::Retry(self.uid);
        }
        self.context.nodes.lock().unwrap().insert(
            self.uid.clone(),
            Owned {
                node: node.name.clone(),
                namespace: self.namespace.clone(),
                pod: self.name.clone(),
                bound: false,
            },
        );
        let nodes: Api<Node> = Api::all(client.clone());
        let ready = crate::wait_for(
            &format!("Fargate Node {} Ready", node.name),
            NODE_READY_TIMEOUT,
            || async {
                Ok(nodes
                    .get_opt(&node.name)
                    .await?
                    .filter(is_ready)
                    .map(|_| ()))
            },
        )
        .await;
        if let Err(e) = ready {
            tracing::warn!(namespace = %self.namespace, pod = %self.name, "{e}");
            self.release_node(&node.name).await;
            return Done::Retry(self.uid);
        }
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                uid: Some(self.uid.clone()),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.name.clone()),
                ..Default::default()
            },
        };
        let pods: Api<Pod> = Api::namespaced(client.clone(), &self.namespace);
        let bound = self
            .served
            .limiter
            .bind(pods.create_subresource::<Binding, serde_json::Value>(
                "binding",
                &self.name,
                &PostParams::default(),
                &binding,
            ))
            .await;
        match bound {
            Ok(_) => {
                if let Some(owned) = self.context.nodes.lock().unwrap().get_mut(&self.uid) {
                    owned.bound = true;
                }
                tracing::info!(
                    namespace = %self.namespace,
                    pod = %self.name,
                    node = %node.name,
                    zone = %self.served.options.zone,
                    waited = ?self.waited,
                    "pod bound to its Fargate Node"
                );
                let reference = ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    namespace: Some(self.namespace.clone()),
                    name: Some(self.name.clone()),
                    uid: Some(self.uid.clone()),
                    ..Default::default()
                };
                let note = format!(
                    "Successfully assigned {}/{} to {}",
                    self.namespace, self.name, node.name
                );
                let event = scheduler_event(reference, "Normal", "Scheduled", &note);
                let events: Api<K8sEvent> = Api::namespaced(client.clone(), &self.namespace);
                if let Err(e) = events.create(&PostParams::default(), &event).await {
                    tracing::debug!("cannot record Scheduled: {e}");
                }
                Done::Bound(self.uid)
            }
            Err(e) => {
                self.release_node(&node.name).await;
                let gone = match pods.get_opt(&self.name).await {
                    Ok(pod) => pod.is_none_or(|p| p.metadata.uid.as_deref() != Some(&self.uid)),
                    Err(_) => false,
                };
                if gone {
                    tracing::info!(namespace = %self.namespace, pod = %self.name, "pod went before its bind ({e}); Node deleted");
                    Done::Gone(self.uid)
                } else {
                    tracing::warn!(namespace = %self.namespace, pod = %self.name, "bind failed, retrying: {e}");
                    Done::Retry(self.uid)
                }
            }
        }
    }

    async fn release_node(&self, node: &str) {
        self.context.nodes.lock().unwrap().remove(&self.uid);
        if let Err(e) = delete_node(&self.context.client, node).await {
            tracing::warn!(%node, "cannot delete an unused Fargate Node: {e}");
        }
    }
}

async fn delete_node(client: &kube::Client, name: &str) -> Result<(), kube::Error> {
    match Api::<Node>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

// ---- Node lifecycle ----------------------------------------------------------------

fn finished(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| matches!(p, "Succeeded" | "Failed"))
}

/// Deletes the Node of pod `uid` (if the stand-in made one); `why` for the log.
async fn release(context: &Context, uid: &str, why: &str) {
    let Some(owned) = context.nodes.lock().unwrap().remove(uid) else {
        return;
    };
    match delete_node(&context.client, &owned.node).await {
        Ok(()) => tracing::info!(
            node = %owned.node,
            namespace = %owned.namespace,
            pod = %owned.pod,
            "pod {why}: its Fargate Node deleted"
        ),
        Err(e) => {
            tracing::warn!(node = %owned.node, "cannot delete the Fargate Node of a pod that {why}: {e}");
            // The sweep tries again.
            context.nodes.lock().unwrap().insert(uid.to_string(), owned);
        }
    }
}

async fn lifecycle_loop(context: Context) {
    let pods: Api<Pod> = Api::all(context.client.clone());
    let mut events = watcher(pods, watcher::Config::default().fields(ASSIGNED))
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) if finished(&pod) => {
                if let Some(uid) = pod_uid(&pod) {
                    release(&context, &uid, "finished").await;
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(uid) = pod_uid(&pod) {
                    release(&context, &uid, "was deleted").await;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("watch of Fargate pods: {e}"),
        }
    }
}

/// Every [`SWEEP`]: a bound Node whose pod is gone (or replaced, or finished) goes.
async fn sweep_loop(context: Context) {
    loop {
        tokio::time::sleep(SWEEP).await;
        let bound: Vec<(String, Owned)> = context
            .nodes
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, o)| o.bound)
            .map(|(uid, o)| (uid.clone(), o.clone()))
            .collect();
        for (uid, owned) in bound {
            let pods: Api<Pod> = Api::namespaced(context.client.clone(), &owned.namespace);
            match pods.get_opt(&owned.pod).await {
                Ok(Some(pod)) if pod.metadata.uid.as_deref() == Some(uid.as_str()) => {
                    if finished(&pod) {
                        release(&context, &uid, "finished").await;
                    }
                }
                Ok(_) => release(&context, &uid, "is gone").await,
                Err(e) => tracing::debug!(pod = %owned.pod, "sweep: {e}"),
            }
        }
    }
}
