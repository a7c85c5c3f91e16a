//! spotkube's shared library: the contract between the webhook, the extender and the
//! controller (annotation keys, policy, node identity, ranking, extender wire types,
//! EventBridge events), plus the small runtime all three programs run on (TLS with
//! reload, admin endpoints, telemetry).

// The contract.
pub mod annotations;
pub mod events;
pub mod extender_api;
pub mod fargate;
pub mod labels;
pub mod node;
pub mod pod;
pub mod policy;
pub mod ranking;

// The common runtime of the three programs.
pub mod admin;
pub mod config;
pub mod telemetry;
pub mod tls;
pub mod watch;
