//! The controller's capacity building blocks (`spotkube_controller::capacity`) against a
//! private moto with realistic Auto Scaling (`tests/tools/moto_server.py` switch 9):
//! pool discovery from tags, one more instance (never above MaxSize), the verdict of
//! the group's scaling activities with the ICE switch on and off, and
//! terminate-with-decrement. No cluster.

use std::time::Duration;

use jiff::Timestamp;
use spotkube_controller::capacity::CapacityType;
use spotkube_controller::capacity::activity::{self, CLOCK_SLACK, Outcome};
use spotkube_controller::capacity::asg::{self, Request, Termination};
use spotkube_controller::capacity::ice::{IceCache, Offering, Reason};
use spotkube_controller::capacity::pools::{self, DiscoveryConfig, Group, Pools};
use spotkube_rig::autoscaling::{self, GroupSpec, LaunchTemplate};
use spotkube_rig::aws::Moto;
use spotkube_rig::wait_for;

const ZONES: [&str; 2] = ["us-east-1a", "us-east-1b"];
const TYPE: &str = "m7g.large";

/// A group over [`ZONES`] from `workers-lt`: all spot through a MixedInstancesPolicy when
/// `spot`, else plain on-demand.
fn group_spec(name: &str, spot: bool, max: i32, desired: i32) -> GroupSpec {
    let spec = GroupSpec::new(name, "workers-lt")
        .zones(&ZONES)
        .size(0, max, desired);
    if spot {
        spec.mixed(&[TYPE], 0, 0)
    } else {
        spec
    }
}

/// The pools of the cluster `prod` as `(pool, spot group, on-demand group)`.
fn shape(pools: &Pools) -> Vec<(String, Option<String>, Option<String>)> {
    pools
        .pools
        .values()
        .map(|p| {
            (
                p.name.clone(),
                p.spot.as_ref().map(|g| g.name.clone()),
                p.on_demand.as_ref().map(|g| g.name.clone()),
            )
        })
        .collect()
}

async fn ec2_tags(moto: &Moto, instance_id: &str) -> anyhow::Result<Vec<aws_sdk_ec2::types::Tag>> {
    Ok(autoscaling::ec2_instances(moto, &[instance_id.to_owned()])
        .await?
        .iter()
        .flat_map(|i| i.tags().to_vec())
        .collect())
}

async fn group(moto: &Moto, name: &str) -> anyhow::Result<Group> {
    Ok(pools::describe_group(&moto.autoscaling().await, name).await?)
}

/// A `since` no earlier activity can fall into: past the classifier's clock slack.
async fn fresh_since() -> Timestamp {
    tokio::time::sleep(CLOCK_SLACK + Duration::from_millis(1100)).await;
    Timestamp::now()
}

