//! Fuzz target: ranking JSON → the extender's ranking cache, through the path the
//! ranking ConfigMap watch takes (`RankingIndex` as a `WatchIndex`: a watch event, or a
//! relist).
//!
//! Each input installs a good ranking, then feeds a sequence of documents: generated
//! good rankings (any minor of schema 1, unknown extra fields, optional fields left out),
//! and bad ones: arbitrary text, truncated JSON, another major version, a required field
//! removed, a field of the wrong type; now and then a ConfigMap without the key
//! (documented: no ranking, neutral scores). Invariants, after every document:
//! - a bad document changes nothing: the ranking in place and every node's score stay
//!   those of the last good ranking, and `ranking_errors` counts it;
//! - a good document replaces it: the cache holds exactly that ranking and every node
//!   scores as the documented table gives for it (worked out here, per node).
//!
//! Cases: `SPOTKUBE_FUZZ_CASES` (default: proptest's `PROPTEST_CASES`, else 256);
//! seed: `SPOTKUBE_FUZZ_SEED` (default random, printed). `make fuzz` runs 10⁶.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::ObjectMeta;
use prometheus_client::registry::Registry;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};
use spotkube_extender::cache::Cluster;
use spotkube_extender::metrics::Metrics;
use spotkube_extender::watch::RankingIndex;
use spotkube_shared::annotations::INTERRUPTION;
use spotkube_shared::labels::{EKS_CAPACITY_TYPE, INSTANCE_TYPE, ZONE};
use spotkube_shared::ranking::{CONFIGMAP_KEY, Ranking};
use spotkube_shared::watch::WatchIndex;

// The harness (count, seed, no failure files) every fuzz target shares.
#[path = "../../testdata/fuzz_harness.rs"]
mod fuzz_harness;
use fuzz_harness::fuzz;

// ---- nodes and the oracle ----------------------------------------------------------

const ZONES: &[&str] = &["us-east-1a", "us-east-1b", "us-east-1c"];
const TYPES: &[&str] = &[
    "m7g.large",
    "c7g.xlarge",
    "r7g.large",
    "m8g.large",
    "c8g.2xlarge",
];

/// Nodes: (name, spot, zone, type, rebalancing).
fn nodes() -> Vec<(String, bool, &'static str, &'static str, bool)> {
    let mut all = Vec::new();
    for zone in ZONES {
        for ty in TYPES {
            all.push((format!("spot-{zone}-{ty}"), true, *zone, *ty, false));
        }
    }
    all.push(("od".into(), false, "us-east-1a", "m7g.large", false));
    all.push(("rebal".into(), true, "us-east-1a", "m7g.large", true));
    all
}

