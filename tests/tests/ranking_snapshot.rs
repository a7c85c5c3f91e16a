//! `spotkube-controller rank --source snapshot` needs nothing but the binary: the price
//! snapshot is built in (`--snapshot FILE` only overrides it).

use spotkube_shared::ranking::Ranking;

#[tokio::test]
async fn snapshot_ranking_needs_no_file() -> anyhow::Result<()> {
    let binary = spotkube_rig::tools::program_binary("spotkube-controller");
    // An empty working directory and no SPOTKUBE_PRICE_SNAPSHOT: no snapshot file to find.
    let empty = tempfile::tempdir()?;
    let output = tokio::process::Command::new(&binary)
        .args(["rank", "--source", "snapshot", "--output", "json"])
        .current_dir(empty.path())
        .env_remove("SPOTKUBE_PRICE_SNAPSHOT")
        .env_remove("SPOTKUBE_PRICE_SOURCE")
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ranking = Ranking::from_json(&String::from_utf8(output.stdout)?)?;
    assert_eq!(ranking.source, "snapshot");
    assert_eq!(
        ranking.zones.keys().collect::<Vec<_>>(),
        ["us-east-1a", "us-east-1b", "us-east-1c"]
    );
    let first = &ranking.zones["us-east-1a"][0];
    assert_eq!(
        (first.instance_type.as_str(), first.on_demand_usd_per_hour),
        ("c7g.4xlarge", 0.58)
    );
    assert_eq!(first.interruption_band, Some(0));
    Ok(())
}
