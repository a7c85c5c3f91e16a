use clap::Parser;
use spotkube_extender::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    spotkube_shared::telemetry::install_crypto_provider();
    let args = Args::parse();
    spotkube_shared::telemetry::init_logging(args.log_format);
    spotkube_extender::run(args).await
}
