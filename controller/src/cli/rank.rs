//! `spotkube-controller rank`: prints the current ranking for a person (table) or as
//! the ranking model itself (`--output json`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use prometheus_client::registry::Registry;
use spotkube_shared::ranking::{Criteria, Ranking, ScoreBy, compute};

use crate::error::{Error, Result};
use crate::pricing::advisor::{self, AdvisorMetrics, SpotAdvisor};
use crate::pricing::aws::AwsSource;
use crate::pricing::snapshot::{SnapshotLocation, SnapshotSource};
use crate::pricing::{AnySource, PriceSource};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    Aws,
    Snapshot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Flags of `rank` (also used by `run` for the refresher's source).
#[derive(Debug, Clone, clap::Args)]
pub struct RankArgs {
    /// Where prices come from.
    #[arg(long, env = "SPOTKUBE_PRICE_SOURCE", value_enum, default_value_t = SourceKind::Aws)]
    pub source: SourceKind,
    /// Region to rank (default: the SDK's configured region; `us-east-1` for the snapshot).
    #[arg(long, env = "SPOTKUBE_REGION")]
    pub region: Option<String>,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// A price snapshot file instead of the one built into the binary: the prices of
    /// `--source snapshot`, the fallback interruption bands of `--source aws`.
    /// (`--interruption-bands`, its former name for the latter, still works.)
    #[arg(long, env = "SPOTKUBE_PRICE_SNAPSHOT", alias = "interruption-bands")]
    pub snapshot: Option<PathBuf>,
    /// Zones the snapshot's region-level list is published for (default: <region>a,b,c).
    #[arg(long, env = "SPOTKUBE_RANKING_ZONES", value_delimiter = ',')]
    pub zones: Vec<String>,
    /// For `--source aws`: the EC2 Spot Instance Advisor feed, whose interruption bands
    /// apply the band criterion (the AWS APIs publish no bands). When it cannot be
    /// fetched, the bands of the price snapshot apply, and the ranking's source says so.
    #[arg(long, env = "SPOTKUBE_SPOT_ADVISOR_URL", default_value = advisor::DEFAULT_URL)]
    pub spot_advisor_url: String,
    /// How long a fetched Spot Advisor feed is used before it is fetched again (a
    /// failed fetch keeps the last good copy).
    #[arg(long, env = "SPOTKUBE_SPOT_ADVISOR_REFRESH", default_value = "1h", value_parser = spotkube_shared::config::positive_duration)]
    pub spot_advisor_refresh: Duration,
    /// DescribeSpotPriceHistory page size (tests use small pages to exercise pagination).
    #[arg(long, hide = true, default_value_t = 1000)]
    pub spot_page_size: i32,
    /// DescribeInstanceTypes page size, 5..=100 (tests use small pages to exercise pagination).
    #[arg(long, hide = true)]
    pub instance_types_page_size: Option<i32>,
    /// How many types to keep per AZ.
    #[arg(long, env = "SPOTKUBE_RANKING_TOP", default_value_t = 6)]
    pub top: usize,
    /// Allowed architectures (EC2 names), comma-separated; empty = any.
    #[arg(
        long,
        env = "SPOTKUBE_RANKING_ARCHITECTURES",
        value_delimiter = ',',
        default_value = "arm64"
    )]
    pub architectures: Vec<String>,
    /// Allowed families, comma-separated; empty = any.
    #[arg(
        long,
        env = "SPOTKUBE_RANKING_FAMILIES",
        value_delimiter = ',',
        default_value = "c7g,c8g,m7g,m8g,r7g,r8g"
    )]
    pub families: Vec<String>,
    #[arg(long, env = "SPOTKUBE_RANKING_MIN_VCPU", default_value_t = 2)]
    pub min_vcpu: u32,
    #[arg(long, env = "SPOTKUBE_RANKING_MAX_VCPU", default_value_t = 16)]
    pub max_vcpu: u32,
    /// Highest Spot Advisor interruption band (0 <5 %, 1 5–10 %, 2 10–15 %, 3 15–20 %, 4 >20 %).
    #[arg(
        long,
        env = "SPOTKUBE_RANKING_MAX_INTERRUPTION_BAND",
        default_value_t = 2
    )]
    pub max_interruption_band: u8,
    /// Lowest VPC CNI pod density (where the source knows ENIs and IPs).
    #[arg(long, env = "SPOTKUBE_RANKING_MIN_PODS")]
    pub min_pods: Option<u32>,
    /// What the ranking sorts by: spot $ per vCPU-hour, per GiB-hour, or a blend.
    #[arg(long, env = "SPOTKUBE_RANKING_SCORE", value_enum, default_value_t = ScoreKind::PerVcpu)]
    pub score_by: ScoreKind,
    /// The vCPU share of `--score-by blend` (0..1; the rest is per GiB).
    #[arg(long, env = "SPOTKUBE_RANKING_VCPU_WEIGHT", default_value_t = 0.5)]
    pub vcpu_weight: f64,
    /// Also rank bare-metal sizes, previous generations and burstable types.
    #[arg(long, env = "SPOTKUBE_RANKING_INCLUDE_ALL_KINDS")]
    pub include_all_kinds: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScoreKind {
    PerVcpu,
    PerGib,
    Blend,
}

