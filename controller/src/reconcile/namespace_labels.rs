//! The opt-in label: users opt a namespace in with the `spotkube.io/enabled`
//! annotation, but a webhook's `namespaceSelector` can only select labels. So the
//! leader mirrors the annotation to a label of the same key (`"true"` / `"false"`),
//! removes it when the annotation is gone or malformed (a malformed value also gets a
//! Warning Event), and the shipped MutatingWebhookConfiguration selects
//! `spotkube.io/enabled: "true"`: pods in other namespaces never wait on the webhook.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use spotkube_shared::admin::Readiness;
use spotkube_shared::annotations::{self, ENABLED};
use spotkube_shared::watch::{self, WatchIndex};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::error::{Error, Result};

/// The label the webhook configuration selects on: the annotation's key.
pub const LABEL: &str = ENABLED;
/// The Normal Event when a namespace's label now opts it in.
pub const OPTED_IN: &str = "OptedIn";
/// The Normal Event when a namespace's label now opts it out (or is removed).
pub const OPTED_OUT: &str = "OptedOut";
/// The Warning Event on a namespace whose annotation is neither `true` nor `false`.
pub const INVALID: &str = "InvalidOptIn";

/// How soon a failed label write is tried again (a namespace change retries at once).
const RETRY_EVERY: Duration = Duration::from_secs(10);

/// What a namespace's `spotkube.io/enabled` annotation says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptIn {
    /// `"true"` (in) or `"false"` (out): the label carries the same value.
    Set(bool),
    /// No annotation: no label.
    Unset,
    /// Any other value: no label, and the user is told.
    Malformed(String),
}

impl OptIn {
    pub fn of(annotation: Option<&str>) -> OptIn {
        match annotation.map(annotations::parse_enabled) {
            None => OptIn::Unset,
            Some(Ok(enabled)) => OptIn::Set(enabled),
            Some(Err(_)) => OptIn::Malformed(annotation.unwrap_or_default().to_string()),
        }
    }

    /// The label value the namespace should carry (`None`: no label).
    pub fn label(&self) -> Option<&'static str> {
        match self {
            OptIn::Set(true) => Some("true"),
            OptIn::Set(false) => Some("false"),
            OptIn::Unset | OptIn::Malformed(_) => None,
        }
    }
}

/// What the index keeps of a Namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub annotation: Option<String>,
    pub label: Option<String>,
    /// The label is written under this version: a concurrent annotation change
    /// fails the write (409) and the watch brings the new one.
    pub resource_version: Option<String>,
    pub reference: ObjectReference,
}

impl Seen {
    fn of(ns: &Namespace) -> Seen {
        Seen {
            annotation: ns.annotations().get(ENABLED).cloned(),
            label: ns.labels().get(LABEL).cloned(),
            resource_version: ns.resource_version(),
            reference: ns.object_ref(&()),
        }
    }

    pub fn opt_in(&self) -> OptIn {
        OptIn::of(self.annotation.as_deref())
    }

    /// The label value to write, when the label differs from what the annotation asks.
    pub fn write(&self) -> Option<Option<&'static str>> {
        let desired = self.opt_in().label();
        (desired != self.label.as_deref()).then_some(desired)
    }

    /// Whether the loop has something to do: a label to write or a value to warn about.
    fn needs_attention(&self) -> bool {
        self.write().is_some() || matches!(self.opt_in(), OptIn::Malformed(_))
    }
}

#[derive(Default)]
struct Inner {
    namespaces: HashMap<String, Seen>,
    /// Namespaces whose label differs or whose annotation is malformed, not yet handled.
    pending: BTreeSet<String>,
}

/// Every Namespace's opt-in annotation and label; fed by the shared watch driver.
#[derive(Clone, Default)]
pub struct OptIns {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
}

impl OptIns {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("opt-ins lock")
    }

    /// Resolves once a namespace needs attention (immediately if one did since the
    /// last call).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The namespaces that need attention, now taken off the pending list.
    pub fn take_pending(&self) -> Vec<(String, Seen)> {
        let mut inner = self.lock();
        let pending = std::mem::take(&mut inner.pending);
        pending
            .into_iter()
            .filter_map(|name| Some((name.clone(), inner.namespaces.get(&name)?.clone())))
            .collect()
    }

    /// Puts `name` back on the pending list without waking the loop: the retry timer
    /// (or the next change) picks it up.
    fn retry(&self, name: &str) {
        self.lock().pending.insert(name.to_string());
    }
}

impl WatchIndex<Namespace> for OptIns {
    type Entry = (String, Seen);

    fn entry(&self, ns: &Namespace) -> Option<(String, Seen)> {
        Some((ns.metadata.name.clone()?, Seen::of(ns)))
    }

