//! The price ranking: its versioned wire model (the `ranking.json` key of ConfigMap
//! `spotkube-system/spotkube-ranking`), the pure computation that turns instance-type
//! facts and prices into a per-AZ top N, and the rank → extender score mapping.
//!
//! Nothing here does I/O: the controller's pricing sources gather a [`PriceBook`],
//! [`compute`] ranks it, and the extender reads the result with [`Ranking::from_json`].

use std::cmp::Ordering;
use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::node::CapacityType;

/// The schema version written by this build, `MAJOR.MINOR`. Readers accept any minor
/// of their major (minor versions only add optional fields) and reject other majors.
pub const SCHEMA_VERSION: &str = "1.1";
/// The major version of [`SCHEMA_VERSION`].
pub const SCHEMA_MAJOR: u64 = 1;

/// The ConfigMap the controller writes and the extender watches.
pub const CONFIGMAP_NAMESPACE: &str = "spotkube-system";
pub const CONFIGMAP_NAME: &str = "spotkube-ranking";
/// The ConfigMap data key holding the JSON ranking.
pub const CONFIGMAP_KEY: &str = "ranking.json";

/// The ranking: for each AZ, the best instance types, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranking {
    /// `MAJOR.MINOR`; see [`SCHEMA_VERSION`].
    pub schema_version: String,
    /// When the prices were gathered and ranked.
    pub computed_at: Timestamp,
    /// Where the prices came from (`aws`, `snapshot`, ...), followed by a note in
    /// parentheses when the interruption bands are a fallback (see
    /// [`PriceBook::bands_fallback`]).
    pub source: String,
    /// The AWS region the zones belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The criteria the ranking was computed with (for people and for audits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub criteria: Option<Criteria>,
    /// AZ name (e.g. `us-east-1a`) → entries, rank 1 first.
    pub zones: BTreeMap<String, Vec<RankedType>>,
    /// Offerings that just failed to launch or are being reclaimed (since 1.1; absent
    /// = none): the extender scores their nodes as unranked until `expires`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<Unavailable>,
}

/// An offering (instance type, zone, capacity type) marked unavailable by the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unavailable {
    pub instance_type: String,
    pub zone: String,
    /// `spot` or `on-demand` (as [`CapacityType::as_str`]).
    pub capacity_type: String,
    /// `capacity-error` or `spot-interruption`.
    pub reason: String,
    pub expires: Timestamp,
}

impl Unavailable {
    /// Whether the mark is for this offering and still in force at `now`.
    pub fn covers(
        &self,
        zone: &str,
        instance_type: &str,
        capacity: CapacityType,
        now: Timestamp,
    ) -> bool {
        self.expires > now
            && self.zone == zone
            && self.instance_type == instance_type
            && self.capacity_type == capacity.as_str()
    }
}

/// One ranked instance type in one AZ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedType {
    /// 1 = best in its AZ.
    pub rank: u32,
    pub instance_type: String,
    pub spot_usd_per_hour: f64,
    pub on_demand_usd_per_hour: f64,
    /// `(1 − spot / on-demand) × 100`.
    pub savings_percent: f64,
    pub vcpu: u32,
    pub memory_gib: f64,
    /// Spot Advisor interruption band (0: <5 %, 1: 5–10 %, 2: 10–15 %, 3: 15–20 %,
    /// 4: >20 %), when the source knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interruption_band: Option<u8>,
    /// The value the ranking sorted by (lower is better; unit depends on `criteria.score`).
    pub score: f64,
}

/// Why a ranking document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RankingError {
    #[error("ranking is not valid JSON for schema {SCHEMA_VERSION}: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "ranking schema_version {found:?} is not supported: this build reads major version {SCHEMA_MAJOR} (writes {SCHEMA_VERSION})"
    )]
    UnsupportedVersion { found: String },
}

