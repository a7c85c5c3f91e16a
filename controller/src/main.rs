//! spotkube-controller: turns EC2 interruption events into taints, surges and evictions.

mod decide;

fn main() {
    spotkube_shared::telemetry::install_crypto_provider();
}
