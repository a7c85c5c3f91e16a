//! The Grafana dashboard `charts/spotkube/dashboards/spotkube.json` (issue 10): it
//! parses, every panel queries the `${datasource}` Prometheus variable with non-empty
//! PromQL, it ships as an optional ConfigMap (chart value `monitoring.dashboard.enabled`,
//! rendered into `manifests/monitoring/`), and every metric name it uses is
//! exported by the programs, checked against a real scrape of the webhook, the extender
//! (one over HTTPS, so its certificate metrics exist) and the controller
//! (`--publish-ranking`, ranking source `aws` on moto, so the `spotkube_ranking_*` metrics
//! exist) on the rig, each driven until every labelled family has a series.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use spotkube_rig::aws::{EventKind, Moto, event};
use spotkube_rig::programs::ProgramOptions;
use spotkube_rig::{Cluster, FakeNode, Program, TestNamespace, shipped, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const DASHBOARD: &str = "dashboards/spotkube.json";
const DATASOURCE: &str = "${datasource}";
const ROWS: [&str; 9] = [
    "Interruptions",
    "Latency",
    "Actions & surges",
    "Webhook",
    "Extender",
    "Ranking",
    "Notifications",
    "Certificates",
    "Savings",
];

fn dashboard() -> Value {
    let path = shipped::chart_dir().join(DASHBOARD);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every panel, rows included, with the panels a collapsed row holds.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("a `panels` array") {
        out.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

fn is_row(panel: &Value) -> bool {
    panel["type"] == "row"
}

fn title(panel: &Value) -> String {
    panel["title"].as_str().unwrap_or("<untitled>").to_string()
}

/// Every PromQL expression: the panels' targets and the query variables'.
fn expressions(dashboard: &Value) -> Vec<String> {
    let mut out: Vec<String> = all_panels(dashboard)
        .into_iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
    {
        if variable["type"] != "query" {
            continue;
        }
        let query = &variable["query"];
        out.extend(
            [query.as_str(), query["query"].as_str()]
                .into_iter()
                .flatten()
                .map(str::to_string),
        );
    }
    out
}

/// The metric names an expression uses: identifiers `spotkube_[a-z0-9_]+` (not part of a
/// longer identifier).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = BTreeSet::new();
    for (at, _) in expr.match_indices("spotkube_") {
        if expr[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let name: String = expr[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        out.insert(name);
    }
    out
}

/// The series names a scrape makes queryable in Prometheus: a gauge as declared, a counter
/// as `<name>_total` (prometheus_client declares `# TYPE x counter` and samples
/// `x_total`), a histogram as `<name>_bucket`, `_sum` and `_count`; and every sample
/// line's name.
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(declaration) = line.strip_prefix("# TYPE ") {
            let mut words = declaration.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            match kind {
                "counter" => {
                    out.insert(format!("{}_total", name.trim_end_matches("_total")));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        out.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    out.insert(name.to_string());
                }
            }
        } else if !line.starts_with('#')
            && let Some(name) = line.split(['{', ' ']).next().filter(|n| !n.is_empty())
        {
            out.insert(name.to_string());
        }
    }
    out
}

/// Names `used` that `exported` lacks, with the histogram base name when the missing
/// name is a `_bucket` / `_sum` / `_count` series.
fn missing(used: &BTreeSet<String>, exported: &BTreeSet<String>) -> Vec<String> {
    used.iter()
        .filter(|name| !exported.contains(*name))
        .map(|name| {
            match ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
            {
                Some(base) => format!("{name} (histogram {base})"),
                None => name.clone(),
            }
        })
        .collect()
}

#[test]
fn the_dashboard_parses_and_every_panel_queries_prometheus() {
    let dashboard = dashboard();
    assert!(
        dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "a uid"
    );
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "Grafana 10+ schema"
    );
    assert!(
        dashboard["description"]
            .as_str()
            .is_some_and(|d| d.contains("Savings")),
        "the description names the savings row"
    );

    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus `datasource` variable: {variables:#?}"
    );
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        assert_eq!(
            variable["datasource"]["uid"], DATASOURCE,
            "variable {} queries the selected data source",
            variable["name"]
        );
    }

    let panels = all_panels(&dashboard);
    let rows: Vec<String> = panels
        .iter()
        .filter(|p| is_row(p))
        .map(|p| title(p))
        .collect();
    assert_eq!(rows, ROWS, "the rows, in order");

    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for panel in &panels {
        let name = title(panel);
        assert!(
            panel["id"].as_u64().is_some_and(|id| ids.insert(id)),
            "{name}: a unique id"
        );
        assert!(
            panel["gridPos"]["w"].as_u64().is_some(),
            "{name}: a gridPos"
        );
        if is_row(panel) {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], DATASOURCE,
            "{name}: the panel's data source is the variable"
        );
        assert_eq!(panel["datasource"]["type"], "prometheus", "{name}");
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        assert!(!targets.is_empty(), "{name}: at least one target");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or("");
            assert!(!expr.trim().is_empty(), "{name}: an empty expr: {target}");
            assert!(
                !metric_names(expr).is_empty(),
                "{name}: `{expr}` queries no spotkube metric"
            );
            assert!(
                target["refId"]
                    .as_str()
                    .is_some_and(|r| ref_ids.insert(r.to_string())),
                "{name}: unique refIds"
            );
            if !target["datasource"].is_null() {
                assert_eq!(target["datasource"]["uid"], DATASOURCE, "{name}: {target}");
            }
            queries += 1;
        }
    }
    assert!(queries >= 40, "{queries} queries");
}

