//! Scheduler throughput with and without spotkube's extender (issue 13), on the rig's real
//! kube-scheduler v1.36.3. `make bench-scheduler`.
//!
//! `$SPOTKUBE_BENCH_NODES` spot kwok nodes (default 50); per run, `$SPOTKUBE_BENCH_PODS`
//! pending pods (default 200) are created for a scheduler name no scheduler serves yet,
//! then the same kube-scheduler binary starts with one profile of that name: `vanilla`
//! (no extender) or `extender` (spotkube-extender configured exactly as the chart ships
//! it: names mode, filter + prioritize, the shipped weight). Throughput comes from the
//! scheduler's own `scheduler_schedule_attempts_total{result="scheduled"}`, scraped from
//! its secure port every 100 ms, between 10 % and 90 % of the run's pods. The two
//! alternate, `$SPOTKUBE_BENCH_ROUNDS` times (default 1; each round swaps which goes
//! first). `$SPOTKUBE_BENCH_FILTER=0` also runs `extender-nofilter` (the shipped entry
//! without `filterVerb`). `$SPOTKUBE_BENCH_TRIVIAL=1` also runs `trivial-extender`: the
//! shipped entry pointed at an extender served from this process that decides nothing
//! (every candidate passes, no scores), which measures what the extender protocol
//! itself costs kube-scheduler. `$SPOTKUBE_BENCH_WARMUP` plain runs go first, not
//! counted. Figures go to stderr and to `$SPOTKUBE_BENCH_OUT` when set;
//! nothing about time is asserted. Ignored by default: it is a benchmark.
//!
//! Both profiles get an API client QPS and burst of `$SPOTKUBE_BENCH_SCHEDULER_QPS`
//! (default 5000): kube-scheduler's default of 50 caps binding at ~50 pods/s whatever
//! the profile, so it would measure the rate limiter, not the scheduler.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use spotkube_rig::bench::{
    create_spot_nodes, env_or, load_average, machine_busy, median, metric_sum, schedstat,
    snapshot_ranking,
};
use spotkube_rig::programs::ProgramOptions;
use spotkube_rig::{Cluster, ExtenderConfig, wait_for};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Vanilla,
    Extender,
    ExtenderNoFilter,
    Trivial,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Vanilla => "vanilla",
            Mode::Extender => "extender",
            Mode::ExtenderNoFilter => "extender-nofilter",
            Mode::Trivial => "trivial-extender",
        }
    }
}

fn pod(name: &str, scheduler: &str, pool: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"bench-run": scheduler}},
        "spec": {
            "schedulerName": scheduler,
            "nodeSelector": {"spotkube.test/pool": pool},
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "app", "image": "registry.k8s.io/pause:3.10",
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
            }],
        },
    }))?)
}

/// Pods scheduled per second between 10 % and 90 % of `total`, from (time, count) samples.
fn throughput(samples: &[(Duration, f64)], total: usize) -> Option<f64> {
    let crossing = |fraction: f64| {
        let target = total as f64 * fraction;
        let i = samples.iter().position(|(_, c)| *c >= target)?;
        // The first sample must come before the crossing: the window starts with it.
        if i == 0 {
            return None;
        }
        // Linear between the samples around the crossing.
        let ((t0, c0), (t1, c1)) = (samples[i - 1], samples[i]);
        let (t0, t1) = (t0.as_secs_f64(), t1.as_secs_f64());
        Some(t0 + (t1 - t0) * (target - c0) / (c1 - c0).max(1e-9))
    };
    let (t10, t90) = (crossing(0.1)?, crossing(0.9)?);
    (t90 > t10).then(|| total as f64 * 0.8 / (t90 - t10))
}

/// Cumulative CPU figures, read at the start and at the end of a run.
struct Costs {
    /// kube-scheduler's (on a CPU, waiting for one).
    scheduler: Option<(Duration, Duration)>,
    /// spotkube-extender's (on a CPU, waiting for one).
    extender: Option<(Duration, Duration)>,
    machine: Option<Duration>,
}

impl Costs {
    fn read((scheduler, extender): (u32, u32)) -> Costs {
        Costs {
            scheduler: schedstat(scheduler),
            extender: schedstat(extender),
            machine: machine_busy(),
        }
    }

