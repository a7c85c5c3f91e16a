//! `spotkube-controller rank`: prints the current ranking for a person (table) or as
//! the ranking model itself (`--output json`).

use std::fmt::Write as _;
use std::path::PathBuf;

use spotkube_shared::ranking::{Criteria, Ranking, compute};

use super::aws::AwsSource;
use super::snapshot::SnapshotSource;
use super::{AnySource, PriceSource};

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
    /// How many types to keep per AZ.
    #[arg(long, env = "SPOTKUBE_RANKING_TOP", default_value_t = 6)]
    pub top: usize,
}

impl RankArgs {
    pub fn criteria(&self) -> Criteria {
        Criteria {
            top_n: self.top,
            ..Criteria::default()
        }
    }

    /// Builds the chosen source.
    pub async fn source(&self) -> anyhow::Result<AnySource> {
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
                    anyhow::anyhow!("no AWS region: pass --region or set AWS_REGION")
                })?;
                let bands = match &self.interruption_bands {
                    Some(path) => super::snapshot::interruption_bands(path, &region)?,
                    None => Default::default(),
                };
                AnySource::Aws(
                    AwsSource::from_config(&config, region)
                        .with_interruption_bands(bands)
                        .with_spot_page_size(self.spot_page_size),
                )
            }
        })
    }
}

/// Runs `rank`: prints the ranking to stdout.
pub async fn run(args: RankArgs) -> anyhow::Result<()> {
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
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
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

    #[tokio::test]
    async fn table_lists_every_zone_and_rank() {
        let args = RankArgs {
            source: SourceKind::Snapshot,
            region: None,
            output: Output::Table,
            snapshot: concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/data/aws-price-snapshot.json"
            )
            .into(),
            zones: vec![],
            interruption_bands: None,
            spot_page_size: 1000,
            top: 2,
        };
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
