//! The Helm chart `charts/spotkube` (issue 10): it lints with its default values and with
//! every option on, bad values fail with a message naming the value, every flag of the
//! three programs has a value, and every object it renders is accepted by the rig's real
//! kube-apiserver (server-side dry-run, with cert-manager's and the Prometheus Operator's
//! CRDs installed as their projects publish them). `manifests/` is what the chart renders
//! (`make lint` runs `charts/render-manifests.sh --check`), and the rig registers the
//! webhook and the scheduler configuration from it (`Cluster::register_webhook`,
//! `ExtenderConfig::shipped`).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use spotkube_rig::tools::{crds_dir, helm, program_binary};
use spotkube_rig::{Cluster, shipped, wait_for};

/// The Kubernetes version the chart is rendered for: the rig's.
const KUBE_VERSION: &str = "1.36.3";
const DEFAULT_VALUES: &str = "ci/manifests-values.yaml";
const ALL_OPTIONS: &str = "ci/all-options-values.yaml";

fn run_helm(args: &[&str]) -> Output {
    let chart = shipped::chart_dir();
    Command::new(helm())
        .args(args)
        .current_dir(&chart)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e} (make tools builds it)", helm().display()))
}

/// `helm template` of the chart in `namespace` with `values` files and `--set`s.
fn render(namespace: &str, values: &[&str], sets: &[&str]) -> Result<String, String> {
    let mut args = vec![
        "template",
        "spotkube",
        ".",
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
    ];
    for file in values {
        args.extend(["-f", file]);
    }
    for set in sets {
        args.extend(["--set", set]);
    }
    let output = run_helm(&args);
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).expect("utf-8"))
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn objects(namespace: &str, values: &[&str]) -> Vec<DynamicObject> {
    let text = render(namespace, values, &[]).unwrap_or_else(|e| panic!("{values:?}: {e}"));
    shipped::parse_documents(&text, "helm template").unwrap()
}

fn kind_of(object: &DynamicObject) -> &str {
    object.types.as_ref().map_or("", |t| t.kind.as_str())
}