impl Ranking {
    /// Reads a ranking document, checking the schema version before anything else so an
    /// unknown major fails with a clear error rather than a confusing field error.
    pub fn from_json(text: &str) -> Result<Self, RankingError> {
        #[derive(Deserialize)]
        struct VersionOnly {
            schema_version: String,
        }
        let VersionOnly { schema_version } = serde_json::from_str(text)?;
        let major = schema_version
            .split('.')
            .next()
            .and_then(|m| m.parse::<u64>().ok());
        if major != Some(SCHEMA_MAJOR) {
            return Err(RankingError::UnsupportedVersion {
                found: schema_version,
            });
        }
        Ok(serde_json::from_str(text)?)
    }

    /// Pretty JSON, stable key order (zones are a BTreeMap), for the ConfigMap.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("ranking serializes")
    }

    /// The rank (1-based) of `instance_type` in `zone`, if ranked there.
    pub fn rank_of(&self, zone: &str, instance_type: &str) -> Option<u32> {
        self.zones
            .get(zone)?
            .iter()
            .find(|e| e.instance_type == instance_type)
            .map(|e| e.rank)
    }

    /// Whether an unexpired mark lists `instance_type` in `zone` on `capacity`.
    pub fn is_unavailable(
        &self,
        zone: &str,
        instance_type: &str,
        capacity: CapacityType,
        now: Timestamp,
    ) -> bool {
        self.unavailable
            .iter()
            .any(|u| u.covers(zone, instance_type, capacity, now))
    }

    /// Whether two rankings rank the same things at the same prices and list the same
    /// unavailable offerings (ignores `computed_at`): the controller rewrites the
    /// ConfigMap only when this is false.
    pub fn same_content(&self, other: &Ranking) -> bool {
        self.schema_version == other.schema_version
            && self.source == other.source
            && self.region == other.region
            && self.criteria == other.criteria
            && self.zones == other.zones
            && self.unavailable == other.unavailable
    }
}

/// What the ranking sorts by, ascending.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "by", rename_all = "kebab-case")]
pub enum ScoreBy {
    /// Spot $ per vCPU-hour (the default).
    #[default]
    PerVcpu,
    /// Spot $ per GiB-hour of memory.
    PerGib,
    /// `vcpu_weight × $/vCPU-h + (1 − vcpu_weight) × $/GiB-h`.
    Blend { vcpu_weight: f64 },
}

impl ScoreBy {
    fn score(self, spot: f64, vcpu: u32, memory_gib: f64) -> f64 {
        let per_vcpu = spot / f64::from(vcpu.max(1));
        let per_gib = spot / memory_gib.max(f64::MIN_POSITIVE);
        match self {
            ScoreBy::PerVcpu => per_vcpu,
            ScoreBy::PerGib => per_gib,
            ScoreBy::Blend { vcpu_weight } => {
                let w = vcpu_weight.clamp(0.0, 1.0);
                w * per_vcpu + (1.0 - w) * per_gib
            }
        }
    }
}

/// Every knob of the ranking. [`Criteria::default`] is spotkube's documented default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Criteria {
    /// Allowed CPU architectures (EC2 names: `arm64`, `x86_64`). Empty = any.
    pub architectures: Vec<String>,
    /// Allowed families (the part before the dot: `c7g`). Empty = any.
    pub families: Vec<String>,
    pub min_vcpu: u32,
    pub max_vcpu: u32,
    /// Skip bare-metal sizes (`*.metal*`).
    pub exclude_metal: bool,
    /// Skip types the source marks as previous generation.
    pub current_generation_only: bool,
    /// Skip burstable (T-class) types.
    pub exclude_burstable: bool,
    /// Highest Spot Advisor interruption band allowed, where the source knows it.
    pub max_interruption_band: Option<u8>,
    /// Lowest pod density allowed (max pods from ENIs × IPs), where the source knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_pods: Option<u32>,
    pub score: ScoreBy,
    /// How many types to keep per AZ.
    pub top_n: usize,
}