#[tokio::test]
async fn pools_are_discovered_by_tags_and_the_cluster_tag_is_honoured() -> anyhow::Result<()> {
    let moto = Moto::start().await?;
    LaunchTemplate::new("workers-lt", TYPE)
        .create(&moto)
        .await?;
    let prod = ("kubernetes.io/cluster/prod", "owned");
    for (name, spot, tags) in [
        (
            "web-spot",
            true,
            vec![
                ("spotkube.io/pool", "web"),
                ("spotkube.io/capacity", "spot"),
                prod,
            ],
        ),
        (
            "web-od",
            false,
            vec![
                ("spotkube.io/pool", "web"),
                ("spotkube.io/capacity", "on-demand"),
                ("kubernetes.io/cluster/prod", "shared"),
            ],
        ),
        (
            "batch-spot",
            true,
            vec![
                ("spotkube.io/pool", "batch"),
                ("spotkube.io/capacity", "spot"),
                prod,
            ],
        ),
        ("untagged", true, vec![("team", "data")]),
        (
            "a-staging-spot",
            true,
            vec![
                ("spotkube.io/pool", "web"),
                ("spotkube.io/capacity", "spot"),
                ("kubernetes.io/cluster/staging", "owned"),
            ],
        ),
    ] {
        // Tags propagate to the instances.
        group_spec(name, spot, 4, 1)
            .tags(&tags)
            .create(&moto)
            .await?;
    }
    let client = moto.autoscaling().await;

    // One group per page: discovery reads every page.
    let config = DiscoveryConfig {
        cluster_name: Some("prod".into()),
        page_size: Some(1),
    };
    let found = pools::discover(&client, &config).await?;
    assert_eq!(
        shape(&found),
        [
            ("batch".into(), Some("batch-spot".into()), None),
            ("web".into(), Some("web-spot".into()), Some("web-od".into())),
        ]
    );
    assert!(found.skipped.is_empty(), "{:?}", found.skipped);
    let web_spot = found.pools["web"].spot.as_ref().unwrap();
    assert_eq!(
        (
            web_spot.max,
            web_spot.desired,
            web_spot.in_service,
            web_spot.instances.len()
        ),
        (4, 1, 1, 1)
    );
    assert_eq!(web_spot.zones, ZONES);

    // An instance's pool, by membership and by its EC2 tag alone.
    let instance = web_spot.instances[0].clone();
    let tags = ec2_tags(&moto, &instance).await?;
    assert_eq!(pools::group_name_of(&tags), Some("web-spot"));
    let by_tag = Pools {
        pools: found
            .pools
            .iter()
            .map(|(name, pool)| {
                let mut pool = pool.clone();
                for g in [&mut pool.spot, &mut pool.on_demand].into_iter().flatten() {
                    g.instances.clear();
                }
                (name.clone(), pool)
            })
            .collect(),
        skipped: vec![],
    };
    for pools in [&found, &by_tag] {
        let m = pools.pool_of_instance(&instance, &tags).expect("a pool");
        assert_eq!(
            (m.pool.name.as_str(), m.group.name.as_str(), m.capacity),
            ("web", "web-spot", CapacityType::Spot)
        );
        assert_eq!(
            m.pool.fallback_for(m.capacity).map(|g| g.name.as_str()),
            Some("web-od")
        );
    }
    // An instance of an untagged group belongs to no pool.
    let untagged = group(&moto, "untagged").await?.instances[0].clone();
    let tags = ec2_tags(&moto, &untagged).await?;
    assert_eq!(pools::group_name_of(&tags), Some("untagged"));
    assert_eq!(found.pool_of_instance(&untagged, &tags), None);

    // Without the cluster name, the staging group competes for web's spot side (and wins
    // by name order): the cluster tag is what kept it out.
    let any_cluster = pools::discover(&client, &DiscoveryConfig::default()).await?;
    assert_eq!(
        any_cluster.pools["web"]
            .spot
            .as_ref()
            .map(|g| g.name.as_str()),
        Some("a-staging-spot")
    );
    assert_eq!(
        any_cluster
            .skipped
            .iter()
            .map(|s| s.group.as_str())
            .collect::<Vec<_>>(),
        ["web-spot"]
    );
    Ok(())
}