    fn reset(&self, entries: Vec<(String, Seen)>) {
        let mut inner = self.lock();
        inner.pending = entries
            .iter()
            .filter(|(_, seen)| seen.needs_attention())
            .map(|(name, _)| name.clone())
            .collect();
        inner.namespaces = entries.into_iter().collect();
        drop(inner);
        self.changed.notify_one();
    }

    fn apply(&self, ns: &Namespace) {
        let Some((name, seen)) = self.entry(ns) else {
            return;
        };
        let mut inner = self.lock();
        let attention = seen.needs_attention();
        if attention {
            inner.pending.insert(name.clone());
        } else {
            inner.pending.remove(&name);
        }
        inner.namespaces.insert(name, seen);
        drop(inner);
        if attention {
            self.changed.notify_one();
        }
    }

    fn delete(&self, ns: &Namespace) {
        if let Some(name) = ns.metadata.name.as_deref() {
            let mut inner = self.lock();
            inner.namespaces.remove(name);
            inner.pending.remove(name);
        }
    }
}

/// Watches every Namespace until `stop` and keeps each one's label in step with its
/// annotation.
pub async fn run(ctx: Context, stop: CancellationToken) {
    let index = OptIns::default();
    let synced = Readiness::default().gate("namespace opt-ins");
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let watch = watch::watch(
        namespaces.clone(),
        watcher::Config::default(),
        &index,
        &synced,
        "namespace opt-ins",
    );
    let mut watch = std::pin::pin!(watch);
    // The malformed value each namespace was last warned about, this term.
    let mut warned: HashMap<String, String> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            // Never ends: the driver retries watch errors with backoff.
            _ = &mut watch => break,
            _ = index.changed() => {}
            _ = tokio::time::sleep(RETRY_EVERY) => {}
        }
        if !synced.is_open() {
            continue;
        }
        for (name, seen) in index.take_pending() {
            reconcile(&ctx, &namespaces, &index, &mut warned, &name, &seen).await;
        }
    }
}

/// Writes one namespace's label if it differs, and says so on the Namespace.
async fn reconcile(
    ctx: &Context,
    namespaces: &Api<Namespace>,
    index: &OptIns,
    warned: &mut HashMap<String, String>,
    name: &str,
    seen: &Seen,
) {
    let opt_in = seen.opt_in();
    if let Some(label) = seen.write() {
        let result = write_label(namespaces, name, label, seen).await;
        ctx.metrics
            .namespace_label_write(label.unwrap_or("absent"), &result);
        match result {
            Ok(written) => {
                // Seen at once, so a wake before the watch catches up writes nothing.
                index.apply(&written);
                tracing::info!(namespace = name, label = ?label, "opt-in label written");
                let (reason, note) = written_note(&opt_in, label);
                ctx.event(&seen.reference, EventType::Normal, reason, note)
                    .await;
            }
            Err(error) => {
                tracing::warn!(namespace = name, %error, "could not write the opt-in label");
                index.retry(name);
            }
        }
    }
    match opt_in {
        OptIn::Malformed(value) => {
            if warned.get(name) != Some(&value) {
                let note = format!(
                    "{ENABLED}: {value:?} is not one of true false: the namespace is not \
                     opted in (no {LABEL} label)"
                );
                ctx.event(&seen.reference, EventType::Warning, INVALID, note)
                    .await;
                warned.insert(name.to_string(), value);
            }
        }
        _ => {
            warned.remove(name);
        }
    }
}

/// The Event reason and note for a label just written.
fn written_note(opt_in: &OptIn, label: Option<&str>) -> (&'static str, String) {
    let effect = match label {
        Some("true") => "new pods here now go through spotkube's webhook",
        _ => "new pods here no longer go through spotkube's webhook",
    };
    let cause = match opt_in {
        OptIn::Set(value) => format!("{ENABLED} is {value:?}"),
        OptIn::Unset => format!("{ENABLED} annotation removed"),
        OptIn::Malformed(value) => format!("{ENABLED} is {value:?}, neither true nor false"),
    };
    let written = match label {
        Some(value) => format!("labelled {LABEL}={value}"),
        None => format!("label {LABEL} removed"),
    };
    let reason = match label {
        Some("true") => OPTED_IN,
        _ => OPTED_OUT,
    };
    (reason, format!("{cause}: {written}; {effect}"))
}

