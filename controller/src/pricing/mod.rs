//! Price ranking in the controller: pricing sources gather a
//! [`spotkube_shared::ranking::PriceBook`], the shared pure ranking ranks it, the
//! [`refresher`] publishes it to ConfigMap `spotkube-system/spotkube-ranking`, and
//! [`crate::cli::rank`] prints it for a person (`spotkube-controller rank`). The AWS
//! source takes interruption bands from the Spot Instance Advisor feed ([`advisor`]);
//! the price snapshot compiled into the binary ([`snapshot`]) is the offline fallback.

pub mod advisor;
pub mod aws;
pub mod refresher;
pub mod snapshot;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use spotkube_shared::ranking::{Criteria, PriceBook, Ranking};

use crate::error::Error;

/// AZ → instance type → spot $/hour.
pub type SpotPrices = BTreeMap<String, BTreeMap<String, f64>>;

/// Where prices come from. `criteria` lets a source skip fetching what cannot rank.
pub trait PriceSource: Send + Sync {
    /// Short name written into the ranking's `source` field.
    fn name(&self) -> &'static str;
    fn price_book(
        &self,
        criteria: &Criteria,
    ) -> impl std::future::Future<Output = Result<PriceBook, Error>> + Send;
    /// The latest spot prices of `types` in every AZ of the source's region. The price
    /// book holds only the types that could rank; the savings loop asks this for the
    /// other types nodes run on.
    fn spot_prices(
        &self,
        types: &[String],
    ) -> impl std::future::Future<Output = Result<SpotPrices, Error>> + Send;
}

/// A source chosen at run time.
pub enum AnySource {
    Snapshot(snapshot::SnapshotSource),
    Aws(aws::AwsSource),
}

impl PriceSource for AnySource {
    fn name(&self) -> &'static str {
        match self {
            AnySource::Snapshot(s) => s.name(),
            AnySource::Aws(s) => s.name(),
        }
    }

    async fn price_book(&self, criteria: &Criteria) -> Result<PriceBook, Error> {
        match self {
            AnySource::Snapshot(s) => s.price_book(criteria).await,
            AnySource::Aws(s) => s.price_book(criteria).await,
        }
    }

    async fn spot_prices(&self, types: &[String]) -> Result<SpotPrices, Error> {
        match self {
            AnySource::Snapshot(s) => s.spot_prices(types).await,
            AnySource::Aws(s) => s.spot_prices(types).await,
        }
    }
}

/// The last price book the ranking refresh gathered and the ranking it computed from
/// it, shared with the savings loop so it never asks AWS for the same prices again.
#[derive(Clone, Default)]
pub struct LatestBook {
    inner: Arc<RwLock<Option<Arc<Gathered>>>>,
}

/// One refresh's prices.
#[derive(Debug)]
pub struct Gathered {
    pub book: PriceBook,
    pub ranking: Ranking,
    /// Counts refreshes: a reader caching what it derived knows when to derive again.
    pub generation: u64,
}

impl LatestBook {
    pub fn set(&self, book: PriceBook, ranking: Ranking) {
        let mut inner = self.inner.write().expect("latest book lock");
        let generation = inner.as_ref().map_or(1, |g| g.generation + 1);
        *inner = Some(Arc::new(Gathered {
            book,
            ranking,
            generation,
        }));
    }

    pub fn get(&self) -> Option<Arc<Gathered>> {
        self.inner.read().expect("latest book lock").clone()
    }
}
