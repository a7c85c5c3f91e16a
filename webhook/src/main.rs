//! spotkube-webhook: the mutating admission webhook (see the `spotkube_webhook` library).

use clap::Parser;
use spotkube_webhook::Args;

/// mimalloc instead of glibc malloc: every request allocates and frees its body, parsed
/// views and reply, and glibc's malloc/free was a fifth of the server's CPU in a profile
/// (BENCHMARKS.md, issue 13).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    spotkube_shared::telemetry::install_crypto_provider();
    let args = Args::parse();
    spotkube_shared::telemetry::init_logging(args.log_format);
    spotkube_webhook::run(args).await
}