/// Sets (or removes, `None`) the label under the version it was decided on.
async fn write_label(
    namespaces: &Api<Namespace>,
    name: &str,
    label: Option<&str>,
    seen: &Seen,
) -> Result<Namespace> {
    let patch = json!({
        "metadata": {
            "resourceVersion": seen.resource_version,
            "labels": { LABEL: label },
        }
    });
    namespaces
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube("patch", format!("namespace/{name}"), e))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kube::api::ObjectMeta;
    use kube::runtime::watcher::Event;

    use super::*;

    fn ns(name: &str, annotation: Option<&str>, label: Option<&str>) -> Namespace {
        let map = |v: Option<&str>| v.map(|v| BTreeMap::from([(ENABLED.to_string(), v.into())]));
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: map(annotation),
                labels: map(label),
                resource_version: Some("7".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn write(annotation: Option<&str>, label: Option<&str>) -> Option<Option<&'static str>> {
        Seen::of(&ns("a", annotation, label)).write()
    }

    #[test]
    fn the_annotation_decides_the_label() {
        assert_eq!(OptIn::of(Some("true")).label(), Some("true"));
        assert_eq!(OptIn::of(Some("false")).label(), Some("false"));
        // Parsed as the webhook parses it: surrounding blanks are not a new value.
        assert_eq!(OptIn::of(Some(" true ")), OptIn::Set(true));
        assert_eq!(OptIn::of(None), OptIn::Unset);
        assert_eq!(OptIn::of(None).label(), None);
        assert_eq!(OptIn::of(Some("yes")), OptIn::Malformed("yes".into()));
        assert_eq!(OptIn::of(Some("yes")).label(), None);
        assert_eq!(OptIn::of(Some("True")).label(), None);
    }

    #[test]
    fn a_label_is_written_only_when_it_differs() {
        assert_eq!(write(Some("true"), None), Some(Some("true")));
        assert_eq!(write(Some("true"), Some("false")), Some(Some("true")));
        assert_eq!(write(Some("false"), Some("true")), Some(Some("false")));
        assert_eq!(write(Some("true"), Some("true")), None);
        assert_eq!(write(Some("false"), Some("false")), None);
        // Removed or malformed annotation: the label goes.
        assert_eq!(write(None, Some("true")), Some(None));
        assert_eq!(write(Some("yes"), Some("true")), Some(None));
        // A label nobody asked for (set by hand) goes too: the annotation is the interface.
        assert_eq!(write(None, Some("false")), Some(None));
        assert_eq!(write(None, None), None);
        assert_eq!(write(Some("yes"), None), None);
    }

    #[test]
    fn events_say_what_changed() {
        let (reason, note) = written_note(&OptIn::Set(true), Some("true"));
        assert_eq!(reason, OPTED_IN);
        assert_eq!(
            note,
            "spotkube.io/enabled is true: labelled spotkube.io/enabled=true; new pods here now \
             go through spotkube's webhook"
        );
        let (reason, note) = written_note(&OptIn::Unset, None);
        assert_eq!(reason, OPTED_OUT);
        assert!(
            note.starts_with(
                "spotkube.io/enabled annotation removed: label spotkube.io/enabled removed"
            ),
            "{note}"
        );
        assert_eq!(written_note(&OptIn::Set(false), Some("false")).0, OPTED_OUT);
        assert_eq!(
            written_note(&OptIn::Malformed("yes".into()), None).0,
            OPTED_OUT
        );
    }

    fn pending(index: &OptIns) -> Vec<String> {
        index.take_pending().into_iter().map(|(n, _)| n).collect()
    }

    fn feed(index: &OptIns, events: Vec<Event<Namespace>>) {
        let gate = Readiness::default().gate("test");
        futures::executor::block_on(watch::drive(
            futures::stream::iter(events.into_iter().map(Ok)),
            index,
            &gate,
            "test",
        ));
    }

    #[test]
    fn only_namespaces_whose_label_differs_or_whose_value_is_malformed_are_pending() {
        let index = OptIns::default();
        feed(
            &index,
            vec![
                Event::Init,
                Event::InitApply(ns("in", Some("true"), None)),
                Event::InitApply(ns("done", Some("true"), Some("true"))),
                Event::InitApply(ns("plain", None, None)),
                Event::InitApply(ns("typo", Some("yes"), None)),
                Event::InitDone,
            ],
        );
        assert_eq!(pending(&index), ["in", "typo"]);
        assert!(pending(&index).is_empty(), "taken");

        feed(
            &index,
            vec![
                Event::Apply(ns("plain", Some("false"), None)),
                Event::Apply(ns("done", Some("true"), Some("true"))),
                Event::Apply(ns("gone", Some("true"), None)),
                Event::Delete(ns("gone", Some("true"), None)),
            ],
        );
        let taken = index.take_pending();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0, "plain");
        assert_eq!(taken[0].1.write(), Some(Some("false")));
        assert_eq!(taken[0].1.resource_version.as_deref(), Some("7"));
        assert_eq!(taken[0].1.reference.kind.as_deref(), Some("Namespace"));

        // A failed write comes back; fixing the namespace by hand takes it off.
        index.retry("plain");
        feed(
            &index,
            vec![Event::Apply(ns("plain", Some("false"), Some("false")))],
        );
        assert!(pending(&index).is_empty());
    }
}