#[test]
fn the_dashboard_ships_as_an_optional_configmap_for_grafanas_sidecar() {
    let read = |relative: &str| {
        let path = shipped::manifests_dir().join(relative);
        let text = std::fs::read_to_string(&path).unwrap();
        serde_yaml_ng::from_str::<Value>(&text).unwrap()
    };
    let configmap = read("monitoring/grafana-dashboard.yaml");
    assert_eq!(configmap["kind"], "ConfigMap");
    assert_eq!(configmap["metadata"]["labels"]["grafana_dashboard"], "1");
    let embedded: Value =
        serde_json::from_str(configmap["data"]["spotkube.json"].as_str().unwrap()).unwrap();
    assert_eq!(
        embedded,
        dashboard(),
        "the ConfigMap carries the chart's dashboard"
    );

    let component = read("monitoring/kustomization.yaml");
    let resources = component["resources"].as_array().unwrap();
    assert!(resources.iter().any(|r| r == "grafana-dashboard.yaml"));
    // The ServiceMonitor needs the Prometheus Operator's CRDs: never applied by default.
    assert!(
        !resources.iter().any(|r| r == "servicemonitor.yaml"),
        "servicemonitor.yaml stays opt-in"
    );

    let root = read("kustomization.yaml");
    for key in ["resources", "components"] {
        assert!(
            !root[key].as_array().is_some_and(|r| r
                .iter()
                .any(|r| r.as_str().unwrap_or("").contains("monitoring"))),
            "manifests/kustomization.yaml does not include monitoring by default ({key})"
        );
    }
}

