//! Fargate profiles as spotkube sees them: which namespaces a profile covers and the
//! pod labels its selector matches. EKS routes a pod to Fargate at admission when its
//! namespace and labels match a profile (its own webhook sets `schedulerName:
//! fargate-scheduler`); spotkube moves a workload there by adding the profile's labels
//! to its pod template, and the webhook leaves pods that match alone.
//!
//! Written on the command line as `NAMESPACES:KEY=VALUE[,KEY=VALUE]`, e.g.
//! `shop,payments:spotkube.io/fargate=true`; `*` in a namespace matches any run of
//! characters (as EKS profile selectors allow).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// The scheduler EKS's Fargate webhook assigns to the pods a profile matches.
pub const FARGATE_SCHEDULER: &str = "fargate-scheduler";

/// One Fargate profile's selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FargateProfile {
    /// Namespace patterns (`*` wildcards).
    pub namespaces: Vec<String>,
    /// Labels a pod must carry to match (all of them).
    pub labels: BTreeMap<String, String>,
}

/// A `--fargate-profile` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fargate profile {value:?}: {reason} (expected NAMESPACES:KEY=VALUE[,KEY=VALUE])")]
pub struct InvalidProfile {
    pub value: String,
    pub reason: &'static str,
}

impl FromStr for FargateProfile {
    type Err = InvalidProfile;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| InvalidProfile {
            value: value.to_string(),
            reason,
        };
        let (namespaces, labels) = value
            .trim()
            .split_once(':')
            .ok_or_else(|| invalid("no ':' between namespaces and labels"))?;
        let namespaces: Vec<String> = namespaces
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect();
        if namespaces.is_empty() {
            return Err(invalid("no namespace"));
        }
        let mut parsed = BTreeMap::new();
        for pair in labels.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| invalid("a label without '='"))?;
            if key.trim().is_empty() {
                return Err(invalid("an empty label key"));
            }
            parsed.insert(key.trim().to_string(), value.trim().to_string());
        }
        if parsed.is_empty() {
            // A profile without labels would take every pod of its namespaces: spotkube
            // could not move a workload there and back by a label.
            return Err(invalid("no label"));
        }
        Ok(FargateProfile {
            namespaces,
            labels: parsed,
        })
    }
}

impl fmt::Display for FargateProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(f, "{}:{}", self.namespaces.join(","), labels.join(","))
    }
}

impl FargateProfile {
    /// Whether the profile selects pods of `namespace`.
    pub fn covers(&self, namespace: &str) -> bool {
        self.namespaces.iter().any(|p| glob(p, namespace))
    }

    /// Whether a pod of `namespace` with `labels` matches the profile.
    pub fn matches(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.covers(namespace) && self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// One `--fargate-profile` value: profiles separated by whitespace, so that the
/// environment twin (`SPOTKUBE_FARGATE_PROFILES`) carries several; empty is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FargateProfiles(pub Vec<FargateProfile>);

impl FromStr for FargateProfiles {
    type Err = InvalidProfile;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        value
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(FargateProfiles)
    }
}

/// Every profile of repeated `--fargate-profile` values, in order.
pub fn flatten(values: &[FargateProfiles]) -> Vec<FargateProfile> {
    values.iter().flat_map(|v| v.0.iter().cloned()).collect()
}

/// The first profile that covers `namespace`: the one spotkube moves its workloads to.
pub fn profile_for<'a>(
    profiles: &'a [FargateProfile],
    namespace: &str,
) -> Option<&'a FargateProfile> {
    profiles.iter().find(|p| p.covers(namespace))
}

/// Whether any profile matches a pod of `namespace` with `labels`.
pub fn matches_any(
    profiles: &[FargateProfile],
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    profiles.iter().any(|p| p.matches(namespace, labels))
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(tail) = text.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|i| tail.is_char_boundary(*i))
                .any(|i| glob(rest, &tail[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_profile_parses_and_prints_back() {
        let p: FargateProfile = "shop, pay-*:spotkube.io/fargate=true,team=a"
            .parse()
            .unwrap();
        assert_eq!(p.namespaces, vec!["shop", "pay-*"]);
        assert_eq!(
            p.labels,
            labels(&[("spotkube.io/fargate", "true"), ("team", "a")])
        );
        assert_eq!(p.to_string(), "shop,pay-*:spotkube.io/fargate=true,team=a");
        assert_eq!(p.to_string().parse::<FargateProfile>().unwrap(), p);
    }

    #[test]
    fn malformed_profiles_say_what_is_wrong() {
        for (value, reason) in [
            ("shop", "no ':' between namespaces and labels"),
            (":a=b", "no namespace"),
            ("shop:", "no label"),
            ("shop:a", "a label without '='"),
            ("shop:=b", "an empty label key"),
        ] {
            assert_eq!(
                value.parse::<FargateProfile>().unwrap_err().reason,
                reason,
                "{value}"
            );
        }
    }

    #[test]
    fn a_flag_value_holds_profiles_separated_by_whitespace() {
        let values: Vec<FargateProfiles> = ["a:f=1  b:f=2", "", "c:f=3"]
            .iter()
            .map(|v| v.parse().unwrap())
            .collect();
        let names: Vec<String> = flatten(&values)
            .iter()
            .map(|p| p.namespaces.join(","))
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!("a:f=1 b".parse::<FargateProfiles>().is_err());
    }

    #[test]
    fn namespaces_match_with_wildcards() {
        let p: FargateProfile = "shop,pay-*,*-batch:f=1".parse().unwrap();
        assert!(p.covers("shop"));
        assert!(!p.covers("shopping"));
        assert!(p.covers("pay-eu"));
        assert!(p.covers("pay-"));
        assert!(!p.covers("payments"));
        assert!(p.covers("nightly-batch"));
        let all: FargateProfile = "*:f=1".parse().unwrap();
        assert!(all.covers("anything"));
    }

    #[test]
    fn a_pod_matches_when_its_namespace_is_covered_and_it_has_every_label() {
        let profiles: Vec<FargateProfile> = vec![
            "shop:f=1,team=a".parse().unwrap(),
            "batch:f=2".parse().unwrap(),
        ];
        assert!(matches_any(
            &profiles,
            "shop",
            &labels(&[("f", "1"), ("team", "a"), ("x", "y")])
        ));
        assert!(!matches_any(&profiles, "shop", &labels(&[("f", "1")])));
        assert!(!matches_any(
            &profiles,
            "other",
            &labels(&[("f", "1"), ("team", "a")])
        ));
        assert!(matches_any(&profiles, "batch", &labels(&[("f", "2")])));
        assert_eq!(profile_for(&profiles, "batch"), Some(&profiles[1]));
        assert_eq!(profile_for(&profiles, "other"), None);
    }
}
