//! The price ranking from AWS-shaped sources: `spotkube-controller rank --source aws`
//! against moto (real DescribeInstanceTypes catalogue; the rig's wrapper seeds per-AZ
//! spot prices — snapshot × {a: 1.00, b: 1.03, c: 0.97}, rounded to 6 decimals — and
//! serves Pricing GetProducts from the snapshot).

use spotkube_rig::aws::Moto;
use spotkube_rig::nodes::{SNAPSHOT_TOP6, ranked_types};
use spotkube_shared::ranking::Ranking;

async fn rank_from_moto(moto: &Moto, extra: &[&str]) -> anyhow::Result<Ranking> {
    Ok(moto.rank(extra, &[]).await?)
}

#[tokio::test]
async fn aws_sources_rank_like_the_snapshot_and_a_cheaper_az_price_reorders_only_that_az()
-> anyhow::Result<()> {
    let moto = Moto::start().await?;
    let ranking = rank_from_moto(&moto, &[]).await?;
    // Seven-entry spot price pages: the same ranking through many NextTokens.
    assert_eq!(
        rank_from_moto(&moto, &["--spot-page-size", "7"])
            .await?
            .zones,
        ranking.zones
    );
    assert_eq!(ranking.source, "aws");
    assert_eq!(
        ranking.zones.keys().collect::<Vec<_>>(),
        ["us-east-1a", "us-east-1b", "us-east-1c"]
    );
    // us-east-1a carries the snapshot's prices unchanged; us-east-1c scales them by 0.97.
    assert_eq!(ranked_types(&ranking, "us-east-1a"), SNAPSHOT_TOP6);
    assert_eq!(ranked_types(&ranking, "us-east-1c"), SNAPSHOT_TOP6);
    // us-east-1b (×1.03): the same six; m7g.2xlarge and m7g.large tie exactly in the
    // snapshot, and rounding to 6 decimals makes m7g.large ($0.030257/2 vCPU) a hair
    // cheaper than m7g.2xlarge ($0.121029/8 vCPU).
    let mut b_expected = SNAPSHOT_TOP6.map(String::from).to_vec();
    b_expected.swap(4, 5);
    assert_eq!(ranked_types(&ranking, "us-east-1b"), b_expected);
    let first = &ranking.zones["us-east-1a"][0];
    assert_eq!(first.on_demand_usd_per_hour, 0.58);
    assert!((first.spot_usd_per_hour - 0.1682).abs() < 1e-9, "{first:?}");
    assert_eq!(first.interruption_band, Some(0));

    // A cheaper m7g.xlarge price in us-east-1b alone.
    moto.seed_spot_price("m7g.xlarge", "us-east-1b", 0.03)
        .await?;
    let reranked = rank_from_moto(&moto, &[]).await?;
    assert_eq!(reranked.zones["us-east-1b"][0].instance_type, "m7g.xlarge");
    assert_eq!(reranked.zones["us-east-1b"][0].spot_usd_per_hour, 0.03);
    assert_eq!(reranked.zones["us-east-1b"].len(), 6);
    assert_eq!(
        ranked_types(&reranked, "us-east-1b")[1..],
        b_expected[..5],
        "the rest shifts down by one"
    );
    assert_eq!(reranked.zones["us-east-1a"], ranking.zones["us-east-1a"]);
    assert_eq!(reranked.zones["us-east-1c"], ranking.zones["us-east-1c"]);
    Ok(())
}