    /// Per pod, in µs: kube-scheduler's CPU and run-queue wait, the extender's CPU
    /// (only when the run called spotkube's), the machine's busy CPU.
    fn per_pod_since(&self, start: &Costs, pods: usize, extender_called: bool) -> String {
        let per_pod = |from: Option<Duration>, to: Option<Duration>| match (from, to) {
            (Some(from), Some(to)) => {
                format!("{:.0}", (to - from).as_micros() as f64 / pods as f64)
            }
            _ => "?".into(),
        };
        let on_cpu = |c: &Costs| c.scheduler.map(|s| s.0);
        let waiting = |c: &Costs| c.scheduler.map(|s| s.1);
        let extender = match extender_called {
            true => per_pod(start.extender.map(|e| e.0), self.extender.map(|e| e.0)),
            false => "-".into(),
        };
        format!(
            "per pod (us): scheduler cpu {} wait {}, extender cpu {extender}, machine cpu {}",
            per_pod(on_cpu(start), on_cpu(self)),
            per_pod(waiting(start), waiting(self)),
            per_pod(start.machine, self.machine),
        )
    }
}

/// An extender that decides nothing, so that what remains is the protocol's cost:
/// filter passes every candidate, prioritize scores none (an empty list adds nothing to
/// any node). Served on 127.0.0.1 with keep-alive and `TCP_NODELAY`, as spotkube's is.
async fn serve_trivial_extender() -> anyhow::Result<String> {
    use axum::body::Bytes;
    use axum::routing::post;
    use axum::serve::ListenerExt;

    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Args {
        #[serde(default)]
        node_names: Vec<String>,
    }
    let app = axum::Router::new()
        .route(
            "/filter",
            post(|body: Bytes| async move {
                let names = serde_json::from_slice::<Args>(&body)
                    .map(|a| a.node_names)
                    .unwrap_or_default();
                axum::Json(json!({"NodeNames": names, "FailedNodes": {}, "Error": ""}))
            }),
        )
        .route("/prioritize", post(|| async { axum::Json(json!([])) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

// Two workers, as a program gets: the trivial extender is served from this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: make bench-scheduler"]
async fn scheduler_throughput_with_and_without_the_extender() -> anyhow::Result<()> {
    let cluster = Cluster::shared().await?;
    let test = cluster.namespace("sched-bench").await?;
    test.report(bench(cluster, &test.name, &test.client).await)
}

async fn bench(cluster: &Cluster, ns: &str, client: &kube::Client) -> anyhow::Result<()> {
    let nodes: usize = env_or("SPOTKUBE_BENCH_NODES", 50);
    let pods: usize = env_or("SPOTKUBE_BENCH_PODS", 200);
    let rounds: usize = env_or("SPOTKUBE_BENCH_ROUNDS", 1);
    let with_nofilter = std::env::var("SPOTKUBE_BENCH_FILTER").as_deref() == Ok("0");
    let with_trivial = std::env::var("SPOTKUBE_BENCH_TRIVIAL").as_deref() == Ok("1");
    let warmup: usize = env_or("SPOTKUBE_BENCH_WARMUP", 0);
    // kube-scheduler's default client QPS (50) would cap both profiles at ~50 binds/s.
    let client_qps: u32 = env_or("SPOTKUBE_BENCH_SCHEDULER_QPS", 5000);

    let started = Instant::now();
    create_spot_nodes(client, ns, 1, nodes, 110).await?;
    eprintln!("{nodes} nodes Ready in {:?}", started.elapsed());

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "spotkube-ranking"},
            "data": {"ranking.json": snapshot_ranking().await?},
        }))?,
    )
    .await?;
    let extender = cluster
        .start_extender(
            ProgramOptions::default().arg(format!("--ranking-configmap={ns}/spotkube-ranking")),
        )
        .await?;
    extender
        .wait_for_metric(
            "spotkube_extender_ranking_loaded 1",
            Duration::from_secs(60),
        )
        .await?;

    // No client certificate: right after a scheduler starts, its client CA is not
    // loaded yet and a certificate is refused (401), while an anonymous request to
    // /metrics passes (the rig's schedulers always allow that path).
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()?;
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut modes = vec![Mode::Vanilla, Mode::Extender];
    if with_nofilter {
        modes.push(Mode::ExtenderNoFilter);
    }
    let trivial = match with_trivial {
        true => {
            modes.push(Mode::Trivial);
            Some(serve_trivial_extender().await?)
        }
        false => None,
    };
    let mut results: Vec<(Mode, f64)> = Vec::new();
    let mut report = String::new();
    // Warm-up rounds run the plain profile once each and are not counted: the first
    // runs on a fresh control plane are the slowest (at 5,000 nodes, runs kept getting
    // faster for minutes), which would favour whichever mode goes last.
    for round in 0..warmup + rounds {
        let warming = round < warmup;
        let mut order = match warming {
            true => vec![Mode::Vanilla],
            false => modes.clone(),
        };
        if !warming && (round - warmup) % 2 == 1 {
            order.reverse();
        }
        for mode in order {
            let scheduler = format!("bench-{}-{round}", mode.as_str());
            // The pods exist, pending, before their scheduler starts.
            futures::stream::iter(0..pods)
                .map(|i| {
                    let api = api.clone();
                    let scheduler = scheduler.clone();
                    async move {
                        let p = pod(&format!("{scheduler}-{i:05}"), &scheduler, ns)?;
                        api.create(&PostParams::default(), &p).await?;
                        anyhow::Ok(())
                    }
                })
                .buffer_unordered(16)
                .try_collect::<Vec<_>>()
                .await?;
            let extenders = match mode {
                Mode::Vanilla => vec![],
                Mode::Extender => vec![ExtenderConfig::shipped(extender.url())],
                Mode::ExtenderNoFilter => {
                    let mut config = ExtenderConfig::shipped(extender.url());
                    config.filter_verb = None;
                    vec![config]
                }
                Mode::Trivial => vec![ExtenderConfig::shipped(
                    trivial.clone().expect("served when the mode is on"),
                )],
            };
            let load_before = load_average();
            let (process, port) = cluster
                .start_scheduler_with_port(&scheduler, &extenders, Some(client_qps))
                .await?;
            let t0 = Instant::now();
            // Where the time per pod goes, from here to the last bind.
            let pids = (
                process.pid().unwrap_or_default(),
                extender.process.pid().unwrap_or_default(),
            );
            let costs_at_start = Costs::read(pids);
            let mut samples = Vec::new();
            let labels = [("profile", scheduler.as_str()), ("result", "scheduled")];
            let deadline = t0 + Duration::from_secs(600);
            loop {
                let Ok(text) = cluster.component_metrics(&http, port).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let count = metric_sum(&text, "scheduler_schedule_attempts_total", &labels);
                samples.push((t0.elapsed(), count));
                if count >= pods as f64 {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{scheduler}: {count} of {pods} scheduled after 10 min"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let ours = matches!(mode, Mode::Extender | Mode::ExtenderNoFilter);
            let cost = Costs::read(pids).per_pod_since(&costs_at_start, pods, ours);
            let text = cluster.component_metrics(&http, port).await?;
            let failed = metric_sum(
                &text,
                "scheduler_schedule_attempts_total",
                &[("profile", scheduler.as_str()), ("result", "error")],
            ) + metric_sum(
                &text,
                "scheduler_schedule_attempts_total",
                &[("profile", scheduler.as_str()), ("result", "unschedulable")],
            );
            drop(process);
            let rate = throughput(&samples, pods)
                .ok_or_else(|| anyhow::anyhow!("{scheduler}: no 10 %..90 % window"))?;
            let line = format!(
                "round {round} {:<18} {nodes} nodes {pods} pods: {rate:7.1} pods/s (10-90 %), \
                 all scheduled in {:.1} s, failed attempts {}, load {load_before}; {cost}\n",
                mode.as_str(),
                samples
                    .last()
                    .map(|s| s.0.as_secs_f64())
                    .unwrap_or_default(),
                failed + 0.0,
            );
            match warming {
                true => eprint!("warm-up, not counted: {line}"),
                false => {
                    eprint!("{line}");
                    report.push_str(&line);
                    results.push((mode, rate));
                }
            }

            api.delete_collection(
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                },
                &ListParams::default().labels(&format!("bench-run={scheduler}")),
            )
            .await?;
            wait_for("bench pods deleted", Duration::from_secs(300), || async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let left = api
                    .list_metadata(
                        &ListParams::default()
                            .labels(&format!("bench-run={scheduler}"))
                            .limit(1),
                    )
                    .await?;
                Ok(left.items.is_empty().then_some(()))
            })
            .await?;
        }
    }
    let vanilla: Vec<f64> = results
        .iter()
        .filter(|(m, _)| *m == Mode::Vanilla)
        .map(|r| r.1)
        .collect();
    let base = median(&vanilla);
    for mode in &modes {
        let rates: Vec<f64> = results
            .iter()
            .filter(|(m, _)| m == mode)
            .map(|r| r.1)
            .collect();
        let m = median(&rates);
        report.push_str(&format!(
            "median {:<18} {nodes} nodes: {m:7.1} pods/s over {} runs, {:.2}x vanilla\n",
            mode.as_str(),
            rates.len(),
            m / base
        ));
    }
    eprint!(
        "{}",
        report
            .lines()
            .filter(|l| l.starts_with("median"))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
    if let Some(out) = std::env::var_os("SPOTKUBE_BENCH_OUT") {
        std::fs::write(out, &report)?;
    }
    Ok(())
}
