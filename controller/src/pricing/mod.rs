//! Price ranking in the controller: pricing sources gather a
//! [`spotkube_shared::ranking::PriceBook`], the shared pure ranking ranks it, the
//! [`refresher`] publishes it to ConfigMap `spotkube-system/spotkube-ranking`, and
//! [`cli`] prints it for a person (`spotkube-controller rank`).

pub mod aws;
pub mod cli;
pub mod refresher;
pub mod snapshot;

use spotkube_shared::ranking::{Criteria, PriceBook};

/// Why prices could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    #[error("reading price snapshot {path}: {source}")]
    SnapshotIo {
        path: String,
        source: std::io::Error,
    },
    #[error("price snapshot {path} is not valid: {source}")]
    SnapshotJson {
        path: String,
        source: serde_json::Error,
    },
    #[error("price snapshot has no region {0:?}")]
    UnknownRegion(String),
    #[error("AWS {operation} failed: {message}")]
    Aws {
        operation: &'static str,
        message: String,
    },
    #[error("AWS {operation} returned an unreadable answer: {message}")]
    BadAnswer {
        operation: &'static str,
        message: String,
    },
}

/// Where prices come from. `criteria` lets a source skip fetching what cannot rank.
pub trait PriceSource: Send + Sync {
    /// Short name written into the ranking's `source` field.
    fn name(&self) -> &'static str;
    fn price_book(
        &self,
        criteria: &Criteria,
    ) -> impl std::future::Future<Output = Result<PriceBook, PricingError>> + Send;
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

    async fn price_book(&self, criteria: &Criteria) -> Result<PriceBook, PricingError> {
        match self {
            AnySource::Snapshot(s) => s.price_book(criteria).await,
            AnySource::Aws(s) => s.price_book(criteria).await,
        }
    }
}
