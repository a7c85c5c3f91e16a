//! The spot policy of a workload and its resolution.
//!
//! The same `spotkube.io/` keys may stand on the Namespace (defaults), on the workload
//! (Deployment / StatefulSet metadata, or its pod template — whose annotations are the
//! Pod's) and on the Pod. Resolution starts from the cluster defaults and applies each
//! layer in order namespace → workload → pod, so the nearest wins. A malformed value in a
//! layer is skipped (the farther layer's value stays) and reported as a
//! [`PolicyWarning`]; resolution never fails.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::annotations::{
    self, CAPACITY, Capacity, ENABLED, FALLBACK, Fallback, InvalidValue, SPREAD, SURGE, SURGE_HOLD,
    Spread, Surge,
};

/// A fully resolved policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Whether spotkube manages the workload at all (namespace opt-in, workload opt-out).
    pub enabled: bool,
    pub capacity: Capacity,
    pub fallback: Fallback,
    pub surge: Surge,
    pub surge_hold: Duration,
    pub spread: Spread,
}

impl Default for Policy {
    /// The cluster defaults: not enabled (namespaces opt in), `spot-preferred`,
    /// fallback `on-demand`, surge `auto`, surge-hold 5m, spread `zones`.
    fn default() -> Self {
        Policy {
            enabled: false,
            capacity: Capacity::SpotPreferred,
            fallback: Fallback::OnDemand,
            surge: Surge::Auto,
            surge_hold: annotations::DEFAULT_SURGE_HOLD,
            spread: Spread::Zones,
        }
    }
}

/// Where an annotation was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Namespace,
    Workload,
    Pod,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Namespace => "namespace",
            Level::Workload => "workload",
            Level::Pod => "pod",
        })
    }
}

/// A malformed annotation that resolution ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{level} {error}; ignored")]
pub struct PolicyWarning {
    pub level: Level,
    pub error: InvalidValue,
}

/// The policy keys one object sets (each `None` when absent or malformed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    pub enabled: Option<bool>,
    pub capacity: Option<Capacity>,
    pub fallback: Option<Fallback>,
    pub surge: Option<Surge>,
    pub surge_hold: Option<Duration>,
    pub spread: Option<Spread>,
}

impl Overrides {
    /// Reads the policy keys of one annotation map; malformed values become errors
    /// and leave their field `None`.
    pub fn parse(annotations: &BTreeMap<String, String>) -> (Overrides, Vec<InvalidValue>) {
        let mut errors = Vec::new();
        let overrides = Overrides {
            enabled: take(
                annotations,
                ENABLED,
                annotations::parse_enabled,
                &mut errors,
            ),
            capacity: take(annotations, CAPACITY, str::parse, &mut errors),
            fallback: take(annotations, FALLBACK, str::parse, &mut errors),
            surge: take(annotations, SURGE, str::parse, &mut errors),
            surge_hold: take(
                annotations,
                SURGE_HOLD,
                |v| annotations::parse_duration(SURGE_HOLD, v),
                &mut errors,
            ),
            spread: take(annotations, SPREAD, str::parse, &mut errors),
        };
        (overrides, errors)
    }
}

/// Parses `key` when present; a parse error is recorded and yields `None`.
fn take<T>(
    annotations: &BTreeMap<String, String>,
    key: &str,
    parse: impl Fn(&str) -> Result<T, InvalidValue>,
    errors: &mut Vec<InvalidValue>,
) -> Option<T> {
    let value = annotations.get(key)?;
    parse(value).map_err(|e| errors.push(e)).ok()
}

impl Policy {
    /// This policy with one layer's overrides applied.
    pub fn with(mut self, o: &Overrides) -> Policy {
        self.enabled = o.enabled.unwrap_or(self.enabled);
        self.capacity = o.capacity.unwrap_or(self.capacity);
        self.fallback = o.fallback.unwrap_or(self.fallback);
        self.surge = o.surge.unwrap_or(self.surge);
        self.surge_hold = o.surge_hold.unwrap_or(self.surge_hold);
        self.spread = o.spread.unwrap_or(self.spread);
        self
    }
}

