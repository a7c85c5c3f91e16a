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

use spotkube_shared::ranking::{Criteria, PriceBook};

use crate::error::Error;

/// Where prices come from. `criteria` lets a source skip fetching what cannot rank.
pub trait PriceSource: Send + Sync {
    /// Short name written into the ranking's `source` field.
    fn name(&self) -> &'static str;
    fn price_book(
        &self,
        criteria: &Criteria,
    ) -> impl std::future::Future<Output = Result<PriceBook, Error>> + Send;
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
}
