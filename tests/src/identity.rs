//! Programs run as a ServiceAccount with the shipped RBAC edited, instead of the rig's
//! admin: what a missing permission does is then shown for real, by the API server's
//! own authorizer.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::json;

use crate::control_plane::write_kubeconfig;
use crate::{Cluster, RigError, shipped};

/// A kubeconfig that authenticates as `user` in `groups` with a client certificate of
/// the cluster's CA (RBAC matches it like any other identity). `name` names its files.
pub fn client_kubeconfig(
    cluster: &Cluster,
    name: &str,
    user: &str,
    groups: &[&str],
) -> Result<PathBuf, RigError> {
    let dir = cluster.dir.join("identities");
    std::fs::create_dir_all(&dir).map_err(|e| RigError::io(&dir, e))?;
    let cert = cluster.pki.ca.client(&dir, name, user, groups)?;
    let kubeconfig = dir.join(format!("{name}.kubeconfig"));
    write_kubeconfig(
        &kubeconfig,
        &cluster.server,
        &cluster.pki.ca.files.cert,
        &cert,
    )?;
    Ok(kubeconfig)
}

fn kube_error(e: kube::Error) -> RigError {
    RigError::Kube(e.to_string())
}

fn created<K: serde::de::DeserializeOwned>(object: serde_json::Value) -> Result<K, RigError> {
    serde_json::from_value(object).map_err(|e| RigError::Kube(e.to_string()))
}

/// The rules of the first `kind` object in `manifests/controller/rbac.yaml`.
fn rules_of(documents: &[DynamicObject], kind: &str) -> Result<Vec<PolicyRule>, RigError> {
    let object = documents
        .iter()
        .find(|d| d.types.as_ref().is_some_and(|t| t.kind == kind))
        .ok_or_else(|| RigError::Kube(format!("no {kind} in controller/rbac.yaml")))?;
    serde_json::from_value(object.data["rules"].clone())
        .map_err(|e| RigError::Kube(format!("{kind} rules: {e}")))
}

/// Creates ServiceAccount `spotkube-controller` in `namespace` with the shipped
/// controller RBAC, the cluster-wide rules passed through `edit` first (the Role is
/// granted in `namespace`, where the test's Lease lives), and returns a kubeconfig
/// that authenticates as it.
pub async fn controller_kubeconfig(
    cluster: &Cluster,
    client: &kube::Client,
    namespace: &str,
    edit: impl FnOnce(&mut Vec<PolicyRule>),
) -> Result<PathBuf, RigError> {
    let documents = shipped::documents("controller/rbac.yaml")?;
    let mut cluster_rules = rules_of(&documents, "ClusterRole")?;
    edit(&mut cluster_rules);
    let name = "spotkube-controller";
    let unique = format!("spotkube-controller-{namespace}");
    let subjects = json!([{ "kind": "ServiceAccount", "name": name, "namespace": namespace }]);
    let pp = PostParams::default();
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(&pp, &created(json!({ "metadata": { "name": name } }))?)
        .await
        .map_err(kube_error)?;
    Api::<ClusterRole>::all(client.clone())
        .create(
            &pp,
            &created(json!({ "metadata": { "name": unique }, "rules": cluster_rules }))?,
        )
        .await
        .map_err(kube_error)?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(
            &pp,
            &created(json!({
                "metadata": { "name": unique },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": unique },
                "subjects": subjects,
            }))?,
        )
        .await
        .map_err(kube_error)?;
    let role_rules = rules_of(&documents, "Role")?;
    Api::<Role>::namespaced(client.clone(), namespace)
        .create(
            &pp,
            &created(json!({ "metadata": { "name": name }, "rules": role_rules }))?,
        )
        .await
        .map_err(kube_error)?;
    Api::<RoleBinding>::namespaced(client.clone(), namespace)
        .create(
            &pp,
            &created(json!({
                "metadata": { "name": name },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name },
                "subjects": subjects,
            }))?,
        )
        .await
        .map_err(kube_error)?;
    shipped::service_account_kubeconfig(cluster, namespace, name)
}