impl Default for Criteria {
    fn default() -> Self {
        Criteria {
            architectures: vec!["arm64".into()],
            families: ["c7g", "c8g", "m7g", "m8g", "r7g", "r8g"]
                .map(String::from)
                .to_vec(),
            min_vcpu: 2,
            max_vcpu: 16,
            exclude_metal: true,
            current_generation_only: true,
            exclude_burstable: true,
            max_interruption_band: Some(2),
            min_pods: None,
            score: ScoreBy::PerVcpu,
            top_n: 6,
        }
    }
}

/// Scores that compare within this distance are ties, broken by type name.
pub const TIE_EPSILON: f64 = 1e-9;

/// What a source knows about one instance type. `None` = the source does not know,
/// and the corresponding criterion lets the type through.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InstanceTypeInfo {
    pub vcpu: u32,
    pub memory_gib: f64,
    pub architectures: Vec<String>,
    pub current_generation: Option<bool>,
    pub burstable: Option<bool>,
    pub bare_metal: Option<bool>,
    pub interruption_band: Option<u8>,
    /// Max pods with the VPC CNI: `ENIs × (IPs per ENI − 1) + 2`.
    pub max_pods: Option<u32>,
}

/// Max pods the VPC CNI allows without prefix delegation.
pub fn vpc_cni_max_pods(enis: u32, ipv4_per_eni: u32) -> u32 {
    enis * ipv4_per_eni.saturating_sub(1) + 2
}

/// Everything the ranking needs, gathered by a pricing source.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PriceBook {
    pub region: Option<String>,
    /// Instance type name → facts.
    pub types: BTreeMap<String, InstanceTypeInfo>,
    /// AZ → instance type → latest spot $/hour.
    pub spot: BTreeMap<String, BTreeMap<String, f64>>,
    /// Instance type → on-demand Linux $/hour.
    pub on_demand: BTreeMap<String, f64>,
    /// Set when the interruption bands do not come from where the source normally takes
    /// them: where they came from instead, and why. [`compute`] says it in the ranking's
    /// `source`, so a reader of the ConfigMap sees the fallback.
    pub bands_fallback: Option<String>,
}

/// The family of an instance type name: `c7g.large` → `c7g`.
pub fn family(instance_type: &str) -> &str {
    instance_type.split('.').next().unwrap_or(instance_type)
}

/// Whether a type passes every filter of `criteria` (prices aside).
pub fn admits(criteria: &Criteria, name: &str, info: &InstanceTypeInfo) -> bool {
    let fam = family(name);
    let size = name.split_once('.').map(|(_, s)| s).unwrap_or("");
    (criteria.architectures.is_empty()
        || info
            .architectures
            .iter()
            .any(|a| criteria.architectures.contains(a)))
        && (criteria.families.is_empty() || criteria.families.iter().any(|f| f == fam))
        && (criteria.min_vcpu..=criteria.max_vcpu).contains(&info.vcpu)
        && !(criteria.exclude_metal && (info.bare_metal == Some(true) || size.contains("metal")))
        && !(criteria.current_generation_only && info.current_generation == Some(false))
        && !(criteria.exclude_burstable && info.burstable == Some(true))
        && match (criteria.max_interruption_band, info.interruption_band) {
            (Some(max), Some(band)) => band <= max,
            _ => true,
        }
        && match (criteria.min_pods, info.max_pods) {
            (Some(min), Some(pods)) => pods >= min,
            _ => true,
        }
}

