//! Where the savings' prices come from: the price book and ranking the ranking refresh
//! last gathered ([`LatestBook`]), spot prices of the types that book skipped (asked
//! of the same source, once per refresh), the price snapshot's on-demand prices as a
//! fallback, and Fargate's rates.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use spotkube_shared::ranking::{PriceBook, Ranking};

use super::compute::{FargateRates, NodeFacts, PriceTable, missing_spot_prices};
use crate::pricing::{AnySource, LatestBook, PriceSource, SpotPrices};

/// Fargate Linux/x86 in us-east-1, per vCPU-hour and per GB-hour: AWS's published
/// on-demand rates (aws.amazon.com/fargate/pricing, the Pricing API's `AmazonECS`
/// `Fargate-vCPU-Hours:perCPU` and `Fargate-GB-Hours` usage types). Other regions and
/// arm64 differ: `--fargate-vcpu-hour` / `--fargate-gb-hour` override them.
pub const FARGATE_VCPU_HOUR_US_EAST_1: f64 = 0.04048;
pub const FARGATE_GB_HOUR_US_EAST_1: f64 = 0.004445;

/// The price table from what is known; nothing is filled in that is not. The book's
/// prices win over `extra_spot` and the snapshot's on-demand `fallback`.
pub fn table(
    book: Option<&PriceBook>,
    ranking: Option<&Ranking>,
    extra_spot: &SpotPrices,
    fallback_on_demand: &BTreeMap<String, f64>,
    fargate: FargateRates,
) -> PriceTable {
    let mut spot = extra_spot.clone();
    let mut on_demand = fallback_on_demand.clone();
    if let Some(book) = book {
        for (zone, prices) in &book.spot {
            spot.entry(zone.clone())
                .or_default()
                .extend(prices.iter().map(|(t, p)| (t.clone(), *p)));
        }
        on_demand.extend(book.on_demand.iter().map(|(t, p)| (t.clone(), *p)));
    }
    let ranks = ranking
        .map(|r| {
            r.zones
                .iter()
                .map(|(zone, entries)| {
                    let ranks = entries
                        .iter()
                        .map(|e| (e.instance_type.clone(), e.rank))
                        .collect();
                    (zone.clone(), ranks)
                })
                .collect()
        })
        .unwrap_or_default();
    PriceTable {
        spot,
        on_demand,
        fargate,
        ranks,
    }
}

/// The savings loop's prices, kept across passes.
pub struct PriceFeed {
    latest: LatestBook,
    /// Asked for spot prices the book lacks; `None` without a ranking refresh.
    source: Option<Arc<AnySource>>,
    fallback_on_demand: BTreeMap<String, f64>,
    fargate: FargateRates,
    /// Spot prices asked for the book of `generation` (asked again for a newer one).
    generation: u64,
    asked: BTreeSet<String>,
    extra_spot: SpotPrices,
}

impl PriceFeed {
    pub fn new(
        latest: LatestBook,
        source: Option<Arc<AnySource>>,
        fallback_on_demand: BTreeMap<String, f64>,
        fargate: FargateRates,
    ) -> PriceFeed {
        PriceFeed {
            latest,
            source,
            fallback_on_demand,
            fargate,
            generation: 0,
            asked: BTreeSet::new(),
            extra_spot: SpotPrices::new(),
        }
    }

    /// The prices for `nodes`: asks the source for spot types the book lacks, at most
    /// once per gathered book (a failed ask is tried again next pass).
    pub async fn table(&mut self, nodes: &[NodeFacts]) -> PriceTable {
        let gathered = self.latest.get();
        let generation = gathered.as_ref().map_or(0, |g| g.generation);
        if generation != self.generation {
            self.generation = generation;
            self.asked.clear();
            self.extra_spot.clear();
        }
        let build = |extra: &SpotPrices| {
            table(
                gathered.as_ref().map(|g| &g.book),
                gathered.as_ref().map(|g| &g.ranking),
                extra,
                &self.fallback_on_demand,
                self.fargate,
            )
        };
        let prices = build(&self.extra_spot);
        let (Some(source), Some(_)) = (&self.source, &gathered) else {
            return prices;
        };
        let missing: Vec<String> = missing_spot_prices(nodes, &prices)
            .into_iter()
            .filter(|t| !self.asked.contains(t))
            .collect();
        if missing.is_empty() {
            return prices;
        }
        match source.spot_prices(&missing).await {
            Ok(found) => {
                for (zone, prices) in found {
                    self.extra_spot.entry(zone).or_default().extend(prices);
                }
                self.asked.extend(missing);
                build(&self.extra_spot)
            }
            Err(error) => {
                tracing::warn!(%error, types = ?missing, "spot prices of node types outside the ranking could not be read; their pods stay unpriced");
                prices
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spotkube_shared::ranking::{Criteria, compute};

    fn rates() -> FargateRates {
        FargateRates {
            vcpu_hour: FARGATE_VCPU_HOUR_US_EAST_1,
            gb_hour: FARGATE_GB_HOUR_US_EAST_1,
        }
    }

    #[test]
    fn the_book_wins_and_the_fallback_fills_only_gaps() {
        let mut book = PriceBook::default();
        book.on_demand.insert("m7g.large".into(), 0.09);
        book.spot
            .entry("z-a".into())
            .or_default()
            .insert("m7g.large".into(), 0.03);
        let extra = SpotPrices::from([(
            "z-a".to_string(),
            BTreeMap::from([("t4g.large".to_string(), 0.02)]),
        )]);
        let fallback = BTreeMap::from([
            ("m7g.large".to_string(), 0.0816),
            ("c7g.large".to_string(), 0.0725),
        ]);
        let t = table(Some(&book), None, &extra, &fallback, rates());
        assert_eq!(t.on_demand["m7g.large"], 0.09);
        assert_eq!(t.on_demand["c7g.large"], 0.0725);
        assert_eq!(t.spot["z-a"]["m7g.large"], 0.03);
        assert_eq!(t.spot["z-a"]["t4g.large"], 0.02);
        assert!(t.ranks.is_empty());
        let none = table(None, None, &SpotPrices::new(), &fallback, rates());
        assert!(none.spot.is_empty(), "no spot price is ever made up");
    }

    #[test]
    fn ranks_come_from_the_ranking() {
        let mut book = PriceBook::default();
        for (name, vcpu, spot) in [("c7g.large", 2, 0.02), ("c7g.xlarge", 4, 0.03)] {
            book.types.insert(
                name.into(),
                spotkube_shared::ranking::InstanceTypeInfo {
                    vcpu,
                    memory_gib: 8.0,
                    architectures: vec!["arm64".into()],
                    ..Default::default()
                },
            );
            book.on_demand.insert(name.into(), 0.1);
            book.spot
                .entry("z-a".into())
                .or_default()
                .insert(name.into(), spot);
        }
        let ranking = compute(
            &book,
            &Criteria::default(),
            "t",
            jiff::Timestamp::UNIX_EPOCH,
        );
        let t = table(
            Some(&book),
            Some(&ranking),
            &SpotPrices::new(),
            &BTreeMap::new(),
            rates(),
        );
        assert_eq!(t.ranks["z-a"]["c7g.xlarge"], 1);
        assert_eq!(t.ranks["z-a"]["c7g.large"], 2);
    }
}
