//! moto's Auto Scaling made realistic (`tests/tools/moto_server.py` switch 9) on its own:
//! groups and launch templates created through the real SDK clients against a private
//! moto per test (the ICE switch is per process). No cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_autoscaling::error::ProvideErrorMetadata;
use aws_sdk_autoscaling::types::{Activity, ScalingActivityStatusCode};
use spotkube_rig::autoscaling::{self, GroupSpec, LaunchTemplate, group, instance_ids};
use spotkube_rig::aws::Moto;
use spotkube_rig::wait_for;

const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

fn ice_reason(instance_type: &str, zone: &str) -> String {
    format!(
        "We currently do not have sufficient {instance_type} capacity in the Availability Zone \
         you requested ({zone}). Our system will be working on provisioning additional capacity."
    )
}

const SPOT_ICE_REASON: &str = "Could not launch Spot Instances. InsufficientInstanceCapacity - \
     There is no Spot capacity available that matches your request.";

/// A MixedInstancesPolicy group over `types` with this distribution
/// (OnDemandBaseCapacity, OnDemandPercentageAboveBaseCapacity), price-capacity-optimized.
fn mixed(name: &str, template: &str, types: &[&str], base: i32, percent: i32) -> GroupSpec {
    GroupSpec::new(name, template)
        .mixed(types, base, percent)
        .spot_allocation_strategy("price-capacity-optimized")
}

/// What EC2 (not Auto Scaling) says about one instance.
#[derive(Debug)]
struct Ec2Instance {
    instance_type: String,
    zone: String,
    lifecycle: Option<String>,
    state: String,
    tags: BTreeMap<String, String>,
}

async fn ec2_instances(
    moto: &Moto,
    ids: &[String],
) -> anyhow::Result<BTreeMap<String, Ec2Instance>> {
    Ok(autoscaling::ec2_instances(moto, ids)
        .await?
        .iter()
        .map(|i| {
            (
                i.instance_id().unwrap_or_default().to_owned(),
                Ec2Instance {
                    instance_type: i
                        .instance_type()
                        .map(|t| t.as_str().to_owned())
                        .unwrap_or_default(),
                    zone: i
                        .placement()
                        .and_then(|p| p.availability_zone())
                        .unwrap_or_default()
                        .to_owned(),
                    lifecycle: i.instance_lifecycle().map(|l| l.as_str().to_owned()),
                    state: i
                        .state()
                        .and_then(|s| s.name())
                        .map(|n| n.as_str().to_owned())
                        .unwrap_or_default(),
                    tags: i
                        .tags()
                        .iter()
                        .map(|t| {
                            (
                                t.key().unwrap_or_default().to_owned(),
                                t.value().unwrap_or_default().to_owned(),
                            )
                        })
                        .collect(),
                },
            )
        })
        .collect())
}

/// The group's current instances, as EC2 describes them.
async fn group_instances(moto: &Moto, name: &str) -> anyhow::Result<BTreeMap<String, Ec2Instance>> {
    let ids = instance_ids(&group(moto, name).await?);
    ec2_instances(moto, &ids).await
}

/// Running EC2 instances tagged with the group's name (what EC2 launched for it).
async fn running_in_group(moto: &Moto, name: &str) -> anyhow::Result<Vec<String>> {
    let out = moto
        .ec2()
        .await
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:aws:autoscaling:groupName")
                .values(name)
                .build(),
        )
        .send()
        .await?;
    Ok(out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str()) == Some("running"))
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect())
}

/// Newest first.
async fn activities(moto: &Moto, name: &str) -> anyhow::Result<Vec<Activity>> {
    Ok(moto
        .autoscaling()
        .await
        .describe_scaling_activities()
        .auto_scaling_group_name(name)
        .send()
        .await?
        .activities()
        .to_vec())
}

fn zone_counts(instances: &BTreeMap<String, Ec2Instance>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in instances.values() {
        *counts.entry(i.zone.clone()).or_insert(0) += 1;
    }
    counts
}

async fn set_desired(moto: &Moto, name: &str, desired: i32) -> anyhow::Result<()> {
    moto.autoscaling()
        .await
        .set_desired_capacity()
        .auto_scaling_group_name(name)
        .desired_capacity(desired)
        .honor_cooldown(false)
        .send()
        .await?;
    Ok(())
}

