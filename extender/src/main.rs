use clap::Parser;
use spotkube_extender::Args;

/// mimalloc instead of glibc malloc: a 5,000-name call allocates and frees three large
/// buffers (body, names, reply), and malloc/free was where a profile of prioritize put
/// its time after parsing (BENCHMARKS.md, issue 13).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    spotkube_shared::telemetry::install_crypto_provider();
    let args = Args::parse();
    spotkube_shared::telemetry::init_logging(args.log_format);
    spotkube_extender::run(args).await
}