fn node_object(name: &str, spot: bool, zone: &str, ty: &str, rebalancing: bool) -> Node {
    let capacity = if spot { "SPOT" } else { "ON_DEMAND" };
    let mut node = json!({"metadata": {"name": name, "labels": {
        EKS_CAPACITY_TYPE: capacity, ZONE: zone, INSTANCE_TYPE: ty}}});
    if rebalancing {
        node["metadata"]["annotations"] =
            json!({ INTERRUPTION: r#"{"kind":"rebalance-recommendation"}"# });
    }
    serde_json::from_value(node).unwrap()
}

/// The documented score of a node under `ranking` (`shared::ranking::score`).
fn expected_score(
    ranking: Option<&Value>,
    (spot, zone, ty, rebalancing): (bool, &str, &str, bool),
) -> i64 {
    if rebalancing {
        return 0;
    }
    let Some(ranking) = ranking else { return 5 };
    if !spot {
        return 1;
    }
    let rank = ranking["zones"][zone]
        .as_array()
        .and_then(|entries| entries.iter().find(|e| e["instance_type"] == ty))
        .and_then(|e| e["rank"].as_i64());
    match rank {
        Some(r) => (10 - (r.max(1) - 1)).max(3),
        None => 2,
    }
}

// ---- documents ------------------------------------------------------------------------

/// A good ranking document, as JSON: schema 1.x, some zones, distinct types per zone.
fn good() -> impl Strategy<Value = Value> {
    let zone = prop_oneof![
        4 => select(ZONES).prop_map(String::from),
        1 => "[a-z]{2}-[a-z]{4}-[0-9][a-z]",
    ];
    let entries = prop::sample::subsequence(TYPES, 0..=TYPES.len())
        .prop_shuffle()
        .prop_flat_map(|types| {
            let n = types.len();
            (
                Just(types),
                prop::collection::vec(1u32..=12, n),
                prop::collection::vec(0.0f64..5.0, n),
                prop::collection::vec(prop::option::of(0u8..=4), n),
            )
        })
        .prop_map(|(types, ranks, prices, bands)| {
            types
                .iter()
                .zip(ranks)
                .zip(prices)
                .zip(bands)
                .map(|(((ty, rank), price), band)| {
                    let mut e = json!({"rank": rank, "instance_type": ty,
                        "spot_usd_per_hour": price, "on_demand_usd_per_hour": price * 2.0,
                        "savings_percent": 50.0, "vcpu": 2, "memory_gib": 8.0, "score": price / 2.0});
                    if let Some(b) = band {
                        e["interruption_band"] = json!(b);
                    }
                    e
                })
                .collect::<Vec<_>>()
        });
    (
        0u32..10,
        prop::collection::btree_map(zone, entries, 0..4),
        "[a-z]{1,8}( \\([a-z ]{0,12}\\))?",
        prop::option::of(Just("us-east-1")),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(minor, zones, source, region, criteria, extra)| {
            let mut doc = json!({"schema_version": format!("1.{minor}"),
                "computed_at": "2026-11-22T04:00:00Z", "source": source, "zones": zones});
            if let Some(r) = region {
                doc["region"] = json!(r);
            }
            if criteria {
                doc["criteria"] =
                    serde_json::to_value(spotkube_shared::ranking::Criteria::default()).unwrap();
            }
            if extra {
                // A newer minor may add fields: readers ignore them.
                doc["added_in_a_later_minor"] = json!({"x": [1, 2]});
            }
            doc
        })
}

/// One step of an input.
#[derive(Debug, Clone)]
enum Doc {
    /// Must be installed.
    Good(Value),
    /// Must be refused, the last good ranking kept.
    Bad(String),
    /// A ConfigMap without the key: no ranking (neutral scores), by design.
    NoKey,
}

fn wrong_type() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        Just(json!(-1)),
        Just(json!(1.5)),
        Just(json!("x")),
        Just(json!([1, "a"])),
        Just(json!({"x": 1})),
    ]
}

/// A good document broken in one place so that it is no longer readable.
fn broken(doc: Value) -> impl Strategy<Value = String> {
    let text = doc.to_string();
    let cut = text.clone();
    let top = doc.clone();
    let removed = doc.clone();
    let typed = doc.clone();
    prop_oneof![
        // Cut short: never a whole JSON document.
        (0..text.len()).prop_map(move |n| cut[..n].to_string()),
        // Another major, or no number at all.
        select(&["0.9", "2.0", "10.1", "", "x.1", "1x", "-1.0", " 1.0"][..]).prop_map(move |v| {
            let mut d = top.clone();
            d["schema_version"] = json!(v);
            d.to_string()
        }),
        // A required field removed.
        select(&["schema_version", "computed_at", "source", "zones"][..]).prop_map(move |k| {
            let mut d = removed.clone();
            d.as_object_mut().unwrap().remove(k);
            d.to_string()
        }),
        // A field of the wrong type (where the generated value happens to be of a
        // right type, an array stands in: wrong for every top-level field).
        (
            select(
                &[
                    "schema_version",
                    "computed_at",
                    "source",
                    "zones",
                    "region",
                    "criteria"
                ][..]
            ),
            wrong_type()
        )
            .prop_map(move |(k, v)| {
                let fine = match k {
                    "region" => v.is_null() || v.is_string(),
                    "source" => v.is_string(),
                    "criteria" => v.is_null(),
                    _ => false,
                };
                let mut d = typed.clone();
                d[k] = if fine { json!([1]) } else { v };
                d.to_string()
            }),
    ]
}

/// A good document whose first zone's first entry has a field removed or mistyped.
fn broken_entry() -> impl Strategy<Value = String> {
    let fields = &[
        "rank",
        "instance_type",
        "spot_usd_per_hour",
        "on_demand_usd_per_hour",
        "savings_percent",
        "vcpu",
        "memory_gib",
        "score",
    ][..];
    (
        good(),
        select(fields),
        prop::option::of(prop_oneof![
            Just(json!(-1)),
            Just(json!("1")),
            Just(json!(null)),
            Just(json!([])),
            Just(json!(true)),
        ]),
    )
        .prop_map(|(mut doc, field, replacement)| {
            let entry = doc["zones"]
                .as_object_mut()
                .and_then(|zones| {
                    zones
                        .values_mut()
                        .find_map(|e| e.as_array_mut().and_then(|a| a.first_mut()))
                })
                .and_then(Value::as_object_mut);
            let Some(entry) = entry else {
                // No entry to break: break the document instead.
                doc.as_object_mut().unwrap().remove("zones");
                return doc.to_string();
            };
            match replacement {
                // -1 is a fine float (not a u32 rank / vcpu), "1" a fine type name: an
                // array stands in, wrong for every field of an entry.
                Some(v)
                    if (v == json!(-1) && !matches!(field, "rank" | "vcpu"))
                        || (v.is_string() && field == "instance_type") =>
                {
                    entry.insert(field.to_string(), json!([]));
                }
                Some(v) => {
                    entry.insert(field.to_string(), v);
                }
                None => {
                    entry.remove(field);
                }
            }
            doc.to_string()
        })
}

