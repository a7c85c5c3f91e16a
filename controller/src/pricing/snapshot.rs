//! The offline price snapshot (`controller/data/aws-price-snapshot.json`, compiled into
//! the binary; `--snapshot FILE` reads another): region-level on-demand prices, Spot
//! Advisor savings and interruption bands, and vCPU / memory per type.
//!
//! The snapshot knows no per-AZ prices: spot = on-demand × (1 − savings / 100) for the
//! whole region, and every zone given to the source gets the same list. It carries no
//! architecture either, so arm64 is derived from the family name (see
//! [`graviton_family`]); generation, burstable and bare-metal flags are unknown except
//! what the name says (`t*` families are burstable, `*.metal*` sizes are bare metal).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use spotkube_shared::ranking::{Criteria, InstanceTypeInfo, PriceBook, family};

use super::{PriceSource, SpotPrices};
use crate::error::Error;

/// The snapshot shipped in the binary: the offline fallback, as Karpenter embeds its
/// static price table.
const EMBEDDED: &str = include_str!("../../data/aws-price-snapshot.json");

/// Which price snapshot to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotLocation {
    /// The one compiled into the binary.
    Embedded,
    /// A file, re-read on every use so a refresher picks up its changes.
    File(PathBuf),
}

impl SnapshotLocation {
    /// `--snapshot FILE` when given, else the embedded snapshot.
    pub fn from_flag(path: Option<PathBuf>) -> Self {
        path.map_or(SnapshotLocation::Embedded, SnapshotLocation::File)
    }

    fn load(&self) -> Result<Snapshot, Error> {
        let text = match self {
            SnapshotLocation::Embedded => std::borrow::Cow::Borrowed(EMBEDDED),
            SnapshotLocation::File(path) => std::fs::read_to_string(path)
                .map_err(|source| Error::Io {
                    what: format!("price snapshot {self}"),
                    source,
                })?
                .into(),
        };
        serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("price snapshot {self} is not valid: {e}")))
    }
}

impl fmt::Display for SnapshotLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotLocation::Embedded => f.write_str("(embedded)"),
            SnapshotLocation::File(path) => write!(f, "{}", path.display()),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Snapshot {
    instance_specs: BTreeMap<String, Spec>,
    regions: BTreeMap<String, RegionPrices>,
}

#[derive(Debug, Deserialize)]
struct Spec {
    vcpu: u32,
    memory_gib: f64,
}

#[derive(Debug, Deserialize)]
struct RegionPrices {
    on_demand_usd_per_hour: BTreeMap<String, f64>,
    spot: BTreeMap<String, SpotAdvice>,
}

#[derive(Debug, Deserialize)]
struct SpotAdvice {
    savings_percent: f64,
    interruption_band: Option<u8>,
}

/// Whether an EC2 family is AWS Graviton (arm64), from its name alone.
///
/// A family name is `<class letters><generation digits><attribute letters>[-suffix]`:
/// `c7g`, `m7gd`, `c6gn`, `im4gn`, `is4gen`, `hpc7g`, `g5g`. Graviton carries `g` among
/// the *attribute* letters after the generation — not in the class (`g5`, `gr6` are
/// x86 GPU types) — and `a1` (Graviton 1) is the one exception with no attribute.
pub fn graviton_family(family: &str) -> bool {
    if family == "a1" {
        return true;
    }
    let base = family.split('-').next().unwrap_or(family);
    let after_class = base.trim_start_matches(|c: char| c.is_ascii_alphabetic());
    let attributes = after_class.trim_start_matches(|c: char| c.is_ascii_digit());
    after_class.len() != base.len()
        && attributes.len() != after_class.len()
        && attributes.contains('g')
}

/// The Spot Advisor interruption band per type of `region`, as the snapshot recorded
/// them: the AWS source's fallback when the Spot Advisor feed cannot be had.
pub fn interruption_bands(
    location: &SnapshotLocation,
    region: &str,
) -> Result<BTreeMap<String, u8>, Error> {
    let snapshot = location.load()?;
    let prices = snapshot
        .regions
        .get(region)
        .ok_or_else(|| Error::Invalid(format!("price snapshot has no region {region:?}")))?;
    Ok(prices
        .spot
        .iter()
        .filter_map(|(name, advice)| Some((name.clone(), advice.interruption_band?)))
        .collect())
}

pub struct SnapshotSource {
    location: SnapshotLocation,
    region: String,
    zones: Vec<String>,
}

impl SnapshotSource {
    /// `zones`: the AZs to publish the region-level list for.
    pub fn new(location: SnapshotLocation, region: String, zones: Vec<String>) -> Self {
        SnapshotSource {
            location,
            region,
            zones,
        }
    }

    /// The price book of the snapshot, without I/O (for tests and the CLI).
    fn book(&self, snapshot: &Snapshot) -> Result<PriceBook, Error> {
        let region = snapshot.regions.get(&self.region).ok_or_else(|| {
            Error::Invalid(format!("price snapshot has no region {:?}", self.region))
        })?;
        let mut book = PriceBook {
            region: Some(self.region.clone()),
            ..PriceBook::default()
        };
        let mut regional_spot = BTreeMap::new();
        for (name, &on_demand) in &region.on_demand_usd_per_hour {
            let (Some(spec), Some(advice)) =
                (snapshot.instance_specs.get(name), region.spot.get(name))
            else {
                continue;
            };
            let fam = family(name);
            book.types.insert(
                name.clone(),
                InstanceTypeInfo {
                    vcpu: spec.vcpu,
                    memory_gib: spec.memory_gib,
                    architectures: vec![
                        if graviton_family(fam) {
                            "arm64"
                        } else {
                            "x86_64"
                        }
                        .to_string(),
                    ],
                    current_generation: None,
                    burstable: Some(fam.starts_with('t')),
                    bare_metal: Some(name.contains(".metal")),
                    interruption_band: advice.interruption_band,
                    max_pods: None,
                },
            );
            book.on_demand.insert(name.clone(), on_demand);
            regional_spot.insert(
                name.clone(),
                on_demand * (1.0 - advice.savings_percent / 100.0),
            );
        }
        for zone in &self.zones {
            book.spot.insert(zone.clone(), regional_spot.clone());
        }
        Ok(book)
    }
}

