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

/// Scale back only if replicas still equals the surged value (`from + 1`).
pub fn scale_back(from: i32, until: Timestamp, current_replicas: i32, now: Timestamp) -> ScaleBack {
    if now < until {
        ScaleBack::Wait
    } else if current_replicas == from + 1 {
        ScaleBack::ScaleTo { replicas: from }
    } else {
        ScaleBack::Forget
    }
}
