//! Helpers of the benchmarks on the rig (`tests/tests/bench_*.rs`): many kwok nodes,
//! the snapshot ranking, Prometheus text parsing, percentiles and a process's CPU time
//! and memory. Benchmarks record figures; they assert nothing about time.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};

use crate::nodes::{FakeNode, is_ready};
use crate::{RigError, wait};

/// `$name` parsed, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The instance types bench nodes cycle through: ranked and unranked spot types of the
/// snapshot, so prioritize scores differ between nodes.
pub const BENCH_TYPES: [&str; 4] = ["c7g.4xlarge", "m7g.large", "c6g.large", "r7g.large"];

/// Creates `count` spot kwok nodes labelled `spotkube.test/pool=<pool>` (EKS-style
/// names `ip-10-<pool_octet>-<i/250>-<i%250+1>.ec2.internal`, unique for up to 64,000
/// nodes), `parallel` creates at a time, then waits until all are Ready.
pub async fn create_spot_nodes(
    client: &kube::Client,
    pool: &str,
    pool_octet: u8,
    count: usize,
    max_pods: u32,
) -> Result<Vec<FakeNode>, RigError> {
    let nodes: Vec<FakeNode> = (0..count)
        .map(|i| {
            FakeNode::spot(BENCH_TYPES[i % BENCH_TYPES.len()], crate::ZONES[i % 3])
                .with_name(format!(
                    "ip-10-{pool_octet}-{}-{}.ec2.internal",
                    i / 250,
                    i % 250 + 1
                ))
                .with_label("spotkube.test/pool", pool)
                .with_max_pods(max_pods)
        })
        .collect();
    futures::stream::iter(nodes.iter())
        .map(|node| node.create(client))
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    let api: Api<Node> = Api::all(client.clone());
    let selector = format!("spotkube.test/pool={pool}");
    wait::wait_for(
        &format!("{count} nodes Ready"),
        Duration::from_secs(300),
        || async {
            // Listing thousands of Nodes every 100 ms would load the apiserver.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let ready = list_all(&api, &selector)
                .await?
                .iter()
                .filter(|n| is_ready(n))
                .count();
            Ok((ready >= count).then_some(()))
        },
    )
    .await?;
    Ok(nodes)
}

/// Every Node matching `selector`, in pages of 500.
async fn list_all(api: &Api<Node>, selector: &str) -> Result<Vec<Node>, kube::Error> {
    let mut out = Vec::new();
    let mut params = ListParams::default().labels(selector).limit(500);
    loop {
        let page = api.list(&params).await?;
        out.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(out),
        }
    }
}

/// The snapshot ranking, exactly as `spotkube-controller rank` publishes it.
pub async fn snapshot_ranking() -> Result<String, RigError> {
    let binary = crate::tools::program_binary("spotkube-controller");
    let output = tokio::process::Command::new(&binary)
        .args([
            "rank",
            "--source",
            "snapshot",
            "--output",
            "json",
            "--snapshot",
        ])
        .arg(crate::nodes::price_snapshot_path())
        .output()
        .await
        .map_err(|e| RigError::io(&binary, e))?;
    if !output.status.success() {
        return Err(RigError::Spawn {
            name: "spotkube-controller rank".into(),
            reason: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    String::from_utf8(output.stdout).map_err(|e| RigError::Kube(e.to_string()))
}

/// The sum of every sample of `metric` whose labels contain all of `labels`
/// (`key="value"` pairs) in Prometheus text.
pub fn metric_sum(text: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(metric)?;
            let (label_text, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let (l, v) = r.split_once('}')?;
                    (l, v)
                }
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            labels
                .iter()
                .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.split_whitespace().next()?.parse::<f64>().ok())?
        })
        .sum()
}

/// The `p` quantile (0..=1) of sorted samples (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The median of unsorted values.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `/proc/loadavg`'s 1-minute figure, for the record next to a measurement.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap_or_default()
}

/// Resident memory (VmRSS) of a process, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ')'.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(clock_ticks(ticks))
}

/// `ticks` of the kernel's clock (`/proc`'s CPU time unit) as a duration.
fn clock_ticks(ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Time on a CPU and time runnable but waiting for one (`/proc/PID/task/*/schedstat`),
/// summed over the process's threads: the wait shows what a busy machine's run queue
/// adds to a process that blocks and wakes often.
pub fn schedstat(pid: u32) -> Option<(Duration, Duration)> {
    let mut on_cpu = 0u64;
    let mut waiting = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(line) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue; // the thread ended meanwhile
        };
        let mut fields = line
            .split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0));
        on_cpu += fields.next().unwrap_or(0);
        waiting += fields.next().unwrap_or(0);
    }
    Some((Duration::from_nanos(on_cpu), Duration::from_nanos(waiting)))
}

/// CPU time the whole machine has spent busy (every core; `/proc/stat`, all but idle
/// and iowait).
pub fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let idle = ticks.get(3)? + ticks.get(4)?;
    let busy = ticks.iter().take(8).sum::<u64>() - idle;
    Some(clock_ticks(busy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_matching_samples() {
        let text = "# HELP x\nscheduler_schedule_attempts_total{profile=\"a\",result=\"scheduled\"} 12\n\
                    scheduler_schedule_attempts_total{profile=\"a\",result=\"error\"} 1\n\
                    scheduler_schedule_attempts_total{profile=\"b\",result=\"scheduled\"} 5\n\
                    up 1\n";
        let m = "scheduler_schedule_attempts_total";
        assert_eq!(
            metric_sum(text, m, &[("profile", "a"), ("result", "scheduled")]),
            12.0
        );
        assert_eq!(metric_sum(text, m, &[("result", "scheduled")]), 17.0);
        assert_eq!(metric_sum(text, "up", &[]), 1.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
    }
}
