//! spotkube-webhook: the mutating admission webhook (see the `spotkube_webhook` library).

use clap::Parser;
use spotkube_webhook::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    spotkube_shared::telemetry::install_crypto_provider();
    let args = Args::parse();
    spotkube_shared::telemetry::init_logging(args.log_format);
    spotkube_webhook::run(args).await
}
