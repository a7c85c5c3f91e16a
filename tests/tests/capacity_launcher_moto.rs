//! The launch-template launcher (`spotkube_controller::capacity::launcher`) against a
//! private moto: pools discovered from launch-template tags, the zone's ranking walked
//! with the ICE switch on (`tests/tools/moto_server.py` switch 3: RunInstances of a
//! listed type/AZ fails with `InsufficientInstanceCapacity`), the failed offerings marked,
//! the on-demand fallback, and the pool's limit. No cluster.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{
    Instance, InstanceLifecycleType, InstanceType, RequestLaunchTemplateData, ResourceType, Tag,
    TagSpecification,
};
use spotkube_controller::capacity::CapacityType;
use spotkube_controller::capacity::ice::{IceCache, Offering, Reason};
use spotkube_controller::capacity::launcher::{
    self, LAUNCHED_BY, LAUNCHED_BY_TAG, Launch, LaunchPool, LaunchRequest, POOL_TAG,
};
use spotkube_rig::autoscaling;
use spotkube_rig::aws::{Moto, TEST_AMI};
use spotkube_shared::ranking::{RankedType, Ranking, SCHEMA_VERSION};

const ZONE: &str = "us-east-1a";
/// The ranking of [`ZONE`], best first.
const RANKED: [&str; 3] = ["c7g.large", "m7g.large", "r7g.large"];

fn ranking() -> Ranking {
    let entries = RANKED
        .iter()
        .enumerate()
        .map(|(i, t)| RankedType {
            rank: i as u32 + 1,
            instance_type: t.to_string(),
            spot_usd_per_hour: 0.03 + i as f64 * 0.01,
            on_demand_usd_per_hour: 0.1,
            savings_percent: 60.0,
            vcpu: 2,
            memory_gib: 8.0,
            interruption_band: Some(0),
            score: 0.015,
        })
        .collect();
    Ranking {
        schema_version: SCHEMA_VERSION.into(),
        computed_at: jiff::Timestamp::now(),
        source: "test".into(),
        region: Some("us-east-1".into()),
        criteria: None,
        zones: BTreeMap::from([(ZONE.to_string(), entries)]),
        unavailable: Vec::new(),
    }
}

/// A launch template of the test AMI, tagged `spotkube.io/pool=<pool>` when given.
async fn template(moto: &Moto, name: &str, pool: Option<&str>) -> anyhow::Result<String> {
    let mut request = moto
        .ec2()
        .await
        .create_launch_template()
        .launch_template_name(name)
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id(TEST_AMI)
                .instance_type(InstanceType::from("m7g.large"))
                .build(),
        );
    if let Some(pool) = pool {
        request = request.tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::LaunchTemplate)
                .tags(Tag::builder().key(POOL_TAG).value(pool).build())
                .build(),
        );
    }
    let out = request.send().await?;
    Ok(out
        .launch_template()
        .and_then(|t| t.launch_template_id())
        .expect("a template id")
        .to_string())
}

async fn instance(moto: &Moto, id: &str) -> anyhow::Result<Instance> {
    let mut found = autoscaling::ec2_instances(moto, &[id.to_owned()]).await?;
    anyhow::ensure!(found.len() == 1, "instance {id}: {found:?}");
    Ok(found.remove(0))
}

fn tags(instance: &Instance) -> BTreeMap<String, String> {
    instance
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
        .collect()
}

fn spot(instance_type: &str) -> Offering {
    Offering::new(instance_type, ZONE, CapacityType::Spot)
}

/// The web pool of a fresh moto (an untagged template beside it is no pool).
async fn web_pool(moto: &Moto) -> anyhow::Result<LaunchPool> {
    let id = template(moto, "web-lt", Some("web")).await?;
    template(moto, "other-lt", None).await?;
    let pools = launcher::discover(&moto.ec2().await).await?;
    assert_eq!(pools, [LaunchPool::new("web", &id)]);
    Ok(pools[0].clone())
}

