//! `spotkube-controller rank`: prints the current ranking for a person (table) or as
//! the ranking model itself (`--output json`).

use std::fmt::Write as _;
use std::path::PathBuf;

use spotkube_shared::ranking::{Criteria, Ranking, ScoreBy, compute};

use crate::error::{Error, Result};
use crate::pricing::aws::AwsSource;
use crate::pricing::snapshot::{self, SnapshotSource};
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
    /// The offline price snapshot (for `--source snapshot`).
    #[arg(
        long,
        env = "SPOTKUBE_PRICE_SNAPSHOT",
        default_value = "aws-price-snapshot.json"
    )]
    pub snapshot: PathBuf,
    /// Zones the snapshot's region-level list is published for (default: <region>a,b,c).
    #[arg(long, env = "SPOTKUBE_RANKING_ZONES", value_delimiter = ',')]
    pub zones: Vec<String>,
    /// For `--source aws`: a price snapshot file whose Spot Advisor interruption bands
    /// apply the band criterion (the AWS APIs publish no bands).
    #[arg(long, env = "SPOTKUBE_INTERRUPTION_BANDS")]
    pub interruption_bands: Option<PathBuf>,
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

    /// Builds the chosen source.
    pub async fn source(&self) -> Result<AnySource> {
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
                AnySource::Snapshot(SnapshotSource::new(&self.snapshot, region, zones))
            }
            SourceKind::Aws => {
                let config = crate::aws::sdk_config(self.region.clone(), false).await;
                let region = config.region().map(|r| r.to_string()).ok_or_else(|| {
                    Error::Invalid("no AWS region: pass --region or set AWS_REGION".into())
                })?;
                let bands = match &self.interruption_bands {
                    Some(path) => snapshot::interruption_bands(path, &region)?,
                    None => Default::default(),
                };
                AnySource::Aws(
                    AwsSource::from_config(&config, region)
                        .with_interruption_bands(bands)
                        .with_spot_page_size(self.spot_page_size)
                        .with_instance_types_page_size(self.instance_types_page_size),
                )
            }
        })
    }
}

/// Runs `rank`: prints the ranking to stdout.
pub async fn run(args: RankArgs) -> Result<()> {
    let source = args.source().await?;
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
    async fn table_lists_every_zone_and_rank() {
        let snapshot = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/data/aws-price-snapshot.json"
        );
        let args = parse(&["--source", "snapshot", "--top", "2", "--snapshot", snapshot]);
        let source = args.source().await.unwrap();
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