impl RankArgs {
    pub fn criteria(&self) -> Criteria {
        let exclude = !self.include_all_kinds;
        Criteria {
            architectures: self
                .architectures
                .iter()
                .filter(|a| !a.is_empty())
                .cloned()
                .collect(),
            families: self
                .families
                .iter()
                .filter(|f| !f.is_empty())
                .cloned()
                .collect(),
            min_vcpu: self.min_vcpu,
            max_vcpu: self.max_vcpu,
            exclude_metal: exclude,
            current_generation_only: exclude,
            exclude_burstable: exclude,
            max_interruption_band: Some(self.max_interruption_band),
            min_pods: self.min_pods,
            score: match self.score_by {
                ScoreKind::PerVcpu => ScoreBy::PerVcpu,
                ScoreKind::PerGib => ScoreBy::PerGib,
                ScoreKind::Blend => ScoreBy::Blend {
                    vcpu_weight: self.vcpu_weight,
                },
            },
            top_n: self.top,
        }
    }

    /// Builds the chosen source; its metrics (the Spot Advisor feed's) go to `registry`.
    pub async fn source(&self, registry: &mut Registry) -> Result<AnySource> {
        let snapshot = SnapshotLocation::from_flag(self.snapshot.clone());
        Ok(match self.source {
            SourceKind::Snapshot => {
                let region = self.region.clone().unwrap_or_else(|| "us-east-1".into());
                let zones = if self.zones.is_empty() {
                    ["a", "b", "c"]
                        .iter()
                        .map(|l| format!("{region}{l}"))
                        .collect()
                } else {
                    self.zones.clone()
                };
                AnySource::Snapshot(SnapshotSource::new(snapshot, region, zones))
            }
            SourceKind::Aws => {
                let config = crate::aws::sdk_config(self.region.clone(), false).await;
                let region = config.region().map(|r| r.to_string()).ok_or_else(|| {
                    Error::Invalid("no AWS region: pass --region or set AWS_REGION".into())
                })?;
                let advisor = SpotAdvisor::new(
                    self.spot_advisor_url.clone(),
                    self.spot_advisor_refresh,
                    snapshot,
                    AdvisorMetrics::register(registry),
                )?;
                AnySource::Aws(
                    AwsSource::from_config(&config, region)
                        .with_spot_advisor(advisor)
                        .with_spot_page_size(self.spot_page_size)
                        .with_instance_types_page_size(self.instance_types_page_size),
                )
            }
        })
    }
}