#[tokio::test]
async fn under_ice_the_third_ranked_type_launches_and_the_pool_limit_holds() -> anyhow::Result<()> {
    let moto = Moto::start().await?;
    let pool = web_pool(&moto).await?;
    let ec2 = moto.ec2().await;
    moto.set_insufficient_capacity(&["c7g.large@us-east-1a", "m7g.large@us-east-1a"])
        .await?;
    let ice = IceCache::default();
    let request = LaunchRequest {
        pool: &pool,
        zone: ZONE,
        max_instances: 2,
        replaces: None,
    };

    let launched = launcher::launch_one(&ec2, &ice, &ranking(), request).await?;
    let Launch::Launched {
        instance_id,
        instance_type,
        capacity,
        ..
    } = launched
    else {
        panic!("expected a launch: {launched:?}");
    };
    assert_eq!(
        (instance_type.as_str(), capacity),
        ("r7g.large", CapacityType::Spot)
    );
    assert_eq!(moto.calls("RunInstances").await?, 3, "one call per type");
    let marked: Vec<_> = ice
        .marked()
        .into_iter()
        .map(|m| (m.offering, m.reason))
        .collect();
    assert_eq!(
        marked,
        [
            (spot("c7g.large"), Reason::CapacityError),
            (spot("m7g.large"), Reason::CapacityError),
        ]
    );

    let launched = instance(&moto, &instance_id).await?;
    assert_eq!(
        launched.instance_type().map(|t| t.as_str()),
        Some("r7g.large")
    );
    assert_eq!(
        launched.instance_lifecycle(),
        Some(&InstanceLifecycleType::Spot)
    );
    assert_eq!(
        launched.placement().and_then(|p| p.availability_zone()),
        Some(ZONE)
    );
    let tags = tags(&launched);
    assert_eq!(tags.get(POOL_TAG).map(String::as_str), Some("web"));
    assert_eq!(
        tags.get(LAUNCHED_BY_TAG).map(String::as_str),
        Some(LAUNCHED_BY)
    );
    assert_eq!(
        launcher::pool_of(&tags, std::slice::from_ref(&pool)),
        Some(&pool)
    );

    // The marked offerings are skipped, not asked again.
    let again = launcher::launch_one(&ec2, &ice, &ranking(), request).await?;
    assert!(
        matches!(&again, Launch::Launched { instance_type, .. } if instance_type == "r7g.large"),
        "{again:?}"
    );
    assert_eq!(moto.calls("RunInstances").await?, 4);

    // Two pending or running instances of the pool: at its limit, nothing launches.
    assert_eq!(launcher::count_instances(&ec2, "web").await?, 2);
    let capped = launcher::launch_one(&ec2, &ice, &ranking(), request).await?;
    assert_eq!(capped, Launch::Capped { running: 2, max: 2 });
    assert_eq!(moto.calls("RunInstances").await?, 4);
    Ok(())
}

#[tokio::test]
async fn without_spot_capacity_the_walk_goes_on_demand_and_reports_every_failure()
-> anyhow::Result<()> {
    let moto = Moto::start().await?;
    let pool = web_pool(&moto).await?;
    let ec2 = moto.ec2().await;
    let request = LaunchRequest {
        pool: &pool,
        zone: ZONE,
        max_instances: 5,
        replaces: None,
    };

    // The switch knows no market: every offering of the zone fails.
    let all: Vec<String> = RANKED.iter().map(|t| format!("{t}@{ZONE}")).collect();
    moto.set_insufficient_capacity(&all.iter().map(String::as_str).collect::<Vec<_>>())
        .await?;
    let ice = IceCache::default();
    let outcome = launcher::launch_one(&ec2, &ice, &ranking(), request).await?;
    let Launch::Exhausted { tried } = outcome else {
        panic!("expected exhaustion: {outcome:?}");
    };
    let tried: Vec<String> = tried
        .iter()
        .map(|(offering, code)| format!("{offering} {code}"))
        .collect();
    assert_eq!(
        tried,
        [
            "c7g.large@us-east-1a/spot InsufficientInstanceCapacity",
            "m7g.large@us-east-1a/spot InsufficientInstanceCapacity",
            "r7g.large@us-east-1a/spot InsufficientInstanceCapacity",
            "c7g.large@us-east-1a/on-demand InsufficientInstanceCapacity",
            "m7g.large@us-east-1a/on-demand InsufficientInstanceCapacity",
            "r7g.large@us-east-1a/on-demand InsufficientInstanceCapacity",
        ]
    );
    assert_eq!(ice.marked().len(), 6);
    // Everything marked: the next walk asks nothing.
    moto.clear_insufficient_capacity().await?;
    let calls = moto.calls("RunInstances").await?;
    assert_eq!(
        launcher::launch_one(&ec2, &ice, &ranking(), request).await?,
        Launch::Exhausted { tried: vec![] }
    );
    assert_eq!(moto.calls("RunInstances").await?, calls);

    // Spot marked (being reclaimed), on-demand free: the best type on-demand.
    let ice = IceCache::default();
    for t in RANKED {
        ice.mark(spot(t), Reason::SpotInterruption);
    }
    let outcome = launcher::launch_one(&ec2, &ice, &ranking(), request).await?;
    let Launch::Launched {
        instance_id,
        instance_type,
        capacity,
        ..
    } = outcome
    else {
        panic!("expected a launch: {outcome:?}");
    };
    assert_eq!(
        (instance_type.as_str(), capacity),
        ("c7g.large", CapacityType::OnDemand)
    );
    assert_eq!(
        instance(&moto, &instance_id).await?.instance_lifecycle(),
        None,
        "on-demand"
    );
    Ok(())
}
