//! The operator commands besides `run`: `state` (a workload's spotkube state) and
//! `rank` (the price ranking, as a table or JSON).

pub mod rank;
pub mod state;