/// The annotation maps of each layer (`None` when the object is unknown or has none).
#[derive(Debug, Clone, Copy, Default)]
pub struct Layers<'a> {
    pub namespace: Option<&'a BTreeMap<String, String>>,
    /// The workload object's own annotations (Deployment / StatefulSet metadata).
    pub workload: Option<&'a BTreeMap<String, String>>,
    /// The Pod's annotations (= its pod template's).
    pub pod: Option<&'a BTreeMap<String, String>>,
}

/// A resolved policy and the annotations resolution had to ignore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub policy: Policy,
    pub warnings: Vec<PolicyWarning>,
}

/// Resolves `defaults` < namespace < workload < pod. Never fails: malformed values are
/// skipped and returned as warnings.
pub fn resolve(defaults: &Policy, layers: Layers<'_>) -> Resolved {
    let mut policy = *defaults;
    let mut warnings = Vec::new();
    for (level, map) in [
        (Level::Namespace, layers.namespace),
        (Level::Workload, layers.workload),
        (Level::Pod, layers.pod),
    ] {
        let Some(map) = map else { continue };
        let (overrides, errors) = Overrides::parse(map);
        policy = policy.with(&overrides);
        warnings.extend(
            errors
                .into_iter()
                .map(|error| PolicyWarning { level, error }),
        );
    }
    Resolved { policy, warnings }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_without_annotations() {
        let r = resolve(&Policy::default(), Layers::default());
        assert_eq!(r.policy, Policy::default());
        assert!(!r.policy.enabled);
        assert!(r.warnings.is_empty());
    }

    #[test]
    fn nearest_layer_wins() {
        let ns = map(&[
            (ENABLED, "true"),
            (CAPACITY, "spot-only"),
            (FALLBACK, "fargate"),
            (SPREAD, "capacity-types"),
        ]);
        let workload = map(&[
            (CAPACITY, "on-demand"),
            (SURGE, "scale"),
            (SURGE_HOLD, "90s"),
        ]);
        let pod = map(&[(CAPACITY, "spot-preferred")]);
        let r = resolve(
            &Policy::default(),
            Layers {
                namespace: Some(&ns),
                workload: Some(&workload),
                pod: Some(&pod),
            },
        );
        assert_eq!(
            r.policy,
            Policy {
                enabled: true,
                capacity: Capacity::SpotPreferred,
                fallback: Fallback::Fargate,
                surge: Surge::Scale,
                surge_hold: Duration::from_secs(90),
                spread: Spread::CapacityTypes,
            }
        );
    }

    #[test]
    fn workload_opts_out_of_an_enabled_namespace() {
        let ns = map(&[(ENABLED, "true")]);
        let pod = map(&[(ENABLED, "false")]);
        let r = resolve(
            &Policy::default(),
            Layers {
                namespace: Some(&ns),
                pod: Some(&pod),
                ..Default::default()
            },
        );
        assert!(!r.policy.enabled);
    }

    #[test]
    fn malformed_values_are_warnings_and_keep_the_farther_value() {
        let ns = map(&[(ENABLED, "true"), (CAPACITY, "spot-only")]);
        let pod = map(&[
            (CAPACITY, "mostly-spot"),
            (SURGE_HOLD, "soon"),
            (ENABLED, "yes"),
        ]);
        let r = resolve(
            &Policy::default(),
            Layers {
                namespace: Some(&ns),
                pod: Some(&pod),
                ..Default::default()
            },
        );
        assert!(r.policy.enabled);
        assert_eq!(r.policy.capacity, Capacity::SpotOnly);
        assert_eq!(r.policy.surge_hold, annotations::DEFAULT_SURGE_HOLD);
        let keys: Vec<_> = r.warnings.iter().map(|w| w.error.key).collect();
        assert_eq!(keys, vec![ENABLED, CAPACITY, SURGE_HOLD]);
        assert!(r.warnings.iter().all(|w| w.level == Level::Pod));
        assert!(
            r.warnings[1]
                .to_string()
                .starts_with("pod annotation spotkube.io/capacity: \"mostly-spot\" is not one of"),
            "{}",
            r.warnings[1]
        );
    }

    #[test]
    fn unrelated_annotations_are_ignored() {
        let pod = map(&[
            ("example.com/x", "y"),
            ("spotkube.io/protection", "spot-preferred"),
        ]);
        let (o, errors) = Overrides::parse(&pod);
        assert_eq!(o, Overrides::default());
        assert!(errors.is_empty());
    }
}
