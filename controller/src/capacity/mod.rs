//! Capacity: the building blocks of "replacement before removal" (issue 11), not yet
//! wired into the intake or the drain.
//!
//! - [`pools`]: pools discovered from Auto Scaling group tags (Cluster Autoscaler
//!   auto-discovery style), a spot group paired with its on-demand fallback, and the pool
//!   of an instance.
//! - [`ice`]: the unavailable-offering cache `(type, zone, capacity type)` with a TTL.
//! - [`activity`]: a group's scaling activities since a request, judged as launched,
//!   capacity error or pending.
//! - [`asg`]: the actions: one more instance (never above MaxSize) and
//!   terminate-with-decrement.

pub mod activity;
pub mod asg;
pub mod ice;
pub mod pools;

pub use spotkube_shared::node::CapacityType;