impl PriceSource for SnapshotSource {
    fn name(&self) -> &'static str {
        "snapshot"
    }

    async fn price_book(&self, _criteria: &Criteria) -> Result<PriceBook, Error> {
        let snapshot = self.location.load()?;
        self.book(&snapshot)
    }

    /// The snapshot's book already holds every type it knows (its region-level
    /// estimates): this is that book's spot prices of `types`.
    async fn spot_prices(&self, types: &[String]) -> Result<SpotPrices, Error> {
        let book = self.book(&self.location.load()?)?;
        Ok(book
            .spot
            .into_iter()
            .map(|(zone, prices)| {
                let prices = prices
                    .into_iter()
                    .filter(|(name, _)| types.contains(name))
                    .collect();
                (zone, prices)
            })
            .collect())
    }
}

/// The snapshot's on-demand $/hour per type of `region` (empty when it has no such
/// region): the savings' fallback when no price book was gathered yet.
pub fn on_demand_prices(
    location: &SnapshotLocation,
    region: &str,
) -> Result<BTreeMap<String, f64>, Error> {
    let snapshot = location.load()?;
    Ok(snapshot
        .regions
        .get(region)
        .map(|r| r.on_demand_usd_per_hour.clone())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use spotkube_shared::ranking::compute;

    /// The snapshot's file in the repository: the one the binary embeds.
    fn snapshot_file() -> SnapshotLocation {
        SnapshotLocation::File(
            concat!(env!("CARGO_MANIFEST_DIR"), "/data/aws-price-snapshot.json").into(),
        )
    }

    #[test]
    fn graviton_is_read_from_the_attribute_letters() {
        for arm in [
            "a1", "c7g", "c7gd", "c6gn", "m8g", "r7gd", "im4gn", "is4gen", "hpc7g", "g5g", "t4g",
            "x2gd",
        ] {
            assert!(graviton_family(arm), "{arm}");
        }
        for x86 in [
            "c7i",
            "m5",
            "g5",
            "g4dn",
            "g4ad",
            "gr6",
            "m7a",
            "mac2-m2pro",
            "u-6tb1",
            "p4de",
            "hpc7a",
            "i4i",
        ] {
            assert!(!graviton_family(x86), "{x86}");
        }
    }

    #[tokio::test]
    async fn us_east_1_top_six_from_the_snapshot() {
        let zones: Vec<String> = ["us-east-1a", "us-east-1b", "us-east-1c"]
            .map(String::from)
            .to_vec();
        let source = SnapshotSource::new(snapshot_file(), "us-east-1".into(), zones.clone());
        let book = source.price_book(&Criteria::default()).await.unwrap();
        // The binary's own copy gives the same book, with no file at all.
        let embedded = SnapshotSource::new(
            SnapshotLocation::Embedded,
            "us-east-1".into(),
            zones.clone(),
        );
        assert_eq!(
            embedded.price_book(&Criteria::default()).await.unwrap(),
            book
        );
        let ranking = compute(
            &book,
            &Criteria::default(),
            "snapshot",
            jiff::Timestamp::UNIX_EPOCH,
        );
        assert_eq!(ranking.zones.keys().cloned().collect::<Vec<_>>(), zones);
        for zone in &zones {
            let names: Vec<&str> = ranking.zones[zone]
                .iter()
                .map(|e| e.instance_type.as_str())
                .collect();
            // m7g.2xlarge and m7g.large tie at $0.014688 per vCPU-hour: the name decides.
            assert_eq!(
                names,
                [
                    "c7g.4xlarge",
                    "c7g.2xlarge",
                    "c8g.xlarge",
                    "c7g.xlarge",
                    "m7g.2xlarge",
                    "m7g.large"
                ],
                "{zone}"
            );
        }
        let first = &ranking.zones["us-east-1a"][0];
        assert!((first.spot_usd_per_hour - 0.58 * 0.29).abs() < 1e-12);
        assert_eq!(first.on_demand_usd_per_hour, 0.58);
        assert!((first.savings_percent - 71.0).abs() < 1e-9);
        assert_eq!(
            (first.vcpu, first.memory_gib, first.interruption_band),
            (16, 32.0, Some(0))
        );
    }

    #[tokio::test]
    async fn unknown_region_and_missing_file_are_clear_errors() {
        let source = SnapshotSource::new(SnapshotLocation::Embedded, "mars-1".into(), vec![]);
        let err = source.price_book(&Criteria::default()).await.unwrap_err();
        assert_eq!(err.to_string(), "price snapshot has no region \"mars-1\"");
        let source = SnapshotSource::new(
            SnapshotLocation::File("/nonexistent.json".into()),
            "us-east-1".into(),
            vec![],
        );
        assert!(
            source
                .price_book(&Criteria::default())
                .await
                .unwrap_err()
                .to_string()
                .starts_with("reading price snapshot /nonexistent.json")
        );
    }
}
