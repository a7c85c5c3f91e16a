//! spotkube's kube-scheduler extender.
//!
//! kube-scheduler calls `POST /filter` and `POST /prioritize` with `ExtenderArgs`
//! (see [`spotkube_shared::extender_api`]). Filter drops nodes that are about to be
//! interrupted and nodes the pod's spot policy excludes; prioritize scores nodes by the
//! rank of their instance type in the price ranking of their AZ (see
//! [`spotkube_shared::ranking::score`]). Node facts and their scores are precomputed in
//! a watch-backed [`cache::Cluster`] so a request only looks names up.

pub mod cache;
pub mod config;
pub mod facts;
pub mod metrics;
pub mod run;
pub mod server;
pub mod verbs;
pub mod watch;

pub use config::Args;
pub use run::run;
