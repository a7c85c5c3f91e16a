//! The shipped manifests keep spotkube's hard dependencies available: every component
//! runs 2 replicas spread over nodes, has a PodDisruptionBudget and a priority class
//! that exists, and the scheduler and controller stay off the spot capacity they
//! manage. Reads `manifests/` only: no cluster needed.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodSpec;
use kube::api::DynamicObject;
use spotkube_rig::shipped;

const COMPONENTS: [&str; 4] = ["scheduler", "extender", "webhook", "controller"];

/// Every object of every YAML file under `manifests/<dir>`.
fn objects(dir: &str) -> Vec<DynamicObject> {
    let mut files: Vec<_> = std::fs::read_dir(shipped::manifests_dir().join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| shipped::documents(&format!("{dir}/{f}")).unwrap())
        .collect()
}

fn kind(object: &DynamicObject) -> &str {
    object.types.as_ref().map_or("", |t| t.kind.as_str())
}

fn deployment(component: &str) -> Deployment {
    let object = objects(component)
        .into_iter()
        .find(|o| kind(o) == "Deployment")
        .unwrap_or_else(|| panic!("{component} has a Deployment"));
    serde_json::from_value(serde_json::to_value(object).unwrap()).unwrap()
}

fn pod_spec(deployment: &Deployment) -> PodSpec {
    deployment.spec.clone().unwrap().template.spec.unwrap()
}

/// The resources `dir/kustomization.yaml` lists.
fn kustomized(dir: &str) -> Vec<String> {
    let text = std::fs::read_to_string(
        shipped::manifests_dir()
            .join(dir)
            .join("kustomization.yaml"),
    )
    .unwrap();
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    value["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_component_runs_two_replicas_on_different_nodes_under_a_pdb() {
    for component in COMPONENTS {
        let deployment = deployment(component);
        let spec = deployment.spec.clone().unwrap();
        assert!(spec.replicas.unwrap_or(1) >= 2, "{component}: replicas");
        let pod = pod_spec(&deployment);
        let by_affinity = pod
            .affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .is_some_and(|anti| {
                let required = anti
                    .required_during_scheduling_ignored_during_execution
                    .iter()
                    .flatten()
                    .map(|t| t.topology_key.as_str());
                let preferred = anti
                    .preferred_during_scheduling_ignored_during_execution
                    .iter()
                    .flatten()
                    .map(|w| w.pod_affinity_term.topology_key.as_str());
                required
                    .chain(preferred)
                    .any(|k| k == "kubernetes.io/hostname")
            });
        let by_spread = pod
            .topology_spread_constraints
            .iter()
            .flatten()
            .any(|c| c.topology_key == "kubernetes.io/hostname");
        assert!(
            by_affinity || by_spread,
            "{component}: replicas on different nodes"
        );

        let labels = spec.selector.match_labels.clone().unwrap_or_default();
        let pdbs: Vec<_> = objects(component)
            .into_iter()
            .filter(|o| kind(o) == "PodDisruptionBudget")
            .collect();
        assert!(
            pdbs.iter().any(|pdb| {
                let selector = pdb.data["spec"]["selector"]["matchLabels"].as_object();
                selector.is_some_and(|s| {
                    !s.is_empty()
                        && s.iter()
                            .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
                })
            }),
            "{component}: a PodDisruptionBudget selects its pods"
        );
        // Shipped means listed in the kustomization.
        let listed = kustomized(component);
        assert!(
            listed
                .iter()
                .any(|r| r.contains("pdb") || r.contains("disruption")),
            "{component}: PDB in kustomization.yaml: {listed:?}"
        );
    }
}

#[test]
fn every_component_has_a_priority_class_that_ships_in_base() {
    let shipped: BTreeSet<String> = kustomized("base")
        .iter()
        .flat_map(|f| shipped::documents(&format!("base/{f}")).unwrap())
        .filter(|o| kind(o) == "PriorityClass")
        .map(|o| o.metadata.name.unwrap())
        .collect();
    for component in COMPONENTS {
        let class = pod_spec(&deployment(component))
            .priority_class_name
            .unwrap_or_else(|| panic!("{component}: priorityClassName"));
        assert!(
            shipped.contains(&class),
            "{component}: priority class {class} ships in base/ ({shipped:?})"
        );
    }
}

#[test]
fn the_scheduler_and_the_controller_stay_off_spot_nodes() {
    for component in ["scheduler", "controller"] {
        let pod = pod_spec(&deployment(component));
        let terms = pod
            .affinity
            .and_then(|a| a.node_affinity)
            .and_then(|n| n.required_during_scheduling_ignored_during_execution)
            .map(|r| r.node_selector_terms)
            .unwrap_or_default();
        assert!(!terms.is_empty(), "{component}: required node affinity");
        // Every term (they are ORed) must exclude both spot labels.
        for term in &terms {
            let excludes = |key: &str, value: &str| {
                term.match_expressions.iter().flatten().any(|e| {
                    e.key == key
                        && e.operator == "NotIn"
                        && e.values.iter().flatten().any(|v| v == value)
                })
            };
            assert!(
                excludes("karpenter.sh/capacity-type", "spot")
                    && excludes("eks.amazonaws.com/capacityType", "SPOT"),
                "{component}: {term:?}"
            );
        }
    }
}
