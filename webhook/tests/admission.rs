//! Component tests: the real webhook over TLS on 127.0.0.1, driven with AdmissionReview
//! payloads (the one captured from a real kube-apiserver, and variations of it).

mod common;

use common::{Options, fixture as fixture_path, namespace, start};
use serde_json::{Value, json};

fn fixture() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_path()).unwrap()).unwrap()
}

async fn review(server: &common::Server, body: &Value) -> Value {
    let resp = server
        .client()
        .post(server.url())
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// Applies the response's JSONPatch to the request's raw object (as the apiserver does).
fn patched(request: &Value, response: &Value) -> (Value, json_patch::Patch) {
    let r = &response["response"];
    assert_eq!(r["patchType"], "JSONPatch");
    // Base64 in a JSON string, as the API server expects.
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(r["patch"].as_str().expect("patch is a base64 string"))
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut object = request["request"]["object"].clone();
    json_patch::patch(&mut object, &patch).unwrap();
    (object, patch)
}

#[tokio::test]
async fn captured_deployment_pod_is_patched_field_by_field_and_idempotent() {
    let server = start(Options::default()).await;
    let request = fixture();
    let response = review(&server, &request).await;
    assert_eq!(response["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(response["kind"], "AdmissionReview");
    assert_eq!(response["response"]["uid"], request["request"]["uid"]);
    assert_eq!(response["response"]["allowed"], true);
    let (pod, _) = patched(&request, &response);
    let spec = &pod["spec"];

    assert_eq!(
        spec["affinity"]["nodeAffinity"],
        json!({"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "preference": {"matchExpressions": [{"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]}]}},
            {"weight": 50, "preference": {"matchExpressions": [{"key": "eks.amazonaws.com/capacityType", "operator": "In", "values": ["SPOT"]}]}}
        ]})
    );
    // The apiserver's default tolerations stay, in order; ours is appended once.
    assert_eq!(
        spec["tolerations"],
        json!([
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
        ])
    );
    assert_eq!(
        spec["topologySpreadConstraints"],
        json!([{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app": "web"}}}])
    );
    assert_eq!(spec["schedulerName"], "spotkube-scheduler");
    assert_eq!(
        pod["metadata"]["annotations"]["spotkube.io/protection"],
        "spot-preferred"
    );
    assert!(
        pod["metadata"]["annotations"]["spotkube.io/mutated-by"]
            .as_str()
            .unwrap()
            .starts_with("spotkube-webhook/")
    );
    // Everything else is untouched.
    let original = &request["request"]["object"];
    assert_eq!(spec["containers"], original["spec"]["containers"]);
    assert_eq!(spec["volumes"], original["spec"]["volumes"]);
    assert_eq!(pod["metadata"]["labels"], original["metadata"]["labels"]);
    assert_eq!(
        pod["metadata"]["managedFields"],
        original["metadata"]["managedFields"]
    );

    // Reinvocation: the webhook's own output changes nothing.
    let mut again = request.clone();
    again["request"]["object"] = pod;
    let response = review(&server, &again).await;
    assert_eq!(response["response"]["allowed"], true);
    assert!(response["response"].get("patch").is_none(), "{response}");

    let metrics = server.metrics_text();
    assert!(
        metrics.contains("spotkube_webhook_admission_requests_total{outcome=\"patched\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("spotkube_webhook_admission_requests_total{outcome=\"unchanged\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("spotkube_webhook_patches_total{kind=\"affinity\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("spotkube_webhook_admission_duration_seconds_count 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn pod_annotations_override_the_namespace_and_bad_values_warn() {
    let server = start(Options {
        namespaces: vec![namespace(
            "demo",
            &[
                ("spotkube.io/enabled", "true"),
                ("spotkube.io/capacity", "spot-only"),
            ],
        )],
        ..Options::default()
    })
    .await;
    let mut request = fixture();
    request["request"]["object"]["metadata"]["annotations"] =
        json!({"spotkube.io/spread": "capacity-types", "spotkube.io/capacity": "cheap-please"});
    let response = review(&server, &request).await;
    let warnings = response["response"]["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .contains("spotkube.io/capacity: \"cheap-please\"")
    );
    let (pod, _) = patched(&request, &response);
    // The namespace's spot-only stands, since the pod's value was malformed.
    assert_eq!(
        pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        pod["spec"]["topologySpreadConstraints"][0]["topologyKey"],
        "karpenter.sh/capacity-type"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["spotkube.io/protection"],
        "spot-only"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["spotkube.io/spread"], "capacity-types",
        "user annotations kept"
    );
}

#[tokio::test]
async fn daemonset_pods_keep_their_node_and_scheduler() {
    let server = start(Options {
        namespaces: vec![namespace(
            "demo",
            &[
                ("spotkube.io/enabled", "true"),
                ("spotkube.io/capacity", "spot-only"),
            ],
        )],
        ..Options::default()
    })
    .await;
    let mut request = fixture();
    let object = &mut request["request"]["object"];
    object["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "DaemonSet",
        "name": "agent", "uid": "d5", "controller": true, "blockOwnerDeletion": true}]);
    // What the DaemonSet controller sets: the one node this pod may run on.
    object["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
        {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-1"]}]}]}}});
    let response = review(&server, &request).await;
    let (pod, patch) = patched(&request, &response);
    for op in &patch.0 {
        assert!(
            op.path().to_string().starts_with("/metadata/annotations"),
            "{op:?}"
        );
    }
    assert_eq!(pod["spec"], request["request"]["object"]["spec"]);
    assert_eq!(pod["spec"]["schedulerName"], "default-scheduler");
}

const MUTATED_BY: &str = concat!("spotkube-webhook/", env!("CARGO_PKG_VERSION"));

/// The webhook with one Fargate profile, for namespace "shop"; "shop" and "batch" both
/// default to `capacity: fargate`, "demo" is opted in with the defaults.
async fn start_with_a_fargate_profile() -> common::Server {
    let mut options = Options {
        namespaces: vec![
            namespace("demo", &[("spotkube.io/enabled", "true")]),
            namespace(
                "shop",
                &[
                    ("spotkube.io/enabled", "true"),
                    ("spotkube.io/capacity", "fargate"),
                ],
            ),
            namespace(
                "batch",
                &[
                    ("spotkube.io/enabled", "true"),
                    ("spotkube.io/capacity", "fargate"),
                ],
            ),
        ],
        ..Options::default()
    };
    options.config.fargate_profiles = vec!["shop,pay-*:spotkube.io/fargate=true".parse().unwrap()];
    start(options).await
}

/// The captured pod CREATE in `namespace`, as a ReplicaSet creates it: the namespace is
/// the request's only, the pod's own `metadata.namespace` empty.
fn fixture_in(namespace: &str) -> Value {
    let mut request = fixture();
    request["request"]["namespace"] = json!(namespace);
    request["request"]["object"]["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    request
}

#[tokio::test]
async fn a_pod_on_fargates_scheduler_gets_no_spot_placement() {
    let server = start_with_a_fargate_profile().await;
    // EKS's Fargate webhook (0500-amazon-eks-fargate-mutation...) ran first and set it.
    let mut request = fixture_in("demo");
    request["request"]["object"]["spec"]["schedulerName"] = json!("fargate-scheduler");
    let response = review(&server, &request).await;
    assert!(response["response"].get("warnings").is_none(), "{response}");
    let (pod, patch) = patched(&request, &response);
    assert_eq!(
        serde_json::to_value(&patch).unwrap(),
        json!([{"op": "add", "path": "/metadata/annotations", "value":
            {"spotkube.io/mutated-by": MUTATED_BY, "spotkube.io/protection": "spot-preferred"}}])
    );
    assert_eq!(pod["spec"], request["request"]["object"]["spec"]);

    // The pods of a workload spotkube moved to Fargate carry the profile's label: no spot
    // placement either, even when EKS's webhook did not run.
    let mut request = fixture_in("pay-eu");
    request["request"]["object"]["metadata"]["labels"]["spotkube.io/fargate"] = json!("true");
    let server = start(Options {
        namespaces: vec![namespace(
            "pay-eu",
            &[
                ("spotkube.io/enabled", "true"),
                ("spotkube.io/capacity", "spot-only"),
            ],
        )],
        config: spotkube_webhook::mutate::MutationConfig {
            fargate_profiles: vec!["shop,pay-*:spotkube.io/fargate=true".parse().unwrap()],
            ..Options::default().config
        },
        ..Options::default()
    })
    .await;
    let response = review(&server, &request).await;
    let (pod, patch) = patched(&request, &response);
    assert_eq!(
        serde_json::to_value(&patch).unwrap(),
        json!([{"op": "add", "path": "/metadata/annotations", "value":
            {"spotkube.io/mutated-by": MUTATED_BY, "spotkube.io/protection": "spot-only"}}])
    );
    assert_eq!(pod["spec"]["schedulerName"], "default-scheduler");
}

#[tokio::test]
async fn capacity_fargate_gets_its_namespace_profile_labels_and_fargates_scheduler() {
    let server = start_with_a_fargate_profile().await;
    let request = fixture_in("shop");
    let response = review(&server, &request).await;
    assert_eq!(response["response"]["allowed"], true);
    assert!(response["response"].get("warnings").is_none(), "{response}");
    let (pod, patch) = patched(&request, &response);
    assert_eq!(
        serde_json::to_value(&patch).unwrap(),
        json!([
            {"op": "add", "path": "/metadata/annotations", "value":
                {"spotkube.io/mutated-by": MUTATED_BY, "spotkube.io/protection": "fargate"}},
            {"op": "add", "path": "/metadata/labels/spotkube.io~1fargate", "value": "true"},
            {"op": "replace", "path": "/spec/schedulerName", "value": "fargate-scheduler"}
        ])
    );
    assert_eq!(
        pod["metadata"]["labels"],
        json!({"app": "web", "pod-template-hash": "df8d5c577", "spotkube.io/fargate": "true"})
    );
    assert!(pod["spec"].get("affinity").is_none());

    // Reinvocation (a later webhook changed the pod): nothing more.
    let mut again = request.clone();
    again["request"]["object"] = pod;
    let response = review(&server, &again).await;
    assert!(response["response"].get("patch").is_none(), "{response}");

    let metrics = server.metrics_text();
    for kind in ["labels", "scheduler-name", "annotations"] {
        assert!(
            metrics.contains(&format!(
                "spotkube_webhook_patches_total{{kind=\"{kind}\"}} 1"
            )),
            "{kind}: {metrics}"
        );
    }
}

#[tokio::test]
async fn capacity_fargate_without_a_profile_warns_and_is_placed_as_on_demand() {
    let server = start_with_a_fargate_profile().await;
    let request = fixture_in("batch");
    let response = review(&server, &request).await;
    assert_eq!(response["response"]["allowed"], true);
    assert_eq!(
        response["response"]["warnings"],
        json!([
            "spotkube.io/capacity: fargate, but no Fargate profile (--fargate-profile) covers namespace \"batch\"; the pod is placed as on-demand"
        ])
    );
    let (pod, _) = patched(&request, &response);
    let original = &request["request"]["object"];
    assert_eq!(pod["metadata"]["labels"], original["metadata"]["labels"]);
    assert_eq!(
        pod["spec"]["affinity"],
        json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [
                {"key": "karpenter.sh/capacity-type", "operator": "NotIn", "values": ["spot"]},
                {"key": "eks.amazonaws.com/capacityType", "operator": "NotIn", "values": ["SPOT"]}
            ]}
        ]}}})
    );
    assert_eq!(
        pod["spec"]["tolerations"], original["spec"]["tolerations"],
        "no spot toleration"
    );
    assert_eq!(pod["spec"]["schedulerName"], "spotkube-scheduler");
    assert_eq!(
        pod["metadata"]["annotations"]["spotkube.io/protection"],
        "fargate"
    );
}

async fn assert_unchanged(server: &common::Server, request: &Value) {
    let response = review(server, request).await;
    assert_eq!(response["response"]["uid"], request["request"]["uid"]);
    assert_eq!(response["response"]["allowed"], true);
    assert!(response["response"].get("patch").is_none(), "{response}");
}

#[tokio::test]
async fn out_of_scope_requests_pass_unchanged() {
    let server = start(Options {
        namespaces: vec![
            namespace("demo", &[("spotkube.io/enabled", "true")]),
            namespace("plain", &[]),
        ],
        ..Options::default()
    })
    .await;

    let mut other_ns = fixture();
    other_ns["request"]["namespace"] = json!("plain");
    other_ns["request"]["object"]["metadata"]["namespace"] = json!("plain");
    assert_unchanged(&server, &other_ns).await;

    let mut unknown_ns = fixture();
    unknown_ns["request"]["namespace"] = json!("nowhere");
    assert_unchanged(&server, &unknown_ns).await;

    let mut opted_out = fixture();
    opted_out["request"]["object"]["metadata"]["annotations"] =
        json!({"spotkube.io/enabled": "false"});
    assert_unchanged(&server, &opted_out).await;

    let mut update = fixture();
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["oldObject"] = update["request"]["object"].clone();
    assert_unchanged(&server, &update).await;

    let mut other_kind = fixture();
    other_kind["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
    other_kind["request"]["resource"] =
        json!({"group": "", "version": "v1", "resource": "configmaps"});
    other_kind["request"]["object"] = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "demo"}, "data": {"a": "b"}});
    assert_unchanged(&server, &other_kind).await;

    let metrics = server.metrics_text();
    assert!(
        metrics.contains("spotkube_webhook_admission_requests_total{outcome=\"skipped\"} 5"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_unreadable_pod_is_admitted_with_a_warning() {
    let server = start(Options::default()).await;
    let mut request = fixture();
    // Well-formed AdmissionReview, but the object is not a valid Pod.
    request["request"]["object"]["spec"]["containers"] = json!("not a list");
    let response = review(&server, &request).await;
    assert_eq!(response["response"]["allowed"], true);
    assert_eq!(response["response"]["uid"], request["request"]["uid"]);
    assert!(response["response"].get("patch").is_none());
    assert!(
        response["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("could not read the Pod")
    );
}

async fn post_raw(server: &common::Server, body: Vec<u8>) -> (u16, String) {
    let resp = server
        .client()
        .post(server.url())
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn one_line(text: &str) -> bool {
    text.trim_end().lines().count() == 1
}

#[tokio::test]
async fn bad_input_gets_a_clear_http_error() {
    let server = start(Options {
        max_body_bytes: 64 * 1024,
        ..Options::default()
    })
    .await;

    let (status, text) = post_raw(&server, b"{\"kind\": \"AdmissionReview\",".to_vec()).await;
    assert_eq!(status, 400);
    assert!(
        text.starts_with("malformed AdmissionReview:") && one_line(&text),
        "{text}"
    );

    let mut wrong_version = fixture();
    wrong_version["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let (status, text) = post_raw(&server, serde_json::to_vec(&wrong_version).unwrap()).await;
    assert_eq!(status, 400);
    assert!(
        text.contains("admission.k8s.io/v1beta1") && one_line(&text),
        "{text}"
    );

    let mut wrong_kind = fixture();
    wrong_kind["kind"] = json!("Pod");
    let (status, text) = post_raw(&server, serde_json::to_vec(&wrong_kind).unwrap()).await;
    assert_eq!(status, 400);
    assert!(text.contains("kind \"Pod\"") && one_line(&text), "{text}");

    let no_request = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    let (status, text) = post_raw(&server, serde_json::to_vec(&no_request).unwrap()).await;
    assert_eq!(status, 400);
    assert_eq!(text.trim_end(), "AdmissionReview has no request");

    let mut big = fixture();
    big["request"]["object"]["metadata"]["annotations"] = json!({"filler": "x".repeat(70 * 1024)});
    let (status, _) = post_raw(&server, serde_json::to_vec(&big).unwrap()).await;
    assert_eq!(status, 413);

    // Just under the limit is fine.
    let mut fits = fixture();
    fits["request"]["object"]["metadata"]["annotations"] = json!({"filler": "x".repeat(40 * 1024)});
    let (status, _) = post_raw(&server, serde_json::to_vec(&fits).unwrap()).await;
    assert_eq!(status, 200);

    let metrics = server.metrics_text();
    assert!(
        metrics.contains("spotkube_webhook_admission_requests_total{outcome=\"invalid\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("spotkube_webhook_admission_requests_total{outcome=\"too-large\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn graceful_shutdown_stops_the_listener() {
    let server = start(Options::default()).await;
    let client = server.client();
    assert_eq!(
        client
            .post(server.url())
            .json(&fixture())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    server
        .handle
        .graceful_shutdown(Some(std::time::Duration::from_secs(1)));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        server
            .client()
            .post(server.url())
            .json(&fixture())
            .send()
            .await
            .is_err()
    );
}