/// Ranks `book` per AZ. Types without an on-demand price or a positive spot price in
/// an AZ are skipped there (savings cannot be shown honestly without both).
pub fn compute(
    book: &PriceBook,
    criteria: &Criteria,
    source: &str,
    computed_at: Timestamp,
) -> Ranking {
    let mut zones = BTreeMap::new();
    for (zone, prices) in &book.spot {
        let mut entries: Vec<RankedType> = prices
            .iter()
            .filter_map(|(name, &spot)| {
                let info = book.types.get(name)?;
                let on_demand = *book.on_demand.get(name)?;
                if !(spot > 0.0 && on_demand > 0.0 && admits(criteria, name, info)) {
                    return None;
                }
                Some(RankedType {
                    rank: 0,
                    instance_type: name.clone(),
                    spot_usd_per_hour: spot,
                    on_demand_usd_per_hour: on_demand,
                    savings_percent: (1.0 - spot / on_demand) * 100.0,
                    vcpu: info.vcpu,
                    memory_gib: info.memory_gib,
                    interruption_band: info.interruption_band,
                    score: criteria.score.score(spot, info.vcpu, info.memory_gib),
                })
            })
            .collect();
        entries.sort_by(compare_entries);
        entries.truncate(criteria.top_n);
        for (i, e) in entries.iter_mut().enumerate() {
            e.rank = i as u32 + 1;
        }
        if !entries.is_empty() {
            zones.insert(zone.clone(), entries);
        }
    }
    Ranking {
        schema_version: SCHEMA_VERSION.to_string(),
        computed_at,
        source: match &book.bands_fallback {
            Some(note) => format!("{source} ({note})"),
            None => source.to_string(),
        },
        region: book.region.clone(),
        criteria: Some(criteria.clone()),
        zones,
        unavailable: Vec::new(),
    }
}

/// Ascending score; scores within [`TIE_EPSILON`] tie and the type name decides.
fn compare_entries(a: &RankedType, b: &RankedType) -> Ordering {
    if (a.score - b.score).abs() <= TIE_EPSILON {
        a.instance_type.cmp(&b.instance_type)
    } else {
        a.score.total_cmp(&b.score)
    }
}

/// Where a node stands for the extender's prioritize verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// A spot node whose instance type holds `rank` in the node's AZ.
    Ranked { rank: u32 },
    /// A spot node whose type is not ranked in its AZ.
    UnrankedSpot,
    /// An on-demand node (or one whose capacity type is unknown).
    OnDemand,
    /// A node under rebalance recommendation (elevated interruption risk).
    Rebalancing,
    /// No ranking is available: price must not sway the scheduler either way.
    NoRanking,
}

/// The score given while no ranking is available, to every node not rebalancing.
pub const NEUTRAL_SCORE: i64 = 5;
/// The lowest score a ranked type gets (ranks beyond 8 all score this).
pub const LOWEST_RANKED_SCORE: i64 = 3;
pub const UNRANKED_SPOT_SCORE: i64 = 2;
pub const ON_DEMAND_SCORE: i64 = 1;
pub const REBALANCING_SCORE: i64 = 0;

