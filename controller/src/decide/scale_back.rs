//! When a scaled surge ends.

use jiff::Timestamp;

/// What the scale-back reconcile does with a Deployment carrying `surge-from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleBack {
    /// Not yet due.
    Wait,
    /// Due and untouched: scale to `replicas` and drop the surge annotations.
    ScaleTo { replicas: i32 },
    /// Due, but someone changed replicas meanwhile: drop the annotations only.
    Forget,
    /// Labelled `spotkube.io/surging` without a readable `surge-from` / `surge-until`
    /// (edited by hand, or the surge ended between a read and a label write): drop the
    /// label only, so the surging watch stays exact.
    DropLabel,
}

/// Where the Node a scaled surge was for (`spotkube.io/surge-node`) stands.
///
/// While a pod of the Deployment is still bound to that Node (alive on a marked Node,
/// or not yet removed after the Node went), scaling back would let the ReplicaSet
/// controller delete the newest pod, the replacement, and leave the only replica on a
/// doomed Node: so the surge waits for those pods to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SurgeNode {
    /// Gone, and no pod of the Deployment is bound to it any more: the surge has done
    /// its job, whatever its hold.
    Gone,
    /// Still marked (or gone) with a pod of the Deployment bound to it.
    Holding,
    /// Marked, but the Deployment has no pod on it any more: the hold decides.
    Marked,
    /// There without spotkube's notice (the alarm was withdrawn), or not recorded: the
    /// hold decides.
    Cleared,
}

/// Scale back only if replicas still equals the surged value (`from + 1`): when the
/// hold is over and no pod is left on the surge's doomed Node, or at once when that
/// Node and its pods are gone.
pub fn scale_back(
    from: i32,
    until: Timestamp,
    current_replicas: i32,
    now: Timestamp,
    node: SurgeNode,
) -> ScaleBack {
    let due = match node {
        SurgeNode::Gone => true,
        SurgeNode::Holding => false,
        SurgeNode::Marked | SurgeNode::Cleared => now >= until,
    };
    if !due {
        ScaleBack::Wait
    } else if current_replicas == from + 1 {
        ScaleBack::ScaleTo { replicas: from }
    } else {
        ScaleBack::Forget
    }
}