fn doc() -> impl Strategy<Value = Doc> {
    prop_oneof![
        4 => good().prop_map(Doc::Good),
        3 => good().prop_flat_map(broken).prop_map(Doc::Bad),
        2 => broken_entry().prop_map(Doc::Bad),
        2 => any::<String>().prop_map(Doc::Bad),
        1 => prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| Doc::Bad(String::from_utf8_lossy(&b).into_owned())),
        1 => Just(Doc::NoKey),
    ]
}

/// (document, delivered by a relist rather than a watch event, pretty-printed).
fn steps() -> impl Strategy<Value = (Value, Vec<(Doc, bool, bool)>)> {
    (
        good(),
        prop::collection::vec((doc(), any::<bool>(), any::<bool>()), 1..6),
    )
}

fn configmap(text: Option<String>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some("spotkube-ranking".into()),
            namespace: Some("spotkube-system".into()),
            ..Default::default()
        },
        data: text.map(|t| BTreeMap::from([(CONFIGMAP_KEY.to_string(), t)])),
        ..Default::default()
    }
}

fn check((first, steps): (Value, Vec<(Doc, bool, bool)>)) -> Result<(), TestCaseError> {
    let metrics = Metrics::register(&mut Registry::default());
    let cluster = Cluster::new(None);
    let nodes = nodes();
    let objects: Vec<Node> = nodes
        .iter()
        .map(|(n, s, z, t, r)| node_object(n, *s, z, t, *r))
        .collect();
    cluster.replace_nodes(&objects);
    let index = RankingIndex::new(cluster.clone(), metrics.clone());
    let deliver = |cm: ConfigMap, relist: bool| {
        if relist {
            let entries = index.entry(&cm).into_iter().collect();
            index.reset(entries);
        } else {
            index.apply(&cm);
        }
    };
    deliver(configmap(Some(first.to_string())), false);
    // The last good document, as JSON and as the text sent.
    let mut current: Option<(Value, String)> = Some((first.clone(), first.to_string()));
    let mut errors = 0;
    for (step, (doc, relist, pretty)) in steps.into_iter().enumerate() {
        match doc {
            Doc::Good(v) => {
                let text = if pretty {
                    serde_json::to_string_pretty(&v).unwrap()
                } else {
                    v.to_string()
                };
                deliver(configmap(Some(text.clone())), relist);
                current = Some((v, text));
            }
            Doc::Bad(text) => {
                deliver(configmap(Some(text)), relist);
                errors += 1;
            }
            Doc::NoKey => {
                deliver(configmap(None), relist);
                current = None;
            }
        }
        let installed = cluster.ranking();
        match &current {
            None => prop_assert!(
                installed.is_none(),
                "step {}: a ranking without the key",
                step
            ),
            Some((_, text)) => {
                // Read from the text sent: serde_json's float parsing may land an ulp
                // away from the generated value, the same for the extender.
                let want: Ranking = serde_json::from_str(text).unwrap();
                prop_assert_eq!(
                    installed.as_deref(),
                    Some(&want),
                    "step {}: not the last good ranking",
                    step
                );
            }
        }
        prop_assert_eq!(
            metrics.ranking_errors.get(),
            errors,
            "step {}: errors counted",
            step
        );
        prop_assert_eq!(
            metrics.ranking_loaded.get(),
            i64::from(current.is_some()),
            "step {}: ranking_loaded",
            step
        );
        let view = cluster.view();
        for (name, spot, zone, ty, rebalancing) in &nodes {
            let got = view.node(name).map(|n| n.score);
            let want = expected_score(
                current.as_ref().map(|(v, _)| v),
                (*spot, zone, ty, *rebalancing),
            );
            prop_assert_eq!(got, Some(want), "step {}: score of {}", step, name);
        }
    }
    Ok(())
}

#[test]
fn fuzz_ranking_cache() {
    fuzz("ranking-cache", steps(), check);
}
