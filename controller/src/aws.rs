//! The AWS side every AWS client of the controller shares: one SDK configuration
//! (rustls on ring, the process's crypto provider shared with kube; no aws-lc;
//! `AWS_ENDPOINT_URL`, read by `aws_config`, points every client at moto in tests) and
//! the retry of throttled calls.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_smithy_http_client::tls;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use backon::{ExponentialBuilder, Retryable};

use crate::error::Error;

/// Loads the SDK config from the environment. `region` overrides the configured one;
/// `disable_retries` turns the SDK's own retries off (tests: a moto 500 retried three
/// times turns a clear failure into a slow one).
pub async fn sdk_config(region: Option<String>, disable_retries: bool) -> aws_config::SdkConfig {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http_client);
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region));
    }
    if disable_retries {
        loader = loader.retry_config(RetryConfig::disabled());
    }
    loader.load().await
}

/// AWS error codes that mean "slow down", retried with backoff.
pub const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestThrottled",
    "RequestThrottledException",
];

fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_max_times(6)
        .with_jitter()
}

pub fn is_throttling<E: ProvideErrorMetadata>(e: &E) -> bool {
    e.code().is_some_and(|c| THROTTLING.contains(&c))
}

/// Sends one AWS request (built afresh by `call` on every attempt), retrying it with
/// backoff while AWS throttles, and names `operation` in the error otherwise.
pub async fn send_retrying_throttling<T, E, F, Fut>(
    operation: &'static str,
    call: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    call.retry(backoff())
        .when(is_throttling)
        .await
        .map_err(|e| Error::aws(operation, &e))
}