/// Waits until the group has `count` InService instances.
async fn wait_in_service(moto: &Moto, name: &str, count: usize) -> anyhow::Result<Vec<String>> {
    Ok(wait_for(
        &format!("{count} instances in {name}"),
        Duration::from_secs(30),
        || async {
            let g = group(moto, name).await?;
            let ids = instance_ids(&g);
            Ok((ids.len() == count).then_some(ids))
        },
    )
    .await?)
}

#[tokio::test]
async fn spot_group_launches_spot_instances_spread_over_its_zones() -> anyhow::Result<()> {
    let moto = Moto::start().await?;
    LaunchTemplate::new("workers-lt", "m7g.large")
        .create(&moto)
        .await?;
    mixed(
        "spot-workers",
        "workers-lt",
        &["c7g.large", "m7g.large"],
        0,
        0,
    )
    .zones(&ZONES)
    .size(0, 9, 3)
    .tag("spotkube.io/capacity", "spot")
    .create(&moto)
    .await?;
    let ids = instance_ids(&group(&moto, "spot-workers").await?);
    assert_eq!(ids.len(), 3, "launched at creation");
    let instances = ec2_instances(&moto, &ids).await?;
    for (id, i) in &instances {
        assert_eq!(i.lifecycle.as_deref(), Some("spot"), "{id}: {i:?}");
        assert_eq!(i.instance_type, "c7g.large", "first override: {i:?}");
        assert_eq!(i.tags["aws:autoscaling:groupName"], "spot-workers");
        assert_eq!(i.tags["spotkube.io/capacity"], "spot", "propagated tag");
    }
    assert_eq!(
        zone_counts(&instances),
        ZONES.iter().map(|z| (z.to_string(), 1)).collect(),
        "one per zone"
    );

    set_desired(&moto, "spot-workers", 7).await?;
    let ids = instance_ids(&group(&moto, "spot-workers").await?);
    let instances = ec2_instances(&moto, &ids).await?;
    assert_eq!(instances.len(), 7);
    assert!(
        instances
            .values()
            .all(|i| i.lifecycle.as_deref() == Some("spot"))
    );
    let counts = zone_counts(&instances);
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|&n| n == 2 || n == 3),
        "balanced: {counts:?}"
    );

    let launches: Vec<Activity> = activities(&moto, "spot-workers")
        .await?
        .into_iter()
        .filter(|a| a.status_code() == Some(&ScalingActivityStatusCode::Successful))
        .collect();
    for id in &ids {
        assert!(
            launches
                .iter()
                .any(|a| a.description() == Some(&format!("Launching a new EC2 instance: {id}"))),
            "no launch activity for {id}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn capacity_type_follows_the_group_definition_not_its_tags() -> anyhow::Result<()> {
    let moto = Moto::start().await?;
    LaunchTemplate::new("plain-lt", "m7g.large")
        .create(&moto)
        .await?;
    LaunchTemplate::new("spot-lt", "m7g.large")
        .spot_market()
        .create(&moto)
        .await?;

    // Tagged spot, but nothing in the group asks EC2 for spot: on-demand, as in AWS.
    GroupSpec::new("tag-only", "plain-lt")
        .zones(&ZONES[..2])
        .size(0, 4, 2)
        .tag("spotkube.io/capacity", "spot")
        .create(&moto)
        .await?;
    let instances = group_instances(&moto, "tag-only").await?;
    assert_eq!(instances.len(), 2);
    assert!(
        instances.values().all(|i| i.lifecycle.is_none()),
        "{instances:?}"
    );

    // The launch template's market options make every instance spot.
    GroupSpec::new("template-spot", "spot-lt")
        .zones(&ZONES[..2])
        .size(0, 4, 2)
        .create(&moto)
        .await?;
    let instances = group_instances(&moto, "template-spot").await?;
    assert!(
        instances
            .values()
            .all(|i| i.lifecycle.as_deref() == Some("spot")),
        "{instances:?}"
    );

    // Base 1 on-demand, then half of the rest rounded up in favour of on-demand: of 3,
    // 2 on-demand and 1 spot.
    mixed("mixed", "plain-lt", &["m7g.large"], 1, 50)
        .zones(&ZONES)
        .size(0, 6, 3)
        .create(&moto)
        .await?;
    let instances = group_instances(&moto, "mixed").await?;
    let spot = instances
        .values()
        .filter(|i| i.lifecycle.as_deref() == Some("spot"))
        .count();
    assert_eq!((instances.len(), spot), (3, 1), "{instances:?}");
    Ok(())
}

#[tokio::test]
async fn ice_fails_the_launch_activity_until_the_switch_is_cleared() -> anyhow::Result<()> {
    let moto = Moto::start().await?;
    LaunchTemplate::new("od-lt", "m7g.large")
        .create(&moto)
        .await?;
    GroupSpec::new("on-demand", "od-lt")
        .zones(&ZONES[..1])
        .size(0, 4, 1)
        .create(&moto)
        .await?;
    let first = instance_ids(&group(&moto, "on-demand").await?);
    assert_eq!(first.len(), 1);

    moto.set_insufficient_capacity(&["m7g.large"]).await?;
    set_desired(&moto, "on-demand", 2).await?;
    let g = group(&moto, "on-demand").await?;
    assert_eq!(g.desired_capacity(), Some(2), "desired stays as requested");
    assert_eq!(instance_ids(&g), first, "nothing launched");
    assert_eq!(running_in_group(&moto, "on-demand").await?, first);
    let newest = activities(&moto, "on-demand").await?;
    let failed = newest.first().expect("an activity");
    let reason = ice_reason("m7g.large", "us-east-1a");
    assert_eq!(
        failed.status_code(),
        Some(&ScalingActivityStatusCode::Failed)
    );
    assert_eq!(
        failed.description(),
        Some(
            format!("Launching a new EC2 instance. Status Reason: {reason} Launching EC2 instance failed.")
                .as_str()
        )
    );
    assert_eq!(
        failed.status_message(),
        Some(format!("{reason} Launching EC2 instance failed.").as_str())
    );
    assert_eq!(failed.auto_scaling_group_name(), Some("on-demand"));

    moto.clear_insufficient_capacity().await?;
    let ids = wait_in_service(&moto, "on-demand", 2).await?;
    let new = ids
        .iter()
        .find(|id| !first.contains(id))
        .expect("a new instance");
    assert_eq!(running_in_group(&moto, "on-demand").await?.len(), 2);
    let latest = activities(&moto, "on-demand").await?;
    assert_eq!(
        latest[0].status_code(),
        Some(&ScalingActivityStatusCode::Successful)
    );
    assert_eq!(
        latest[0].description(),
        Some(format!("Launching a new EC2 instance: {new}").as_str())
    );
    Ok(())
}

#[tokio::test]
async fn spot_ice_falls_back_to_other_offerings_and_fails_with_the_spot_message()
-> anyhow::Result<()> {
    let moto = Moto::start().await?;
    LaunchTemplate::new("spot-lt", "m7g.large")
        .create(&moto)
        .await?;
    mixed("spot", "spot-lt", &["c7g.large", "m7g.large"], 0, 0)
        .zones(&ZONES[..2])
        .size(0, 6, 0)
        .create(&moto)
        .await?;

    // The first type is out everywhere, the second in one zone: launched in the other.
    moto.set_insufficient_capacity(&["c7g.large", "m7g.large@us-east-1a"])
        .await?;
    set_desired(&moto, "spot", 1).await?;
    let instances = group_instances(&moto, "spot").await?;
    let only = instances.values().next().expect("one instance");
    assert_eq!(
        (only.instance_type.as_str(), only.zone.as_str()),
        ("m7g.large", "us-east-1b")
    );
    assert_eq!(only.lifecycle.as_deref(), Some("spot"));
    // us-east-1a came first (no instances yet) and had nothing: AWS reports that attempt.
    let acts = activities(&moto, "spot").await?;
    assert_eq!(
        acts.iter()
            .map(|a| a.status_code().map(|s| s.as_str().to_owned()))
            .collect::<Vec<_>>(),
        [Some("Successful".into()), Some("Failed".into())]
    );
    let details: serde_json::Value = serde_json::from_str(acts[1].details().unwrap_or("{}"))?;
    assert_eq!(details["Availability Zone"], "us-east-1a", "{details}");

    // Nothing left anywhere: the spot message, and no instance.
    moto.set_insufficient_capacity(&["m7g.large"]).await?;
    set_desired(&moto, "spot", 2).await?;
    let g = group(&moto, "spot").await?;
    assert_eq!((g.desired_capacity(), instance_ids(&g).len()), (Some(2), 1));
    let failed = &activities(&moto, "spot").await?[0];
    assert_eq!(
        failed.status_code(),
        Some(&ScalingActivityStatusCode::Failed)
    );
    assert_eq!(
        failed.status_message(),
        Some(format!("{SPOT_ICE_REASON} Launching EC2 instance failed.").as_str())
    );
    assert_eq!(running_in_group(&moto, "spot").await?.len(), 1);

    moto.clear_insufficient_capacity().await?;
    let ids = wait_in_service(&moto, "spot", 2).await?;
    let instances = ec2_instances(&moto, &ids).await?;
    assert_eq!(
        zone_counts(&instances),
        BTreeMap::from([("us-east-1a".into(), 1), ("us-east-1b".into(), 1)]),
        "the retry went to the emptier zone"
    );
    Ok(())
}

#[tokio::test]
async fn max_size_is_refused_and_terminate_with_decrement_keeps_the_new_size() -> anyhow::Result<()>
{
    let moto = Moto::start().await?;
    LaunchTemplate::new("lt", "m7g.large").create(&moto).await?;
    mixed("workers", "lt", &["m7g.large"], 0, 0)
        .zones(&ZONES)
        .size(1, 3, 3)
        .create(&moto)
        .await?;
    let asg = moto.autoscaling().await;

    let refused = asg
        .set_desired_capacity()
        .auto_scaling_group_name("workers")
        .desired_capacity(4)
        .honor_cooldown(false)
        .send()
        .await
        .expect_err("above MaxSize");
    let refused = refused.into_service_error();
    assert_eq!(refused.code(), Some("ValidationError"));
    assert_eq!(
        refused.message(),
        Some("New SetDesiredCapacity value 4 is above max value 3 for the AutoScalingGroup.")
    );
    let g = group(&moto, "workers").await?;
    assert_eq!((g.desired_capacity(), g.instances().len()), (Some(3), 3));

    // With the decrement the group shrinks to 2 and stays there.
    let ids = instance_ids(&g);
    let out = asg
        .terminate_instance_in_auto_scaling_group()
        .instance_id(&ids[0])
        .should_decrement_desired_capacity(true)
        .send()
        .await?;
    assert_eq!(
        out.activity().and_then(|a| a.description()),
        Some(format!("Terminating EC2 instance: {}", ids[0]).as_str())
    );
    let gone = ec2_instances(&moto, &ids[..1]).await?;
    assert_eq!(gone[&ids[0]].state, "terminated");
    // Longer than the stand-in's retry period: a replacement would have come by now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let g = group(&moto, "workers").await?;
    assert_eq!(g.desired_capacity(), Some(2));
    let remaining = instance_ids(&g);
    assert_eq!(remaining, ids[1..].to_vec(), "no replacement launched");
    assert_eq!(running_in_group(&moto, "workers").await?.len(), 2);

    // Without it, AWS replaces the instance and the size stays.
    asg.terminate_instance_in_auto_scaling_group()
        .instance_id(&remaining[0])
        .should_decrement_desired_capacity(false)
        .send()
        .await?;
    let ids = wait_in_service(&moto, "workers", 2).await?;
    assert!(!ids.contains(&remaining[0]), "replaced: {ids:?}");
    assert_eq!(group(&moto, "workers").await?.desired_capacity(), Some(2));

    // Below MinSize with the decrement: refused, as AWS does.
    asg.terminate_instance_in_auto_scaling_group()
        .instance_id(&ids[0])
        .should_decrement_desired_capacity(true)
        .send()
        .await?;
    let refused = asg
        .terminate_instance_in_auto_scaling_group()
        .instance_id(&ids[1])
        .should_decrement_desired_capacity(true)
        .send()
        .await
        .expect_err("below MinSize")
        .into_service_error();
    assert_eq!(refused.code(), Some("ValidationError"));
    assert!(
        refused
            .message()
            .is_some_and(|m| m.starts_with("Currently, desiredCapacity is 1 and minSize is 1.")),
        "{refused:?}"
    );
    Ok(())
}