#[test]
fn metric_names_are_matched_as_prometheus_stores_them() {
    let scrape = "\
# HELP spotkube_x_events EventBridge messages.
# TYPE spotkube_x_events counter
spotkube_x_events_total{kind=\"a\"} 1
# TYPE spotkube_x_seconds histogram
spotkube_x_seconds_bucket{le=\"0.5\"} 0
# TYPE spotkube_x_leader gauge
# TYPE spotkube_x_empty counter
# EOF
";
    let exported = exported(scrape);
    let used = |expr: &str| missing(&metric_names(expr), &exported);
    assert!(used("sum(rate(spotkube_x_events_total[5m]))").is_empty());
    assert!(used("sum(rate(spotkube_x_empty_total[5m]))").is_empty());
    assert!(used("max(spotkube_x_leader)").is_empty());
    assert!(
        used("histogram_quantile(0.9, sum by (le) (rate(spotkube_x_seconds_bucket[5m])))")
            .is_empty()
    );
    assert!(
        used("rate(spotkube_x_seconds_sum[1m]) / rate(spotkube_x_seconds_count[1m])").is_empty()
    );
    assert_eq!(
        used("spotkube_x_events"),
        ["spotkube_x_events"],
        "a counter is x_total"
    );
    assert_eq!(used("spotkube_x_seconds"), ["spotkube_x_seconds"]);
    assert_eq!(
        used("spotkube_x_leader_bucket"),
        ["spotkube_x_leader_bucket (histogram spotkube_x_leader)"],
        "only histograms have buckets"
    );
    assert_eq!(
        used("rate(spotkube_x_bogus_total[1m])"),
        ["spotkube_x_bogus_total"]
    );
    assert_eq!(
        metric_names("a_spotkube_x_leader + spotkube_x_leader{job=\"spotkube_y\"}"),
        BTreeSet::from(["spotkube_x_leader".to_string(), "spotkube_y".to_string()]),
    );
}

#[tokio::test]
async fn every_metric_the_dashboard_uses_is_exported_by_the_programs() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let test = cluster
        .namespace_with("dashboard", &[("spotkube.io/enabled", "true")])
        .await?;
    test.report(scrape_and_check(cluster, &test).await)
}

/// A loopback HTTP sink answering 200 to every request: the notification receiver.
async fn ok_receiver() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 16 * 1024];
                // The headers, then Content-Length bytes of body.
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    got.extend_from_slice(&buf[..n]);
                    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let headers = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                    let length = headers
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if got.len() >= end + 4 + length {
                        break;
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    Ok(url)
}

/// Scrapes every program, concatenated.
async fn scrape(programs: &[&Program]) -> anyhow::Result<String> {
    let mut text = String::new();
    for program in programs {
        text.push_str(&program.metrics().await?);
        text.push('\n');
    }
    Ok(text)
}

