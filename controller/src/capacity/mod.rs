//! Capacity: replacement before removal. The intake records a request on the Node;
//! [`crate::reconcile::capacity`] carries it out with these parts.
//!
//! - [`pools`]: pools discovered from Auto Scaling group tags (Cluster Autoscaler
//!   auto-discovery style), a spot group paired with its on-demand fallback, and the pool
//!   of an instance.
//! - [`ice`]: the unavailable-offering cache `(type, zone, capacity type)` with a TTL.
//! - [`activity`]: a group's scaling activities since a request, judged as launched,
//!   capacity error or pending.
//! - [`asg`]: the actions: one more instance (never above MaxSize) and
//!   terminate-with-decrement.
//! - [`request`]: a Node's request as its annotation keeps it, and the pure decisions
//!   on it (timeouts, expiry, pairing).
//! - [`metrics`]: what the capacity loop counts.

pub mod activity;
pub mod asg;
pub mod ice;
pub mod launcher;
pub mod metrics;
pub mod pools;
pub mod request;

pub use spotkube_shared::node::CapacityType;