#[tokio::test]
async fn one_more_instance_never_above_max_then_ice_then_terminate_with_decrement()
-> anyhow::Result<()> {
    let moto = Moto::start().await?;
    LaunchTemplate::new("workers-lt", TYPE)
        .create(&moto)
        .await?;
    group_spec("web-spot", true, 4, 1).create(&moto).await?;
    group_spec("full", true, 1, 1).create(&moto).await?;
    let client = moto.autoscaling().await;

    // +1: desired rises and an instance launches in the group.
    let before = group(&moto, "web-spot").await?;
    let since = fresh_since().await;
    assert_eq!(
        asg::request_one(&client, "web-spot").await?,
        Request::Requested { from: 1, to: 2 }
    );
    let launched = wait_for("a launch in web-spot", Duration::from_secs(30), || async {
        match activity::outcome(&client, "web-spot", since).await? {
            Outcome::Launched(ids) => Ok(Some(ids)),
            _ => Ok(None),
        }
    })
    .await?;
    let after = group(&moto, "web-spot").await?;
    assert_eq!((after.desired, after.in_service), (2, 2));
    let new: Vec<&String> = after
        .instances
        .iter()
        .filter(|i| !before.instances.contains(i))
        .collect();
    assert_eq!(launched.iter().collect::<Vec<_>>(), new);

    // At MaxSize: Capped, and no SetDesiredCapacity call at all.
    let calls = moto.calls("SetDesiredCapacity").await?;
    assert_eq!(
        asg::request_one(&client, "full").await?,
        Request::Capped { max: 1 }
    );
    assert_eq!(moto.calls("SetDesiredCapacity").await?, calls);
    assert_eq!(group(&moto, "full").await?.desired, 1);

    // ICE on for the type everywhere: the verdict is a capacity error; marking it in the
    // cache is what the wiring will do with it.
    moto.set_insufficient_capacity(&[TYPE]).await?;
    let since = fresh_since().await;
    assert_eq!(
        asg::request_one(&client, "web-spot").await?,
        Request::Requested { from: 2, to: 3 }
    );
    let (message, zone) = wait_for("a capacity error", Duration::from_secs(30), || async {
        match activity::outcome(&client, "web-spot", since).await? {
            Outcome::CapacityError { message, zone, .. } => Ok(Some((message, zone))),
            Outcome::Launched(ids) => anyhow::bail!("launched {ids:?} under ICE"),
            Outcome::Pending => Ok(None),
        }
    })
    .await?;
    assert!(
        message.contains("InsufficientInstanceCapacity"),
        "{message}"
    );
    let zone = zone.expect("the failed activity names its zone");
    assert!(ZONES.contains(&zone.as_str()), "{zone}");
    let ice = IceCache::default();
    let offering = Offering::new(TYPE, &zone, CapacityType::Spot);
    ice.mark(offering.clone(), Reason::CapacityError);
    assert!(ice.is_unavailable(&offering));
    let short = group(&moto, "web-spot").await?;
    assert_eq!((short.desired, short.in_service), (3, 2));

    // ICE off: the group's retry launches it, and the same request now reads Launched.
    moto.clear_insufficient_capacity().await?;
    let launched = wait_for("the launch after ICE", Duration::from_secs(30), || async {
        match activity::outcome(&client, "web-spot", since).await? {
            Outcome::Launched(ids) => Ok(Some(ids)),
            _ => Ok(None),
        }
    })
    .await?;
    let whole = group(&moto, "web-spot").await?;
    assert_eq!((whole.desired, whole.in_service), (3, 3));
    assert_eq!(launched.len(), 1, "{launched:?}");
    assert!(
        whole.instances.contains(&launched[0]) && !short.instances.contains(&launched[0]),
        "{launched:?} is the new member of {whole:?}"
    );

    // Terminate with decrement: desired drops to 2 and nothing replaces the instance.
    let victim = launched[0].clone();
    let Termination::Terminating { .. } = asg::terminate_with_decrement(&client, &victim).await?
    else {
        panic!("{victim} was in the group");
    };
    assert_eq!(group(&moto, "web-spot").await?.desired, 2);
    // Longer than the stand-in's 1 s retry period: a replacement would have come by now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let shrunk = group(&moto, "web-spot").await?;
    assert_eq!((shrunk.desired, shrunk.instances.len()), (2, 2));
    assert!(!shrunk.instances.contains(&victim));
    // Again (a resumed plan): the instance is in no group any more, not an error.
    assert_eq!(
        asg::terminate_with_decrement(&client, &victim).await?,
        Termination::NotInGroup
    );
    assert_eq!(group(&moto, "web-spot").await?.desired, 2);
    Ok(())
}
