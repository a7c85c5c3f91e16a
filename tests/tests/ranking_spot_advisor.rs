//! Interruption bands of `spotkube-controller rank --source aws` come from the EC2 Spot
//! Instance Advisor feed, which the rig's moto serves on loopback
//! (`Moto::spot_advisor_url`, in every program's env); when the feed cannot be had, from
//! the price snapshot built into the binary, and the ranking's source says so.

use std::path::PathBuf;

use serde_json::{Value, json};
use spotkube_rig::aws::{Moto, fixtures_dir};
use spotkube_rig::nodes::{SNAPSHOT_TOP6, ranked_types};

#[tokio::test]
async fn aws_ranking_takes_interruption_bands_from_the_spot_advisor_feed() -> anyhow::Result<()> {
    let moto = Moto::start().await?;
    let ranking = moto.rank(&[], &[]).await?;
    assert_eq!(
        ranking.source, "aws",
        "bands from the feed: no fallback note"
    );
    assert_eq!(moto.calls("spot-advisor-data.json").await?, 1);
    assert_eq!(ranked_types(&ranking, "us-east-1a"), SNAPSHOT_TOP6);
    assert_eq!(ranking.zones["us-east-1a"][0].interruption_band, Some(0));

    // The feed alone changes: c7g.4xlarge is now interrupted most (band 4, above the
    // default maximum 2) and c8g.4xlarge (band 4 in the sample and the snapshot) seldom.
    let path = fixtures_dir().join("spot-advisor-sample.json");
    let mut feed: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let linux = &mut feed["spot_advisor"]["us-east-1"]["Linux"];
    linux["c7g.4xlarge"]["r"] = json!(4);
    linux["c8g.4xlarge"]["r"] = json!(1);
    moto.serve_spot_advisor(&feed).await?;

    let reranked = moto.rank(&[], &[]).await?;
    assert_eq!(reranked.source, "aws");
    assert_eq!(moto.calls("spot-advisor-data.json").await?, 2);
    assert_eq!(
        ranked_types(&reranked, "us-east-1a"),
        [
            "c7g.2xlarge",
            "c8g.4xlarge",
            "c8g.xlarge",
            "c7g.xlarge",
            "m7g.2xlarge",
            "m7g.large"
        ]
    );
    assert_eq!(reranked.zones["us-east-1a"][1].interruption_band, Some(1));
    for (zone, entries) in &reranked.zones {
        assert!(
            entries.iter().all(|e| e.instance_type != "c7g.4xlarge"),
            "{zone}: {entries:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn without_the_feed_aws_ranking_takes_the_snapshot_bands_and_says_so() -> anyhow::Result<()> {
    let moto = Moto::start().await?;
    moto.spot_advisor_outage().await?;
    let ranking = moto.rank(&[], &[]).await?;
    assert_eq!(moto.calls("spot-advisor-data.json").await?, 1);
    let snapshot = match std::env::var_os("SPOTKUBE_PRICE_SNAPSHOT") {
        None => "the embedded price snapshot".to_string(),
        Some(path) => format!("the price snapshot {}", PathBuf::from(path).display()),
    };
    assert_eq!(
        ranking.source,
        format!(
            "aws (interruption bands from {snapshot}: the Spot Advisor feed could not be fetched)"
        )
    );
    // The snapshot's bands are the sample's: the same ranking, bands and all.
    assert_eq!(ranked_types(&ranking, "us-east-1a"), SNAPSHOT_TOP6);
    assert_eq!(ranking.zones["us-east-1a"][0].interruption_band, Some(0));
    assert_eq!(ranking.zones["us-east-1a"][5].interruption_band, Some(2));

    // The feed is back: the next ranking takes its bands again.
    moto.reset().await?;
    assert_eq!(moto.rank(&[], &[]).await?.source, "aws");
    Ok(())
}