/// prometheus_client prints a labelled family only once it has a series, so each program
/// is driven until every family exists: an admission, extender calls (one a bad request),
/// and for the controller a spot interruption (events, actions, a notification), an event
/// from another account, a Namespace to mirror the opt-in label of, and a pod bound to an
/// on-demand node for the savings series.
async fn scrape_and_check(cluster: &Cluster, test: &TestNamespace) -> anyhow::Result<()> {
    let client = &test.client;
    let webhook = cluster.start_webhook(ProgramOptions::default()).await?;
    cluster
        .register_webhook(&format!("spotkube-{}", test.name), &webhook, &test.name)
        .await?;
    // HTTPS for the certificate metrics; a plain one to call.
    let extender_tls = cluster
        .start_extender(ProgramOptions {
            tls: true,
            ..ProgramOptions::default()
        })
        .await?;
    let extender = cluster.start_extender(ProgramOptions::default()).await?;

    let moto = Moto::shared().await?;
    let queues = moto.create_queue_with_dlq(&test.name, 3).await?;
    let node =
        FakeNode::spot("m7g.large", "us-east-1a").with_label("spotkube.test/pool", &test.name);
    let interruption = event(
        EventKind::SpotInterruptionWarning,
        &node.instance_id,
        Timestamp::now(),
    )?;
    let account = interruption["account"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the fixture names no account: {interruption}"))?
        .to_string();
    let controller = cluster
        .start_controller(
            moto.controller_options(&queues.url, &test.name)
                .arg("--publish-ranking")
                .arg(format!("--account-id={account}"))
                .arg(format!("--notify-webhook-url={}", ok_receiver().await?))
                .arg("--visibility-timeout=10s")
                .arg("--savings-interval=1s"),
        )
        .await?;
    controller
        .wait_for_metric("spotkube_controller_leader 1", Duration::from_secs(30))
        .await?;

    // Webhook: one Pod admitted (and patched) in the opted-in namespace, bound to an
    // on-demand node so the savings loop prices it (snapshot on-demand prices).
    let on_demand =
        FakeNode::on_demand("m7g.large", "us-east-1b").with_label("spotkube.test/pool", &test.name);
    on_demand.create(client).await?;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "spec": {
            "nodeName": on_demand.name,
            "containers": [{
                "name": "pause",
                "image": "registry.k8s.io/pause:3.10",
                "resources": {"requests": {"cpu": "100m"}},
            }],
        },
    }))?;
    Api::<Pod>::namespaced(client.clone(), &test.name)
        .create(&PostParams::default(), &pod)
        .await?;

    // Extender: a filter call naming a node it does not know, a prioritize call, a bad one.
    let http = reqwest::Client::new();
    let args = json!({
        "Pod": {"metadata": {"name": "probe", "namespace": test.name}},
        "Nodes": null,
        "NodeNames": ["no-such-node"],
    });
    for verb in ["filter", "prioritize"] {
        http.post(format!("{}/{verb}", extender.url()))
            .json(&args)
            .send()
            .await?
            .error_for_status()?;
    }
    let bad = http
        .post(format!("{}/filter", extender.url()))
        .body("not ExtenderArgs")
        .header("content-type", "application/json")
        .send()
        .await?;
    anyhow::ensure!(
        bad.status() == 400,
        "a bad request answered {}",
        bad.status()
    );

    // Controller: an interruption, the same from another account, a Namespace opting in.
    node.create(client).await?;
    moto.send_message(&queues.url, &interruption.to_string())
        .await?;
    let mut foreign = event(
        EventKind::SpotInterruptionWarning,
        &node.instance_id,
        Timestamp::now(),
    )?;
    foreign["account"] = json!("000000000000");
    moto.send_message(&queues.url, &foreign.to_string()).await?;
    let opting_in = cluster.namespace("dashboard-opt-in").await?;
    Api::<Namespace>::all(client.clone())
        .patch(
            &opting_in.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"spotkube.io/enabled": "true"}}})),
        )
        .await?;

    let programs = [&webhook, &extender_tls, &extender, &controller];
    let driven = [
        "spotkube_webhook_admission_requests_total",
        "spotkube_webhook_patches_total",
        "spotkube_extender_request_duration_seconds_bucket",
        "spotkube_extender_filtered_nodes_total",
        "spotkube_extender_bad_requests_total",
        "spotkube_extender_tls_certificate_expiry_seconds",
        "spotkube_controller_events_total",
        "spotkube_controller_foreign_events_total",
        "spotkube_controller_actions_total",
        "spotkube_controller_leader_tasks",
        "spotkube_controller_notifications_total",
        "spotkube_controller_namespace_label_writes_total",
        "spotkube_ranking_spot_advisor_fallback",
        "spotkube_workload_cost_usd_per_hour",
        "spotkube_workload_on_demand_equivalent_usd_per_hour",
        "spotkube_cluster_cost_usd_per_hour",
        "spotkube_opted_in_pods",
    ];
    let (programs, driven) = (&programs, &driven);
    let exported = wait_for(
        "every driven metric family in a scrape",
        Duration::from_secs(60),
        move || async move {
            let exported = exported(&scrape(programs).await?);
            Ok(driven
                .iter()
                .all(|name| exported.contains(*name))
                .then_some(exported))
        },
    )
    .await?;

    let dashboard = dashboard();
    let used: BTreeSet<String> = expressions(&dashboard)
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    anyhow::ensure!(
        used.len() >= 30,
        "only {} metric names: {used:?}",
        used.len()
    );
    let missing = missing(&used, &exported);
    anyhow::ensure!(
        missing.is_empty(),
        "{DASHBOARD} uses metrics no program exports: {missing:#?}\nexported: {exported:#?}"
    );
    Ok(())
}
