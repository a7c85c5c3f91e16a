//! spotkube-controller: turns EC2 interruption events into taints, surges and
//! evictions before the instance goes.
//!
//! The flow, folder by folder:
//! - [`intake`]: an SQS message becomes a parsed event and, per instance, a Node.
//! - [`view`]: the Node and the pods on it, read into the views decisions work on.
//! - [`decide`]: pure decisions, views in, [`decide::Action`]s out.
//! - [`act`]: carries actions out against the API (Events, metrics, spans).
//! - [`reconcile`]: the leader's periodic loops (drain, scale-back, ranking, savings).
//! - [`savings`]: what opted-in workloads cost now and on on-demand (pure).
//! - [`capacity`]: pools from ASG tags, the unavailable-offering cache, scaling-activity
//!   verdicts and the ASG actions (building blocks, not yet wired into the flow).
//! - [`run`] wires the process; [`supervisor`] owns the tasks of a leadership term;
//!   [`cli`] holds the operator commands; [`config`] every flag.

pub mod act;
pub mod aws;
pub mod bounded;
pub mod capacity;
pub mod cli;
pub mod config;
pub mod context;
pub mod decide;
pub mod error;
pub mod fargate;
pub mod intake;
pub mod labelled;
pub mod leader;
pub mod metrics;
pub mod nodes_index;
pub mod notify;
pub mod origin;
pub mod pricing;
pub mod reconcile;
pub mod run;
pub mod savings;
pub mod supervisor;
pub mod ttl_cache;
pub mod view;

pub use error::{Error, Result};
