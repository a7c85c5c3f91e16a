//! Minimal workloads for scenarios: a Deployment of pause containers and a Service over it.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, PodSpec, PodTemplateSpec, ResourceRequirements, Service, ServicePort,
    ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::RigError;

/// The label every pod of [`deployment`] carries (`app=<name>`), which [`service`] selects.
pub const APP_LABEL: &str = "app";

/// A Deployment `name` of `replicas` pause pods (100m CPU, 64Mi), labelled `app=<name>`.
/// Adjust `spec.template` (node selector, annotations, strategy) before creating it.
pub fn deployment(name: &str, replicas: i32) -> Deployment {
    let labels = BTreeMap::from([(APP_LABEL.to_string(), name.to_string())]);
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some("registry.k8s.io/pause:3.10".into()),
                        ports: Some(vec![ContainerPort {
                            container_port: 8080,
                            ..Default::default()
                        }]),
                        resources: Some(ResourceRequirements {
                            requests: Some(BTreeMap::from([
                                ("cpu".to_string(), Quantity("100m".into())),
                                ("memory".to_string(), Quantity("64Mi".into())),
                            ])),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Restricts a Deployment's pods to nodes labelled `key=value` (e.g. a per-test node pool).
pub fn with_node_selector(mut deployment: Deployment, key: &str, value: &str) -> Deployment {
    if let Some(spec) = deployment
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
    {
        spec.node_selector
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
    }
    deployment
}

/// Sets the pods' `terminationGracePeriodSeconds` (kwok finalizes a deleted pod after it).
pub fn with_grace_period(mut deployment: Deployment, seconds: i64) -> Deployment {
    if let Some(spec) = deployment
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
    {
        spec.termination_grace_period_seconds = Some(seconds);
    }
    deployment
}

/// A ClusterIP Service `name` selecting `app=<name>`, port 80 → 8080.
pub fn service(name: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(APP_LABEL.to_string(), name.to_string())])),
            ports: Some(vec![ServicePort {
                port: 80,
                target_port: Some(IntOrString::Int(8080)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates a Deployment and its Service in `namespace`.
pub async fn create_with_service(
    client: &kube::Client,
    namespace: &str,
    deployment: &Deployment,
) -> Result<(), RigError> {
    let name = deployment.metadata.name.clone().unwrap_or_default();
    Api::<Deployment>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), deployment)
        .await
        .map_err(|e| RigError::Kube(format!("create deployment {namespace}/{name}: {e}")))?;
    Api::<Service>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &service(&name))
        .await
        .map_err(|e| RigError::Kube(format!("create service {namespace}/{name}: {e}")))?;
    Ok(())
}

/// A pause Deployment of `replicas` on the Nodes labelled `<pool_label>=<pool>` (a test's
/// pool), grace period 1 s, with its Service.
pub async fn create_on_pool(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    replicas: i32,
    (pool_label, pool): (&str, &str),
) -> Result<(), RigError> {
    let d = with_grace_period(
        with_node_selector(deployment(name, replicas), pool_label, pool),
        1,
    );
    create_with_service(client, namespace, &d).await
}
