//! `POST /mutate`: AdmissionReview in, AdmissionReview (with a JSONPatch) out.
//!
//! Bad input is the caller's fault and answered with HTTP 400 and a one-line reason
//! (413 above the body limit). Anything that goes wrong inside the webhook lets the pod
//! through unchanged with a warning: spotkube must never block a pod.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use spotkube_shared::policy::{self, Layers, Policy};
use tracing::Span;
use tracing::field::Empty;

use crate::metrics::{KindLabels, Metrics, OutcomeLabels};
use crate::mutate::{self, MutationConfig};
use crate::namespaces::NamespaceCache;

/// What the handler needs, shared by all requests.
pub struct AdmissionState {
    pub config: MutationConfig,
    /// Cluster-wide policy defaults (the bottom layer of resolution).
    pub defaults: Policy,
    pub namespaces: NamespaceCache,
    pub metrics: Metrics,
}

/// How a request ended, for the log line and the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A patch was returned.
    Patched,
    /// In scope, but the pod already had everything.
    Unchanged,
    /// Out of scope: other kind / operation, namespace not opted in, workload opted out.
    Skipped,
    /// HTTP 400.
    Invalid,
    /// HTTP 413.
    TooLarge,
    /// Internal error: allowed unchanged with a warning.
    Error,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Patched => "patched",
            Outcome::Unchanged => "unchanged",
            Outcome::Skipped => "skipped",
            Outcome::Invalid => "invalid",
            Outcome::TooLarge => "too-large",
            Outcome::Error => "error",
        }
    }
}

/// The `POST /mutate` handler. One span per request: what the request is about is
/// recorded on it once the body is parsed, so the lines logged inside do not repeat it.
#[tracing::instrument(
    name = "admission",
    skip_all,
    fields(uid = Empty, namespace = Empty, operation = Empty, kind = Empty, name = Empty)
)]
pub async fn mutate_handler(
    State(state): State<Arc<AdmissionState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let (outcome, response) = handle(&state, body);
    let elapsed = started.elapsed();
    state
        .metrics
        .requests
        .get_or_create(&OutcomeLabels {
            outcome: outcome.as_str(),
        })
        .inc();
    state.metrics.latency.observe(elapsed.as_secs_f64());
    tracing::info!(
        outcome = outcome.as_str(),
        duration_us = elapsed.as_micros() as u64,
        "admission"
    );
    response
}

/// Records on the current (request) span what a parsed request is about. A pod
/// created by a controller has no name yet at admission: its `generateName` prefix
/// (ending in `-`) stands in for it.
fn record<T: kube::Resource>(request: &AdmissionRequest<T>) {
    let span = Span::current();
    span.record("uid", request.uid.as_str());
    if let Some(namespace) = &request.namespace {
        span.record("namespace", namespace.as_str());
    }
    span.record("operation", operation_name(&request.operation));
    span.record("kind", request.kind.kind.as_str());
    let meta = request.object.as_ref().map(|o| o.meta());
    let name = Some(request.name.as_str())
        .filter(|n| !n.is_empty())
        .or_else(|| meta?.name.as_deref())
        .or_else(|| meta?.generate_name.as_deref());
    if let Some(name) = name {
        span.record("name", name);
    }
}

/// The operation as the API server spells it.
fn operation_name(operation: &Operation) -> &'static str {
    match operation {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

type Handled = (Outcome, Response);

fn bad_request(outcome: Outcome, status: StatusCode, reason: String) -> Handled {
    // One line, whatever the parser said.
    let reason = reason.replace('\n', " ");
    (outcome, (status, reason + "\n").into_response())
}

fn handle(state: &AdmissionState, body: Result<Bytes, BytesRejection>) -> Handled {
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let status = rejection.status();
            let outcome = if status == StatusCode::PAYLOAD_TOO_LARGE {
                Outcome::TooLarge
            } else {
                Outcome::Invalid
            };
            return bad_request(outcome, status, rejection.body_text());
        }
    };
    // The webhook is registered for Pods: parse straight into typed Pods, and only
    // when that fails parse generically to tell bad input from other objects.
    let review: AdmissionReview<Pod> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => return handle_generic(&body),
    };
    if let Err(reason) = check_types(&review.types) {
        return bad_request(Outcome::Invalid, StatusCode::BAD_REQUEST, reason);
    }
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(_) => return no_request(),
    };
    record(&request);
    let base = AdmissionResponse::from(&request);
    let pod = request.object.as_ref();
    // A panic in the mutation must not take the pod down with it.
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        review_pod(state, &request, pod, base.clone())
    }));
    finish(base, result)
}

