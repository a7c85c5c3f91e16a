//! spotkube's mutating admission webhook as a library, so the binary and the component
//! tests start the very same server.
//!
//! Which annotations the webhook sees: the Namespace's (from a watch-backed cache) and
//! the Pod's, which are its pod template's. A Deployment's or StatefulSet's *own*
//! metadata annotations are not read at admission time (that would need a cluster-wide
//! watch of every ReplicaSet and Deployment in the webhook, on the hot path of every
//! pod); workload-level overrides belong on the pod template.

pub mod admission;
pub mod config;
pub mod metrics;
pub mod mutate;
pub mod namespaces;
pub mod run;
pub mod server;

pub use admission::AdmissionState;
pub use config::Args;
pub use run::run;
pub use server::{DEFAULT_MAX_BODY_BYTES, router, serve};
