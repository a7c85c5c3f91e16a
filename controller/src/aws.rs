//! The AWS SDK configuration every AWS client of the controller uses: one rustls on
//! ring (the process's crypto provider, shared with kube), no aws-lc.
//! `AWS_ENDPOINT_URL` (read by `aws_config`) points every client at moto in tests.

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_smithy_http_client::tls;

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
