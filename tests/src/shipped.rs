//! spotkube as it ships: the manifests under `manifests/`, read and applied to the rig,
//! and a program started with the arguments and environment its Deployment gives it,
//! under its own ServiceAccount's RBAC.
//!
//! ```no_run
//! # async fn demo(cluster: &spotkube_rig::Cluster) -> anyhow::Result<()> {
//! use spotkube_rig::shipped;
//! let client = cluster.client().await?;
//! shipped::apply(&client, "base/namespace.yaml").await?;
//! let shipped = shipped::Container::of("controller/deployment.yaml", "controller")?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde::Deserialize;

use crate::RigError;
use crate::cluster::Cluster;
use crate::programs::ProgramOptions;

/// `manifests/` of this repository: what `charts/spotkube` renders with
/// `charts/spotkube/ci/manifests-values.yaml` (`make manifests`; `make lint` checks it).
pub fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// The Helm chart `charts/spotkube`, the source of `manifests/`.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/spotkube")
}

fn read(relative: &str) -> Result<String, RigError> {
    let path = manifests_dir().join(relative);
    std::fs::read_to_string(&path).map_err(|e| RigError::io(&path, e))
}

/// Every document of a (multi-document) manifest file, as untyped objects.
pub fn documents(relative: &str) -> Result<Vec<DynamicObject>, RigError> {
    parse_documents(&read(relative)?, relative)
}

/// Every document of multi-document YAML `text` (from `origin`, for errors).
pub fn parse_documents(text: &str, origin: &str) -> Result<Vec<DynamicObject>, RigError> {
    let invalid = |e: serde_yaml_ng::Error| RigError::Kube(format!("{origin}: {e}"));
    let mut objects = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value = serde_yaml_ng::Value::deserialize(doc).map_err(invalid)?;
        // A comment-only document, or `---` at the end of a file.
        if !value.is_null() {
            objects.push(serde_yaml_ng::from_value(value).map_err(invalid)?);
        }
    }
    Ok(objects)
}

/// Server-side applies every object of a manifest file (idempotent, so tests may apply
/// the same file twice).
pub async fn apply(client: &kube::Client, relative: &str) -> Result<(), RigError> {
    for object in documents(relative)? {
        apply_object(client, &object, false)
            .await
            .map_err(|e| RigError::Kube(format!("apply {relative}: {e}")))?;
    }
    Ok(())
}

/// Server-side applies one object; with `dry_run`, the API server validates and admits
/// it (schema, defaulting, admission) without storing it.
pub async fn apply_object(
    client: &kube::Client,
    object: &DynamicObject,
    dry_run: bool,
) -> Result<(), RigError> {
    let types = object
        .types
        .clone()
        .ok_or_else(|| RigError::Kube("an object without apiVersion/kind".into()))?;
    let (group, version) = match types.api_version.split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", types.api_version.as_str()),
    };
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &types.kind));
    let name = object.metadata.name.clone().unwrap_or_default();
    let api: Api<DynamicObject> = match &object.metadata.namespace {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let mut params = PatchParams::apply("spotkube-rig").force();
    params.dry_run = dry_run;
    api.patch(&name, &params, &Patch::Apply(object))
        .await
        .map_err(|e| RigError::Kube(format!("{} {name}: {e}", types.kind)))?;
    Ok(())
}

/// One container of a shipped Deployment: what it is started with.
#[derive(Debug, Clone)]
pub struct Container {
    pub namespace: String,
    pub service_account: String,
    pub args: Vec<String>,
    /// `env` as the kubelet sets it for a pod of the Deployment: `value`s as written,
    /// `fieldRef`s to `metadata.namespace` and `metadata.name` resolved, variables from
    /// optional Secrets left out (the rig creates none).
    pub env: Vec<(String, String)>,
}

