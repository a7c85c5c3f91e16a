//! kwok: simulates kubelets for fake Nodes — Nodes become Ready and keep their leases,
//! pods bound to them get a podIP and become Running/Ready, deleted pods are finalized.
//!
//! kwok only manages Nodes annotated `kwok.x-k8s.io/node=fake` (see [`crate::nodes`]), so a
//! test can still create Nodes no kubelet looks after (they turn NotReady as in real life).
//! The Stage objects are kwok v0.8.0's own (`tests/tools/kwok-stages.yaml`): the kwok
//! binary has no built-in stages and refuses to start without some.

use std::path::Path;

use crate::RigError;
use crate::control_plane::ControlPlane;
use crate::ports::free_port;
use crate::process::{Managed, Spec};

/// The annotation that hands a Node to kwok.
pub const MANAGED_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");

/// kwok's stages: node-initialize, node-heartbeat-with-lease, pod-ready, pod-complete, pod-delete.
const STAGES: &str = include_str!("../tools/kwok-stages.yaml");

/// Starts kwok against the control plane; the process is adopted by it.
pub fn start(plane: &ControlPlane, dir: &Path) -> Result<(), RigError> {
    let config = dir.join("kwok.yaml");
    std::fs::write(&config, STAGES).map_err(|e| RigError::io(&config, e))?;
    let port = free_port();
    let kwok = Managed::spawn(
        Spec::new("kwok", &plane.tools.kwok).args([
            format!("--kubeconfig={}", plane.kubeconfig.display()),
            format!("--config={}", config.display()),
            "--manage-all-nodes=false".into(),
            format!(
                "--manage-nodes-with-annotation-selector={}={}",
                MANAGED_ANNOTATION.0, MANAGED_ANNOTATION.1
            ),
            // Pod IPs: EndpointSlices only list pods that have one.
            "--cidr=10.244.0.0/16".into(),
            "--node-ip=10.0.0.1".into(),
            "--node-lease-duration-seconds=40".into(),
            format!("--server-address=127.0.0.1:{port}"),
        ]),
        &plane.log_dir,
    )?;
    plane.adopt(kwok);
    Ok(())
}