/// Runs `rank`: prints the ranking to stdout.
pub async fn run(args: RankArgs) -> Result<()> {
    // One ranking, printed: nothing scrapes its metrics.
    let source = args.source(&mut Registry::default()).await?;
    let criteria = args.criteria();
    let book = source.price_book(&criteria).await?;
    let ranking = compute(&book, &criteria, source.name(), jiff::Timestamp::now());
    let text = match args.output {
        Output::Json => ranking.to_json() + "\n",
        Output::Table => table(&ranking),
    };
    // A closed pipe (`rank | head`) is the reader's choice, not an error.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Io {
            what: "standard output".into(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// The ranking as an aligned text table.
pub fn table(ranking: &Ranking) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:>4}  {:<14} {:>12} {:>12} {:>8}",
        "AZ", "RANK", "TYPE", "SPOT $/H", "OD $/H", "SAVINGS"
    );
    for (zone, entries) in &ranking.zones {
        for e in entries {
            let _ = writeln!(
                out,
                "{:<16} {:>4}  {:<14} {:>12.5} {:>12.5} {:>7.1}%",
                zone,
                e.rank,
                e.instance_type,
                e.spot_usd_per_hour,
                e.on_demand_usd_per_hour,
                e.savings_percent
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: RankArgs,
    }

    fn parse(extra: &[&str]) -> RankArgs {
        use clap::Parser;
        let mut argv = vec!["rank"];
        argv.extend_from_slice(extra);
        Wrapper::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn flag_defaults_are_the_documented_criteria() {
        assert_eq!(parse(&[]).criteria(), Criteria::default());
        let c = parse(&[
            "--families",
            "",
            "--score-by",
            "blend",
            "--vcpu-weight",
            "0.25",
            "--min-pods",
            "58",
            "--include-all-kinds",
        ])
        .criteria();
        assert!(c.families.is_empty());
        assert_eq!(c.score, ScoreBy::Blend { vcpu_weight: 0.25 });
        assert_eq!(c.min_pods, Some(58));
        assert!(!c.exclude_metal && !c.exclude_burstable && !c.current_generation_only);
    }

    #[tokio::test]
    async fn run_ranks_from_the_built_in_snapshot_without_a_file() {
        use crate::config::{Cli, Command};
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "spotkube-controller",
            "run",
            "--queue-url=https://sqs.example/q",
            "--publish-ranking",
            "--source=snapshot",
        ])
        .unwrap();
        let Some(Command::Run(run)) = cli.command else {
            panic!("not run");
        };
        let source = run.ranking.source(&mut Registry::default()).await.unwrap();
        let criteria = run.ranking.criteria();
        let book = source.price_book(&criteria).await.unwrap();
        let ranking = compute(&book, &criteria, source.name(), jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(ranking.source, "snapshot");
        assert_eq!(ranking.zones.len(), 3);
        assert_eq!(ranking.zones["us-east-1b"][0].instance_type, "c7g.4xlarge");
    }

    #[tokio::test]
    async fn the_aws_source_reads_the_spot_advisor_flags_and_registers_its_metrics() {
        let args = parse(&[
            "--source=aws",
            "--region=us-east-1",
            "--spot-advisor-url=http://127.0.0.1:9/feed.json",
            "--spot-advisor-refresh=5m",
            "--interruption-bands=/tmp/old-snapshot.json",
        ]);
        assert_eq!(args.spot_advisor_url, "http://127.0.0.1:9/feed.json");
        assert_eq!(args.spot_advisor_refresh, Duration::from_secs(300));
        assert_eq!(args.snapshot, Some(PathBuf::from("/tmp/old-snapshot.json")));
        assert_eq!(parse(&[]).spot_advisor_url, advisor::DEFAULT_URL);
        spotkube_shared::telemetry::install_crypto_provider();
        let mut registry = Registry::default();
        assert!(matches!(
            args.source(&mut registry).await.unwrap(),
            AnySource::Aws(_)
        ));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for name in [
            "spotkube_ranking_spot_advisor_fetch_failures_total",
            "spotkube_ranking_spot_advisor_last_success_timestamp_seconds",
            "spotkube_ranking_spot_advisor_fallback",
        ] {
            assert!(text.contains(name), "{name} in {text}");
        }
    }

    #[tokio::test]
    async fn table_lists_every_zone_and_rank() {
        let args = parse(&["--source", "snapshot", "--top", "2"]);
        let source = args.source(&mut Registry::default()).await.unwrap();
        let ranking = compute(
            &source.price_book(&args.criteria()).await.unwrap(),
            &args.criteria(),
            "snapshot",
            jiff::Timestamp::UNIX_EPOCH,
        );
        let text = table(&ranking);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + 3 * 2);
        assert!(lines[0].starts_with("AZ"));
        assert!(
            lines[1].starts_with("us-east-1a")
                && lines[1].contains("c7g.4xlarge")
                && lines[1].contains("71.0%"),
            "{}",
            lines[1]
        );
        assert!(lines[6].starts_with("us-east-1c") && lines[6].contains("c7g.2xlarge"));
    }
}
