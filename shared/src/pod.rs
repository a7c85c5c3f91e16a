//! Pods that belong to one node by design, which spotkube must not try to place.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// The kubelet's annotation on the mirror of a static pod.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Whether a DaemonSet controls the pod. Its controller pins each pod to one node with
/// required node affinity, so moving it toward spot or away from it can only strand it.
pub fn is_daemonset_owned(owners: Option<&[OwnerReference]>) -> bool {
    owners
        .into_iter()
        .flatten()
        .any(|o| is_daemonset_controller(&o.kind, o.controller))
}

/// Whether an ownerReference with this `kind` and `controller` makes a DaemonSet the
/// pod's controller (for readers that decode only these two fields).
pub fn is_daemonset_controller(kind: &str, controller: Option<bool>) -> bool {
    controller == Some(true) && kind == "DaemonSet"
}

/// Whether the pod is a static pod's mirror: the kubelet already runs it on its node.
pub fn is_mirror(annotations: Option<&BTreeMap<String, String>>) -> bool {
    annotations.is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
}

/// Whether the pod runs where its node or controller put it (DaemonSet or mirror pod).
pub fn is_node_pinned(pod: &Pod) -> bool {
    is_daemonset_owned(pod.metadata.owner_references.as_deref())
        || is_mirror(pod.metadata.annotations.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(kind: &str, controller: Option<bool>) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: "x".into(),
            uid: "u".into(),
            controller,
            ..Default::default()
        }
    }

    #[test]
    fn daemonset_and_mirror_pods_are_node_pinned() {
        let mut pod = Pod::default();
        assert!(!is_node_pinned(&pod));
        pod.metadata.owner_references = Some(vec![owner("ReplicaSet", Some(true))]);
        assert!(!is_node_pinned(&pod));
        // Only the controlling owner counts.
        pod.metadata.owner_references = Some(vec![owner("DaemonSet", None)]);
        assert!(!is_node_pinned(&pod));
        pod.metadata.owner_references = Some(vec![
            owner("ConfigMap", None),
            owner("DaemonSet", Some(true)),
        ]);
        assert!(is_node_pinned(&pod));

        let mut mirror = Pod::default();
        mirror.metadata.annotations = Some(BTreeMap::from([(
            MIRROR_ANNOTATION.to_string(),
            "abc".to_string(),
        )]));
        assert!(is_node_pinned(&mirror));
    }
}
