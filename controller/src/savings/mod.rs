//! Realised spot savings per workload: what opted-in pods cost now, where they run and
//! what the same pods would cost on on-demand capacity.
//!
//! - [`compute`]: the pure computation (nodes, pods, prices → rows and totals).
//! - [`inputs`]: Nodes, Pods and Namespaces read into its inputs.
//! - [`prices`]: the price table, from the ranking refresh's price book.
//! - [`render`]: the table and JSON of `spotkube-controller savings`.
//!
//! The leader's loop ([`crate::reconcile::savings`]) exports the report as metrics
//! ([`crate::metrics::SavingsMetrics`]); the CLI ([`crate::cli::savings`]) prints it.

pub mod compute;
pub mod inputs;
pub mod prices;
pub mod render;