/// Requests whose object is not a Pod (or not a readable one).
fn handle_generic(body: &[u8]) -> Handled {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(
                Outcome::Invalid,
                StatusCode::BAD_REQUEST,
                format!("malformed AdmissionReview: {e}"),
            );
        }
    };
    if let Err(reason) = check_types(&review.types) {
        return bad_request(Outcome::Invalid, StatusCode::BAD_REQUEST, reason);
    }
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(_) => return no_request(),
    };
    record(&request);
    let base = AdmissionResponse::from(&request);
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        if in_scope(&request) {
            // A Pod CREATE whose object does not deserialize as a Pod.
            let reason = match request.object.clone().map(|o| o.try_parse::<Pod>()) {
                Some(Err(e)) => e.to_string(),
                _ => "no object".to_string(),
            };
            Err(format!(
                "spotkube webhook could not read the Pod ({reason}); pod admitted unchanged"
            ))
        } else {
            Ok((Outcome::Skipped, base.clone()))
        }
    }));
    finish(base, result)
}

fn check_types(types: &kube::core::TypeMeta) -> Result<(), String> {
    if types.api_version == "admission.k8s.io/v1" && types.kind == "AdmissionReview" {
        return Ok(());
    }
    Err(format!(
        "expected apiVersion admission.k8s.io/v1 kind AdmissionReview, got apiVersion {:?} kind {:?}",
        types.api_version, types.kind
    ))
}

fn no_request() -> Handled {
    bad_request(
        Outcome::Invalid,
        StatusCode::BAD_REQUEST,
        "AdmissionReview has no request".into(),
    )
}

type Reviewed = std::thread::Result<Result<(Outcome, AdmissionResponse), String>>;

fn finish(base: AdmissionResponse, result: Reviewed) -> Handled {
    let (outcome, response) = match result {
        Ok(Ok(done)) => done,
        Ok(Err(message)) => (Outcome::Error, with_warnings(base, vec![message])),
        Err(_) => (
            Outcome::Error,
            with_warnings(
                base,
                vec!["spotkube webhook internal error; pod admitted unchanged".into()],
            ),
        ),
    };
    if outcome == Outcome::Error {
        tracing::error!(warnings = ?response.warnings, "admission failed; pod admitted unchanged");
    }
    (outcome, Json(WireReview::from(response)).into_response())
}

/// Whether a request is a Pod CREATE (the only thing the webhook mutates).
fn in_scope<T: kube::Resource>(request: &AdmissionRequest<T>) -> bool {
    request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request.operation == Operation::Create
        && request.sub_resource.is_none()
}

/// The AdmissionReview response on the wire. kube's `AdmissionResponse` serializes its
/// patch as an array of numbers; the API server's own encoding (and every other
/// webhook) uses a base64 string, which is also a quarter of the size.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct WireReview {
    api_version: &'static str,
    kind: &'static str,
    response: WireResponse,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct WireResponse {
    uid: String,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<Vec<String>>,
}

impl From<AdmissionResponse> for WireReview {
    fn from(r: AdmissionResponse) -> Self {
        use base64::Engine as _;
        let patch = r
            .patch
            .map(|p| base64::engine::general_purpose::STANDARD.encode(p));
        WireReview {
            api_version: "admission.k8s.io/v1",
            kind: "AdmissionReview",
            response: WireResponse {
                uid: r.uid,
                allowed: r.allowed,
                patch_type: patch.as_ref().map(|_| "JSONPatch"),
                patch,
                warnings: r.warnings,
            },
        }
    }
}

fn with_warnings(mut response: AdmissionResponse, warnings: Vec<String>) -> AdmissionResponse {
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    response
}

/// Decides and builds the response for a well-formed request. `Err` is an internal
/// error message (the pod is admitted unchanged).
fn review_pod(
    state: &AdmissionState,
    request: &AdmissionRequest<Pod>,
    pod: Option<&Pod>,
    base: AdmissionResponse,
) -> Result<(Outcome, AdmissionResponse), String> {
    if !in_scope(request) {
        return Ok((Outcome::Skipped, base));
    }
    let Some(pod) = pod else {
        return Err(
            "spotkube webhook: Pod CREATE without an object; pod admitted unchanged".into(),
        );
    };
    let namespace = request
        .namespace
        .as_deref()
        .or(pod.metadata.namespace.as_deref())
        .unwrap_or("default");
    let resolved = state.namespaces.with_annotations(namespace, |ns| {
        policy::resolve(
            &state.defaults,
            Layers {
                namespace: ns,
                // The pod template's annotations are the pod's; see the crate docs for why
                // the workload object's own annotations are not read.
                workload: None,
                pod: pod.metadata.annotations.as_ref(),
            },
        )
    });
    if !resolved.policy.enabled {
        return Ok((Outcome::Skipped, base));
    }
    let mut warnings: Vec<String> = resolved.warnings.iter().map(ToString::to_string).collect();
    let mutation = mutate::mutate(pod, namespace, &resolved.policy, &state.config);
    warnings.extend(mutation.warnings);
    if mutation.patch.0.is_empty() {
        return Ok((Outcome::Unchanged, with_warnings(base, warnings)));
    }
    for kind in &mutation.kinds {
        state
            .metrics
            .patches
            .get_or_create(&KindLabels {
                kind: kind.as_str(),
            })
            .inc();
    }
    let response = base.with_patch(mutation.patch).map_err(|e| {
        format!("spotkube webhook could not serialize its patch ({e}); pod admitted unchanged")
    })?;
    Ok((Outcome::Patched, with_warnings(response, warnings)))
}
