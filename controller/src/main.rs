//! spotkube-controller: see the `spotkube_controller` library.

use clap::Parser;
use spotkube_controller::config::{Cli, Command};
use spotkube_controller::{cli, run};
use spotkube_shared::telemetry;

fn main() -> anyhow::Result<()> {
    telemetry::install_crypto_provider();
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format);
    let runtime = tokio::runtime::Runtime::new()?;
    let done = match (cli.command, cli.run) {
        (Some(Command::Run(args)), _) | (None, Some(args)) => {
            runtime.block_on(run::run(args, cli.admin_listen))
        }
        (Some(Command::State(args)), _) => runtime.block_on(cli::state::main(args)),
        (Some(Command::Rank(args)), _) => runtime.block_on(cli::rank::run(args)),
        (Some(Command::Savings(args)), _) => runtime.block_on(cli::savings::run(args)),
        (None, None) => anyhow::bail!("missing --queue-url (see --help)"),
    };
    Ok(done?)
}