/// The env var names of container `container` of Deployment `deployment`.
fn env_names(objects: &[DynamicObject], deployment: &str, container: &str) -> BTreeSet<String> {
    let object = objects
        .iter()
        .find(|o| kind_of(o) == "Deployment" && o.metadata.name.as_deref() == Some(deployment))
        .unwrap_or_else(|| panic!("no Deployment {deployment}"));
    let containers = object.data["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    let found = containers
        .iter()
        .find(|c| c["name"] == container)
        .unwrap_or_else(|| panic!("{deployment}: no container {container}"));
    found["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

/// The environment twins `--help` lists (`[env: SPOTKUBE_X=...]`): every flag that has one.
fn env_twins(binary: &str, args: &[&str]) -> BTreeSet<String> {
    let path = program_binary(binary);
    let output = Command::new(&path)
        .args(args)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (make build)", path.display()));
    let help = String::from_utf8(output.stdout).unwrap();
    let twins: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| rest.split(['=', ']']).next().unwrap().trim().to_string())
        .collect();
    assert!(
        twins.len() >= 5,
        "{binary}: too few env twins in --help: {help}"
    );
    twins
}

#[test]
fn the_chart_lints_with_its_values_files() {
    for values in [DEFAULT_VALUES, ALL_OPTIONS] {
        let output = run_helm(&["lint", ".", "--strict", "-f", values]);
        assert!(
            output.status.success(),
            "helm lint -f {values}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn bad_values_fail_with_a_message_naming_the_value() {
    let cases: [(&[&str], &[&str], &str); 5] = [
        (&[], &[], "aws.queueUrl is required"),
        (
            &[DEFAULT_VALUES],
            &["webhook.tls.mode=self"],
            "webhook.tls.mode must be",
        ),
        (
            &[DEFAULT_VALUES],
            &["webhook.tls.mode=secret"],
            "is required with webhook.tls.mode secret",
        ),
        (
            &[DEFAULT_VALUES],
            &["controller.antiAffinity=sometimes"],
            "controller.antiAffinity must be soft, hard or none",
        ),
        (
            &[DEFAULT_VALUES],
            &[
                "webhook.tls.mode=secret",
                "webhook.tls.secretName=mine",
                "webhook.tls.caBundle=Cg==",
                "extender.tls.enabled=true",
            ],
            "extender.tls needs webhook.tls.mode cert-manager or helm",
        ),
    ];
    for (values, sets, message) in cases {
        let error = render("spotkube-system", values, sets).expect_err(message);
        assert!(error.contains(message), "{sets:?}: {error}");
    }
}

/// Every flag of the three programs that has an environment twin is set by the chart
/// when every option is on, and every `config` key of values.yaml names a real flag (a
/// typo would be a value that silently does nothing).
#[test]
fn every_flag_of_every_program_has_a_value() {
    let all = objects("spotkube-system", &[ALL_OPTIONS]);
    let programs = [
        (
            "spotkube-controller",
            &["run"][..],
            "spotkube-controller",
            "controller",
        ),
        ("spotkube-webhook", &[][..], "spotkube-webhook", "webhook"),
        (
            "spotkube-extender",
            &[][..],
            "spotkube-extender",
            "extender",
        ),
    ];
    let values: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(shipped::chart_dir().join("values.yaml")).unwrap(),
    )
    .unwrap();
    for (binary, args, deployment, container) in programs {
        let twins = env_twins(binary, args);
        let set = env_names(&all, deployment, container);
        let missing: Vec<_> = twins.difference(&set).collect();
        assert!(
            missing.is_empty(),
            "{binary}: no chart value sets {missing:?} (add it to {container}.config in values.yaml and to ci/all-options-values.yaml)"
        );
        let config = values[container]["config"].as_object().unwrap();
        for key in config.keys() {
            let env = format!("SPOTKUBE_{}", upper_snake(key));
            assert!(
                twins.contains(&env),
                "values.yaml {container}.config.{key}: {binary} has no {env}"
            );
        }
    }
}

/// `rankingTop` → `RANKING_TOP`, as the chart's `snakecase | upper` does.
fn upper_snake(key: &str) -> String {
    let mut out = String::new();
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rendered_object_is_accepted_by_the_api_server() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let client = cluster.client().await?;
    install_crds(&client).await?;

    for (case, values) in [("default", DEFAULT_VALUES), ("all-options", ALL_OPTIONS)] {
        // Its own namespace per case: the chart's namespaced objects follow the release.
        let namespace = format!("chart-{case}");
        let objects = objects(&namespace, &[values]);
        assert!(objects.len() >= 35, "{case}: {} objects", objects.len());
        // The namespace for real (namespace.create is on in both files): dry-run objects
        // in a namespace that does not exist are refused.
        let created = objects
            .iter()
            .find(|o| kind_of(o) == "Namespace")
            .expect("namespace.create renders the Namespace");
        shipped::apply_object(&client, created, false).await?;
        for object in &objects {
            shipped::apply_object(&client, object, true)
                .await
                .map_err(|e| anyhow::anyhow!("{case}: dry-run refused: {e}"))?;
        }
        let kinds: BTreeSet<&str> = objects.iter().map(kind_of).collect();
        for kind in [
            "Deployment",
            "MutatingWebhookConfiguration",
            "ConfigMap",
            "NetworkPolicy",
        ] {
            assert!(kinds.contains(kind), "{case}: no {kind} in {kinds:?}");
        }
        if case == "all-options" {
            for kind in ["ServiceMonitor", "Secret"] {
                assert!(kinds.contains(kind), "{case}: no {kind} in {kinds:?}");
            }
        } else {
            assert!(
                kinds.contains("Certificate"),
                "{case}: cert-manager mode: {kinds:?}"
            );
        }
    }
    Ok(())
}

/// Creates the CRDs of cert-manager's Issuer and Certificate and the Prometheus
/// Operator's ServiceMonitor, and waits until the API server serves them.
async fn install_crds(client: &kube::Client) -> anyhow::Result<()> {
    let dir = crds_dir();
    let mut served = Vec::new();
    for file in std::fs::read_dir(&dir)
        .map_err(|e| anyhow::anyhow!("{}: {e} (make tools fetches them)", dir.display()))?
    {
        let path = file?.path();
        let text = std::fs::read_to_string(&path)?;
        for crd in shipped::parse_documents(&text, &path.display().to_string())? {
            shipped::apply_object(client, &crd, false).await?;
            served.push(crd_resource(&crd, &path));
        }
    }
    for resource in served {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        wait_for(
            &format!("{} served", resource.plural),
            Duration::from_secs(30),
            || async {
                Ok(api
                    .list(&ListParams::default().limit(1))
                    .await
                    .ok()
                    .map(|_| ()))
            },
        )
        .await?;
    }
    Ok(())
}

/// The resource a CRD defines (its storage version).
fn crd_resource(crd: &DynamicObject, path: &Path) -> ApiResource {
    let spec = &crd.data["spec"];
    let version = spec["versions"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["storage"] == true))
        .and_then(|v| v["name"].as_str())
        .unwrap_or_else(|| panic!("{}: no storage version", path.display()));
    let gvk = GroupVersionKind::gvk(
        spec["group"].as_str().unwrap(),
        version,
        spec["names"]["kind"].as_str().unwrap(),
    );
    ApiResource::from_gvk_with_plural(&gvk, spec["names"]["plural"].as_str().unwrap())
}