/// The prioritize score (`0..=10`, kube-scheduler's `MaxExtenderPriority`):
///
/// | standing | score |
/// | --- | --- |
/// | spot, rank r in its AZ | `max(10 − (r − 1), 3)`: rank 1 → 10, 2 → 9, … 6 → 5, 8 and beyond → 3 |
/// | spot, type not ranked in its AZ | 2 |
/// | on-demand / unknown capacity type | 1 |
/// | under rebalance recommendation | 0 |
/// | no ranking available (not rebalancing) | 5 (neutral) |
pub fn score(standing: Standing) -> i64 {
    match standing {
        Standing::Ranked { rank } => (10 - (i64::from(rank.max(1)) - 1)).max(LOWEST_RANKED_SCORE),
        Standing::UnrankedSpot => UNRANKED_SPOT_SCORE,
        Standing::OnDemand => ON_DEMAND_SCORE,
        Standing::Rebalancing => REBALANCING_SCORE,
        Standing::NoRanking => NEUTRAL_SCORE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(vcpu: u32, memory_gib: f64) -> InstanceTypeInfo {
        InstanceTypeInfo {
            vcpu,
            memory_gib,
            architectures: vec!["arm64".into()],
            current_generation: Some(true),
            burstable: Some(false),
            bare_metal: Some(false),
            interruption_band: Some(0),
            max_pods: Some(29),
        }
    }

    fn book(entries: &[(&str, InstanceTypeInfo, f64, f64)]) -> PriceBook {
        let mut b = PriceBook::default();
        for (name, info, spot, od) in entries {
            b.types.insert(name.to_string(), info.clone());
            b.on_demand.insert(name.to_string(), *od);
            for zone in ["z-a", "z-b"] {
                b.spot
                    .entry(zone.into())
                    .or_default()
                    .insert(name.to_string(), *spot);
            }
        }
        b
    }

    fn names(r: &Ranking, zone: &str) -> Vec<String> {
        r.zones[zone]
            .iter()
            .map(|e| e.instance_type.clone())
            .collect()
    }

    #[test]
    fn a_bands_fallback_is_said_in_the_source() {
        let mut b = book(&[("c7g.large", arm(2, 4.0), 0.03, 0.0725)]);
        let at = Timestamp::UNIX_EPOCH;
        assert_eq!(compute(&b, &Criteria::default(), "aws", at).source, "aws");
        b.bands_fallback = Some("interruption bands from the price snapshot".into());
        let ranking = compute(&b, &Criteria::default(), "aws", at);
        assert_eq!(
            ranking.source,
            "aws (interruption bands from the price snapshot)"
        );
        assert_eq!(names(&ranking, "z-a"), ["c7g.large"]);
    }

    #[test]
    fn defaults_are_exact() {
        let c = Criteria::default();
        assert_eq!(c.architectures, ["arm64"]);
        assert_eq!(c.families, ["c7g", "c8g", "m7g", "m8g", "r7g", "r8g"]);
        assert_eq!((c.min_vcpu, c.max_vcpu), (2, 16));
        assert!(c.exclude_metal && c.current_generation_only && c.exclude_burstable);
        assert_eq!(c.max_interruption_band, Some(2));
        assert_eq!(c.score, ScoreBy::PerVcpu);
        assert_eq!(c.top_n, 6);
        assert_eq!(c.min_pods, None);
    }

    #[test]
    fn default_filters_each_exclude_what_they_name() {
        let c = Criteria::default();
        let ok = arm(4, 8.0);
        assert!(admits(&c, "c7g.xlarge", &ok));
        assert!(!admits(&c, "c6g.xlarge", &ok), "family");
        assert!(
            !admits(
                &c,
                "c7i.xlarge",
                &InstanceTypeInfo {
                    architectures: vec!["x86_64".into()],
                    ..ok.clone()
                }
            ),
            "architecture"
        );
        assert!(!admits(&c, "c7g.medium", &arm(1, 2.0)), "too few vCPU");
        assert!(!admits(&c, "c7g.8xlarge", &arm(32, 64.0)), "too many vCPU");
        assert!(
            admits(&c, "c7g.4xlarge", &arm(16, 32.0)),
            "16 vCPU is in range"
        );
        assert!(!admits(&c, "c7g.metal", &arm(16, 32.0)), "metal by name");
        assert!(
            !admits(
                &c,
                "c7g.xlarge",
                &InstanceTypeInfo {
                    bare_metal: Some(true),
                    ..ok.clone()
                }
            ),
            "metal by flag"
        );
        assert!(
            !admits(
                &c,
                "c7g.xlarge",
                &InstanceTypeInfo {
                    current_generation: Some(false),
                    ..ok.clone()
                }
            ),
            "previous generation"
        );
        assert!(
            !admits(
                &c,
                "c7g.xlarge",
                &InstanceTypeInfo {
                    burstable: Some(true),
                    ..ok.clone()
                }
            ),
            "burstable"
        );
        assert!(
            !admits(
                &c,
                "c7g.xlarge",
                &InstanceTypeInfo {
                    interruption_band: Some(3),
                    ..ok.clone()
                }
            ),
            "band 3"
        );
        assert!(admits(
            &c,
            "c7g.xlarge",
            &InstanceTypeInfo {
                interruption_band: Some(2),
                ..ok.clone()
            }
        ));
        assert!(
            admits(
                &c,
                "c7g.xlarge",
                &InstanceTypeInfo {
                    interruption_band: None,
                    current_generation: None,
                    burstable: None,
                    ..ok.clone()
                }
            ),
            "unknown facts let a type through"
        );
        let dense = Criteria {
            min_pods: Some(30),
            ..Criteria::default()
        };
        assert!(!admits(&dense, "c7g.xlarge", &ok), "29 pods < 30");
        assert!(admits(
            &dense,
            "c7g.xlarge",
            &InstanceTypeInfo {
                max_pods: None,
                ..ok
            }
        ));
    }

    #[test]
    fn ranks_by_spot_per_vcpu_ascending_and_keeps_top_n() {
        let b = book(&[
            ("c7g.large", arm(2, 4.0), 0.03, 0.07),  // 0.015 / vCPU
            ("c7g.xlarge", arm(4, 8.0), 0.05, 0.14), // 0.0125
            ("m7g.large", arm(2, 8.0), 0.02, 0.08),  // 0.010
            ("r7g.large", arm(2, 16.0), 0.04, 0.10), // 0.020
            ("c8g.large", arm(2, 4.0), 0.05, 0.08),  // 0.025
            ("c8g.xlarge", arm(4, 8.0), 0.12, 0.16), // 0.030
            ("m8g.large", arm(2, 8.0), 0.07, 0.09),  // 0.035
        ]);
        let r = compute(&b, &Criteria::default(), "test", Timestamp::UNIX_EPOCH);
        assert_eq!(
            names(&r, "z-a"),
            [
                "m7g.large",
                "c7g.xlarge",
                "c7g.large",
                "r7g.large",
                "c8g.large",
                "c8g.xlarge"
            ]
        );
        assert_eq!(names(&r, "z-a"), names(&r, "z-b"));
        let first = &r.zones["z-a"][0];
        assert_eq!(first.rank, 1);
        assert!((first.savings_percent - 75.0).abs() < 1e-9);
        assert_eq!(r.zones["z-a"][5].rank, 6);
        assert_eq!(r.rank_of("z-a", "c7g.large"), Some(3));
        assert_eq!(r.rank_of("z-a", "m8g.large"), None);
        assert_eq!(r.rank_of("z-c", "c7g.large"), None);
    }

    #[test]
    fn ties_within_epsilon_go_to_the_smaller_name() {
        let b = book(&[
            ("r7g.large", arm(2, 16.0), 0.02, 0.1),
            ("c7g.xlarge", arm(4, 8.0), 0.04 + 1e-10, 0.1),
            ("m7g.large", arm(2, 8.0), 0.02, 0.1),
        ]);
        let r = compute(&b, &Criteria::default(), "test", Timestamp::UNIX_EPOCH);
        assert_eq!(names(&r, "z-a"), ["c7g.xlarge", "m7g.large", "r7g.large"]);
    }

    #[test]
    fn per_gib_and_blend_change_the_order() {
        let b = book(&[
            ("c7g.large", arm(2, 4.0), 0.02, 0.1),  // 0.010/vCPU 0.0050/GiB
            ("r7g.large", arm(2, 16.0), 0.03, 0.1), // 0.015/vCPU 0.0019/GiB
        ]);
        let by = |score| {
            let c = Criteria {
                score,
                ..Criteria::default()
            };
            names(&compute(&b, &c, "t", Timestamp::UNIX_EPOCH), "z-a")
        };
        assert_eq!(by(ScoreBy::PerVcpu), ["c7g.large", "r7g.large"]);
        assert_eq!(by(ScoreBy::PerGib), ["r7g.large", "c7g.large"]);
        assert_eq!(
            by(ScoreBy::Blend { vcpu_weight: 1.0 }),
            ["c7g.large", "r7g.large"]
        );
        assert_eq!(
            by(ScoreBy::Blend { vcpu_weight: 0.0 }),
            ["r7g.large", "c7g.large"]
        );
    }

    #[test]
    fn types_without_prices_are_skipped() {
        let mut b = book(&[
            ("c7g.large", arm(2, 4.0), 0.02, 0.1),
            ("m7g.large", arm(2, 8.0), 0.02, 0.1),
        ]);
        b.on_demand.remove("m7g.large");
        b.spot
            .get_mut("z-b")
            .unwrap()
            .insert("c7g.large".into(), 0.0);
        let r = compute(&b, &Criteria::default(), "t", Timestamp::UNIX_EPOCH);
        assert_eq!(names(&r, "z-a"), ["c7g.large"]);
        assert!(!r.zones.contains_key("z-b"));
    }

    #[test]
    fn round_trips_and_rejects_unknown_major() {
        let b = book(&[("c7g.large", arm(2, 4.0), 0.02, 0.1)]);
        let r = compute(
            &b,
            &Criteria::default(),
            "snapshot",
            "2026-11-22T04:00:00Z".parse().unwrap(),
        );
        let text = r.to_json();
        assert_eq!(Ranking::from_json(&text).unwrap(), r);
        let minor = text.replace(&format!("\"{SCHEMA_VERSION}\""), "\"1.7\"");
        assert!(
            Ranking::from_json(&minor).is_ok(),
            "a newer minor is readable"
        );
        let major = text.replace(&format!("\"{SCHEMA_VERSION}\""), "\"2.0\"");
        let err = Ranking::from_json(&major).unwrap_err().to_string();
        assert!(
            err.contains("\"2.0\" is not supported") && err.contains("major version 1"),
            "{err}"
        );
        assert!(Ranking::from_json("{}").is_err());
        let entry = serde_json::to_value(&r.zones["z-a"][0]).unwrap();
        for key in [
            "instance_type",
            "spot_usd_per_hour",
            "on_demand_usd_per_hour",
            "savings_percent",
            "vcpu",
            "memory_gib",
            "interruption_band",
        ] {
            assert!(entry.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn same_content_ignores_computed_at() {
        let b = book(&[("c7g.large", arm(2, 4.0), 0.02, 0.1)]);
        let a = compute(&b, &Criteria::default(), "t", Timestamp::UNIX_EPOCH);
        let later = compute(&b, &Criteria::default(), "t", Timestamp::now());
        assert!(a.same_content(&later));
        let mut cheaper = b.clone();
        cheaper
            .spot
            .get_mut("z-a")
            .unwrap()
            .insert("c7g.large".into(), 0.01);
        assert!(!a.same_content(&compute(
            &cheaper,
            &Criteria::default(),
            "t",
            Timestamp::UNIX_EPOCH
        )));
    }

    fn mark(instance_type: &str, zone: &str, capacity: &str, expires: &str) -> Unavailable {
        Unavailable {
            instance_type: instance_type.into(),
            zone: zone.into(),
            capacity_type: capacity.into(),
            reason: "capacity-error".into(),
            expires: expires.parse().unwrap(),
        }
    }

    #[test]
    fn unavailable_round_trips_and_is_absent_when_empty() {
        let b = book(&[("m7g.large", arm(2, 8.0), 0.02, 0.1)]);
        let mut r = compute(&b, &Criteria::default(), "t", Timestamp::UNIX_EPOCH);
        assert!(
            !r.to_json().contains("unavailable"),
            "no marks, no key: a 1.0 reader sees the document it knows"
        );
        r.unavailable = vec![mark("m7g.large", "z-a", "spot", "2026-12-01T19:00:00Z")];
        let text = r.to_json();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value["unavailable"],
            serde_json::json!([{
                "instance_type": "m7g.large", "zone": "z-a", "capacity_type": "spot",
                "reason": "capacity-error", "expires": "2026-12-01T19:00:00Z",
            }])
        );
        assert_eq!(Ranking::from_json(&text).unwrap(), r);
    }

    #[test]
    fn a_document_without_unavailable_reads_as_none_listed() {
        let text = r#"{"schema_version": "1.0", "computed_at": "2026-11-22T04:00:00Z",
            "source": "aws", "zones": {"z-a": []}}"#;
        let r = Ranking::from_json(text).unwrap();
        assert!(r.unavailable.is_empty());
        assert!(!r.is_unavailable(
            "z-a",
            "m7g.large",
            CapacityType::Spot,
            Timestamp::UNIX_EPOCH
        ));
    }

    #[test]
    fn is_unavailable_matches_the_offering_and_ignores_expired_marks() {
        let b = book(&[("m7g.large", arm(2, 8.0), 0.02, 0.1)]);
        let mut r = compute(&b, &Criteria::default(), "t", Timestamp::UNIX_EPOCH);
        r.unavailable = vec![
            mark("m7g.large", "z-a", "spot", "2026-12-01T19:00:00Z"),
            mark("c7g.large", "z-b", "on-demand", "2026-12-01T18:00:00Z"),
        ];
        let at = |t: &str| t.parse::<Timestamp>().unwrap();
        let before = at("2026-12-01T18:59:59Z");
        assert!(r.is_unavailable("z-a", "m7g.large", CapacityType::Spot, before));
        assert!(
            !r.is_unavailable("z-b", "m7g.large", CapacityType::Spot, before),
            "zone"
        );
        assert!(
            !r.is_unavailable("z-a", "m7g.large", CapacityType::OnDemand, before),
            "capacity type"
        );
        assert!(
            !r.is_unavailable("z-a", "c7g.large", CapacityType::Spot, before),
            "type"
        );
        assert!(
            !r.is_unavailable(
                "z-a",
                "m7g.large",
                CapacityType::Spot,
                at("2026-12-01T19:00:00Z")
            ),
            "expired at its expiry"
        );
        assert!(r.is_unavailable(
            "z-b",
            "c7g.large",
            CapacityType::OnDemand,
            at("2026-12-01T17:59:00Z")
        ));
        assert!(!r.is_unavailable("z-b", "c7g.large", CapacityType::OnDemand, before));
    }

    #[test]
    fn same_content_sees_a_changed_unavailable_list() {
        let b = book(&[("c7g.large", arm(2, 4.0), 0.02, 0.1)]);
        let a = compute(&b, &Criteria::default(), "t", Timestamp::UNIX_EPOCH);
        let mut marked = a.clone();
        marked.unavailable = vec![mark("c7g.large", "z-a", "spot", "2026-12-01T19:00:00Z")];
        assert!(!a.same_content(&marked), "a mark appeared");
        assert!(!marked.same_content(&a), "a mark lapsed");
        let mut extended = marked.clone();
        extended.unavailable[0].expires = "2026-12-01T19:03:00Z".parse().unwrap();
        assert!(!marked.same_content(&extended), "a mark was extended");
        assert!(marked.same_content(&marked.clone()));
    }

    #[test]
    fn score_mapping() {
        let ranked = |rank| score(Standing::Ranked { rank });
        assert_eq!(
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 50].map(ranked),
            [10, 9, 8, 7, 6, 5, 4, 3, 3, 3]
        );
        assert_eq!(score(Standing::UnrankedSpot), 2);
        assert_eq!(score(Standing::OnDemand), 1);
        assert_eq!(score(Standing::Rebalancing), 0);
        assert_eq!(score(Standing::NoRanking), 5);
        assert_eq!(vpc_cni_max_pods(3, 10), 29);
    }
}
