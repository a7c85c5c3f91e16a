//! The operator commands besides `run`: `state` (a workload's spotkube state), `rank`
//! (the price ranking, as a table or JSON) and `savings` (what opted-in workloads cost
//! now and on on-demand).

pub mod rank;
pub mod savings;
pub mod state;