impl Container {
    /// The container `container` of the Deployment in `relative` (under `manifests/`).
    pub fn of(relative: &str, container: &str) -> Result<Container, RigError> {
        let deployment: Deployment = serde_yaml_ng::from_str(&read(relative)?)
            .map_err(|e| RigError::Kube(format!("{relative}: {e}")))?;
        let namespace = deployment.metadata.namespace.clone().unwrap_or_default();
        let pod_name = format!(
            "{}-shipped",
            deployment.metadata.name.clone().unwrap_or_default()
        );
        let spec = deployment
            .spec
            .and_then(|s| s.template.spec)
            .ok_or_else(|| RigError::Kube(format!("{relative}: no pod spec")))?;
        let found = spec
            .containers
            .into_iter()
            .find(|c| c.name == container)
            .ok_or_else(|| RigError::Kube(format!("{relative}: no container {container}")))?;
        let mut env = Vec::new();
        for var in found.env.unwrap_or_default() {
            let from = var.value_from.as_ref();
            // An optional Secret the rig does not create is absent, as on a cluster
            // without it: the kubelet leaves such a variable unset.
            if from
                .and_then(|f| f.secret_key_ref.as_ref())
                .is_some_and(|r| r.optional == Some(true))
            {
                continue;
            }
            let field = from
                .and_then(|from| from.field_ref.as_ref())
                .map(|f| f.field_path.as_str());
            let value = match (var.value, field) {
                (Some(value), _) => value,
                (None, Some("metadata.namespace")) => namespace.clone(),
                (None, Some("metadata.name")) => pod_name.clone(),
                (None, other) => {
                    return Err(RigError::Kube(format!(
                        "{relative}: env {} from {other:?} is not resolved by the rig",
                        var.name
                    )));
                }
            };
            env.push((var.name, value));
        }
        Ok(Container {
            namespace,
            service_account: spec.service_account_name.unwrap_or_default(),
            args: found.args.unwrap_or_default(),
            env,
        })
    }

    /// The value of `name` in [`Container::env`].
    pub fn env_value(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Program options with these args and env, `overrides` replacing (or adding)
    /// variables: the rig's endpoints instead of AWS's, for instance.
    pub fn options(&self, overrides: &[(String, String)]) -> ProgramOptions {
        let mut options = ProgramOptions::default();
        for arg in &self.args {
            options = options.arg(arg);
        }
        for (key, value) in &self.env {
            if !overrides.iter().any(|(k, _)| k == key) {
                options = options.env(key, value);
            }
        }
        for (key, value) in overrides {
            options = options.env(key, value);
        }
        options
    }
}

/// A kubeconfig that authenticates as ServiceAccount `namespace/name` (a client
/// certificate carrying the ServiceAccount's user name and groups, which RBAC matches
/// like its token), so a program runs with exactly the shipped RBAC.
pub fn service_account_kubeconfig(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
) -> Result<PathBuf, RigError> {
    let groups = [
        "system:serviceaccounts".to_string(),
        format!("system:serviceaccounts:{namespace}"),
        "system:authenticated".to_string(),
    ];
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    crate::identity::client_kubeconfig(
        cluster,
        &format!("{namespace}-{name}"),
        &format!("system:serviceaccount:{namespace}:{name}"),
        &groups,
    )
}

/// The files `base/kustomization.yaml` lists: the namespace and what every component
/// shares.
pub async fn apply_base(client: &kube::Client) -> Result<(), RigError> {
    #[derive(Deserialize)]
    struct Kustomization {
        resources: Vec<String>,
    }
    let kustomization: Kustomization =
        serde_yaml_ng::from_str(&read("base/kustomization.yaml")?)
            .map_err(|e| RigError::Kube(format!("base/kustomization.yaml: {e}")))?;
    for resource in kustomization.resources {
        apply(client, &format!("base/{resource}")).await?;
    }
    Ok(())
}

/// Installs what the controller needs from `manifests/` (base, its ServiceAccount and
/// RBAC) and starts `spotkube-controller` as its Deployment would, authenticated as
/// its ServiceAccount. Only the endpoints change: the queue is `queue_url` and the AWS
/// clients talk to `moto`. `extra` env vars are added or replace shipped ones.
pub async fn start_controller(
    cluster: &Cluster,
    moto: &crate::aws::Moto,
    queue_url: &str,
    extra: &[(&str, &str)],
) -> Result<(crate::Program, Container), RigError> {
    let client = cluster.client().await?;
    apply_base(&client).await?;
    apply(&client, "controller/serviceaccount.yaml").await?;
    apply(&client, "controller/rbac.yaml").await?;
    let container = Container::of("controller/deployment.yaml", "controller")?;
    let kubeconfig =
        service_account_kubeconfig(cluster, &container.namespace, &container.service_account)?;
    let mut overrides = moto.env();
    overrides.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
    overrides.push(("SPOTKUBE_QUEUE_URL".into(), queue_url.into()));
    // The in-cluster extender Service does not exist here: a loopback port that refuses.
    overrides.push(("SPOTKUBE_EXTENDER_URL".into(), "http://127.0.0.1:9".into()));
    overrides.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let controller = cluster
        .start_controller(container.options(&overrides))
        .await?;
    Ok((controller, container))
}
