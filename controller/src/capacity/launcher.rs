//! The launch-template launcher (issue 11 item 5), for nodes outside any Auto Scaling
//! group: one replacement instance in a zone, launched with `RunInstances` from the
//! pool's launch template, walking the zone's ranking one type at a time (spot first,
//! then on-demand), skipping and marking offerings that have no capacity. The capacity
//! reconcile uses it for Nodes in no Auto Scaling group.
//!
//! A pool is a launch template tagged `spotkube.io/pool=<name>`; the instances spotkube
//! launches carry `spotkube.io/pool=<name>` and `spotkube.io/launched-by=spotkube`, and
//! an instance is in the pool by that tag or by the launch template it came from.

use std::collections::BTreeMap;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    Filter, InstanceMarketOptionsRequest, InstanceType, LaunchTemplateSpecification, MarketType,
    Placement, ResourceType, SpotMarketOptions, Tag, TagSpecification,
};
use spotkube_shared::ranking::Ranking;

use super::CapacityType;
use super::ice::{IceCache, Offering, Reason};
use crate::aws::send_retrying_throttling;
use crate::error::{Error, Result};

/// On a launch template: the pool it launches for. On an instance: the pool it is in.
pub const POOL_TAG: &str = "spotkube.io/pool";
/// On an instance spotkube launched, with value [`LAUNCHED_BY`].
pub const LAUNCHED_BY_TAG: &str = "spotkube.io/launched-by";
pub const LAUNCHED_BY: &str = "spotkube";
/// On an instance spotkube launched as a replacement: the instance it replaces, so a
/// leader that died between the launch and its record finds it instead of launching
/// another.
pub const REPLACES_TAG: &str = "spotkube.io/replaces";
/// On a launch template: the most pending + running instances its pool may have.
pub const MAX_INSTANCES_TAG: &str = "spotkube.io/max-instances";
/// Set by AWS on the instances of an Auto Scaling group: those are `asg`'s business.
const ASG_TAG: &str = "aws:autoscaling:groupName";
/// Set by AWS on an instance launched from a launch template.
const TEMPLATE_ID_TAG: &str = "aws:ec2launchtemplate:id";

/// RunInstances errors that mean "not this offering, now": the next type may launch.
pub const CAPACITY_ERRORS: [&str; 4] = [
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded",
];

/// Whether a RunInstances error code is a capacity error (mark, try the next type)
/// rather than a fault of the request or the account (stop).
pub fn is_capacity_error(code: Option<&str>) -> bool {
    code.is_some_and(|c| CAPACITY_ERRORS.contains(&c))
}

/// A launch template spotkube launches a pool's instances from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPool {
    /// The value of the template's [`POOL_TAG`].
    pub name: String,
    pub launch_template_id: String,
    /// `$Default`, `$Latest` or a version number.
    pub version: String,
    /// Zone → the subnet to launch into there. A zone without one is asked by
    /// `Placement.AvailabilityZone` (the template's network settings then decide).
    pub subnets: BTreeMap<String, String>,
    /// The template's [`MAX_INSTANCES_TAG`]; `None`: no limit beyond one replacement per
    /// Node at risk.
    pub max_instances: Option<usize>,
}

impl LaunchPool {
    pub fn new(name: &str, launch_template_id: &str) -> LaunchPool {
        LaunchPool {
            name: name.to_string(),
            launch_template_id: launch_template_id.to_string(),
            version: "$Default".to_string(),
            subnets: BTreeMap::new(),
            max_instances: None,
        }
    }
}

/// The launch templates tagged [`POOL_TAG`], ordered by pool name.
pub async fn discover(ec2: &aws_sdk_ec2::Client) -> Result<Vec<LaunchPool>> {
    let mut pools = Vec::new();
    let mut token: Option<String> = None;
    loop {
        // `ec2.<operation>(` after `{`, `=` or a space: the IAM scan of aws_shipped.rs
        // reads calls in that shape (not after `match`, whose `h` would hide them).
        let call = || async {
            ec2.describe_launch_templates()
                .filters(Filter::builder().name("tag-key").values(POOL_TAG).build())
                .set_next_token(token.clone())
                .send()
                .await
        };
        let page = send_retrying_throttling("DescribeLaunchTemplates", call).await?;
        for template in page.launch_templates() {
            let pool = template
                .tags()
                .iter()
                .find(|t| t.key() == Some(POOL_TAG))
                .and_then(|t| t.value());
            let max = template
                .tags()
                .iter()
                .find(|t| t.key() == Some(MAX_INSTANCES_TAG))
                .and_then(|t| t.value())
                .and_then(|v| v.trim().parse().ok());
            if let (Some(name), Some(id)) = (pool, template.launch_template_id()) {
                pools.push(LaunchPool {
                    max_instances: max,
                    ..LaunchPool::new(name, id)
                });
            }
        }
        token = page
            .next_token()
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(pools)
}

/// The pool of an instance with `tags`: none when an Auto Scaling group manages it,
/// else by its [`POOL_TAG`], else by the launch template it was launched from.
pub fn pool_of<'a>(
    tags: &BTreeMap<String, String>,
    pools: &'a [LaunchPool],
) -> Option<&'a LaunchPool> {
    if tags.contains_key(ASG_TAG) {
        return None;
    }
    if let Some(name) = tags.get(POOL_TAG) {
        return pools.iter().find(|p| &p.name == name);
    }
    let template = tags.get(TEMPLATE_ID_TAG)?;
    pools.iter().find(|p| &p.launch_template_id == template)
}

/// One offering to try, with the spot price cap.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub offering: Offering,
    /// `MaxPrice` for spot: the ranked spot price, when the ranking has one.
    pub max_price: Option<f64>,
}

/// What to try in `zone`, in order: each ranked type on spot by rank, then each on
/// on-demand by rank (spot first everywhere: an on-demand launch is the last resort).
pub fn walk(ranking: &Ranking, zone: &str) -> Vec<Attempt> {
    let mut ranked: Vec<_> = ranking.zones.get(zone).into_iter().flatten().collect();
    ranked.sort_by_key(|e| e.rank);
    let spot = ranked.iter().map(|e| Attempt {
        offering: Offering::new(&e.instance_type, zone, CapacityType::Spot),
        max_price: (e.spot_usd_per_hour > 0.0).then_some(e.spot_usd_per_hour),
    });
    let on_demand = ranked.iter().map(|e| Attempt {
        offering: Offering::new(&e.instance_type, zone, CapacityType::OnDemand),
        max_price: None,
    });
    spot.chain(on_demand).collect()
}

/// What [`launch_one`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    Launched {
        instance_id: String,
        instance_type: String,
        capacity: CapacityType,
        /// The offerings that failed for capacity before (each now marked).
        tried: Vec<(Offering, String)>,
    },
    /// Every offering of the walk failed for capacity or was already marked. `tried`:
    /// the offerings asked, in order, with the error code of each.
    Exhausted { tried: Vec<(Offering, String)> },
    /// The pool already has `running` pending or running instances, at or above its
    /// limit: nothing was launched.
    Capped { running: usize, max: usize },
}

/// What to launch.
#[derive(Debug, Clone, Copy)]
pub struct LaunchRequest<'a> {
    pub pool: &'a LaunchPool,
    pub zone: &'a str,
    /// The most pending + running instances the pool may have.
    pub max_instances: usize,
    /// The instance this launch replaces (tagged [`REPLACES_TAG`] on the new one).
    pub replaces: Option<&'a str>,
}

/// Launches one instance of `request.pool` in `request.zone`, walking the zone's
/// ranking ([`walk`]): an offering marked in `ice` is skipped; one that fails with a
/// capacity error ([`CAPACITY_ERRORS`]) is marked and the next is tried; any other
/// error stops the walk. At the pool's limit nothing is asked.
///
/// Count-then-launch: two concurrent calls for one pool can both pass the limit.
/// Callers serialise launches per pool.
pub async fn launch_one(
    ec2: &aws_sdk_ec2::Client,
    ice: &IceCache,
    ranking: &Ranking,
    request: LaunchRequest<'_>,
) -> Result<Launch> {
    let running = count_instances(ec2, &request.pool.name).await?;
    if running >= request.max_instances {
        return Ok(Launch::Capped {
            running,
            max: request.max_instances,
        });
    }
    let mut tried = Vec::new();
    for attempt in walk(ranking, request.zone) {
        if ice.is_unavailable(&attempt.offering) {
            continue;
        }
        match run_one(ec2, request.pool, &attempt, request.replaces).await? {
            Ok(instance_id) => {
                return Ok(Launch::Launched {
                    instance_id,
                    instance_type: attempt.offering.instance_type,
                    capacity: attempt.offering.capacity,
                    tried,
                });
            }
            Err(code) => {
                tracing::info!(offering = %attempt.offering, %code, pool = %request.pool.name, "no capacity; trying the next offering");
                ice.mark(attempt.offering.clone(), Reason::CapacityError);
                tried.push((attempt.offering, code));
            }
        }
    }
    Ok(Launch::Exhausted { tried })
}

/// The pending or running instance launched to replace `instance_id`, if any.
pub async fn replacement_of(
    ec2: &aws_sdk_ec2::Client,
    instance_id: &str,
) -> Result<Option<String>> {
    let call = || async {
        ec2.describe_instances()
            .filters(
                Filter::builder()
                    .name(format!("tag:{REPLACES_TAG}"))
                    .values(instance_id)
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .values("pending")
                    .values("running")
                    .build(),
            )
            .send()
            .await
    };
    let out = send_retrying_throttling("DescribeInstances", call).await?;
    Ok(out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find_map(|i| i.instance_id().map(str::to_string)))
}

/// The tags of `instance_id` (empty when EC2 does not know it).
pub async fn instance_tags(
    ec2: &aws_sdk_ec2::Client,
    instance_id: &str,
) -> Result<BTreeMap<String, String>> {
    let call = || async {
        ec2.describe_instances()
            .instance_ids(instance_id)
            .send()
            .await
    };
    let out = match send_retrying_throttling("DescribeInstances", call).await {
        Ok(out) => out,
        // An instance EC2 no longer knows has no pool.
        Err(Error::Aws { message, .. }) if message.contains("InvalidInstanceID") => {
            return Ok(BTreeMap::new());
        }
        Err(e) => return Err(e),
    };
    Ok(out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .flat_map(|i| i.tags())
        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
        .collect())
}

/// Terminates an instance spotkube replaced (a launch-template pool's: no group will
/// launch another for it).
pub async fn terminate(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> Result<()> {
    let call = || async {
        ec2.terminate_instances()
            .instance_ids(instance_id)
            .send()
            .await
    };
    send_retrying_throttling("TerminateInstances", call).await?;
    Ok(())
}

/// The pool's pending and running instances.
pub async fn count_instances(ec2: &aws_sdk_ec2::Client, pool: &str) -> Result<usize> {
    let mut count = 0;
    let mut token: Option<String> = None;
    loop {
        let call = || async {
            ec2.describe_instances()
                .filters(
                    Filter::builder()
                        .name(format!("tag:{POOL_TAG}"))
                        .values(pool)
                        .build(),
                )
                .filters(
                    Filter::builder()
                        .name("instance-state-name")
                        .values("pending")
                        .values("running")
                        .build(),
                )
                .set_next_token(token.clone())
                .send()
                .await
        };
        let page = send_retrying_throttling("DescribeInstances", call).await?;
        count += page
            .reservations()
            .iter()
            .map(|r| r.instances().len())
            .sum::<usize>();
        token = page
            .next_token()
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if token.is_none() {
            return Ok(count);
        }
    }
}

/// One RunInstances: `Ok(Ok(instance id))`, or `Ok(Err(code))` for a capacity error.
async fn run_one(
    ec2: &aws_sdk_ec2::Client,
    pool: &LaunchPool,
    attempt: &Attempt,
    replaces: Option<&str>,
) -> Result<std::result::Result<String, String>> {
    let offering = &attempt.offering;
    let template = LaunchTemplateSpecification::builder()
        .launch_template_id(&pool.launch_template_id)
        .version(&pool.version)
        .build();
    let mut tags = TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .tags(Tag::builder().key(POOL_TAG).value(&pool.name).build())
        .tags(
            Tag::builder()
                .key(LAUNCHED_BY_TAG)
                .value(LAUNCHED_BY)
                .build(),
        );
    if let Some(replaces) = replaces {
        tags = tags.tags(Tag::builder().key(REPLACES_TAG).value(replaces).build());
    }
    let tags = tags.build();
    let market = (offering.capacity == CapacityType::Spot).then(|| {
        InstanceMarketOptionsRequest::builder()
            .market_type(MarketType::Spot)
            .spot_options(
                SpotMarketOptions::builder()
                    .set_max_price(attempt.max_price.map(|p| p.to_string()))
                    .build(),
            )
            .build()
    });
    let (subnet, placement) = match pool.subnets.get(&offering.zone) {
        Some(subnet) => (Some(subnet.clone()), None),
        None => (
            None,
            Some(
                Placement::builder()
                    .availability_zone(&offering.zone)
                    .build(),
            ),
        ),
    };
    // One token per offering, kept across throttling retries: an SDK retry of a launch
    // whose answer was lost returns that instance instead of launching another.
    let token = client_token(offering);
    let call = || async {
        let sent = ec2
            .run_instances()
            .launch_template(template.clone())
            .instance_type(InstanceType::from(offering.instance_type.as_str()))
            .set_instance_market_options(market.clone())
            .set_subnet_id(subnet.clone())
            .set_placement(placement.clone())
            .min_count(1)
            .max_count(1)
            .client_token(&token)
            .tag_specifications(tags.clone())
            .send()
            .await;
        match sent {
            Ok(out) => Ok(Ok(out)),
            Err(e) if is_capacity_error(e.code()) => {
                Ok(Err(e.code().unwrap_or_default().to_string()))
            }
            Err(e) => Err(e),
        }
    };
    match send_retrying_throttling("RunInstances", call).await? {
        Ok(out) => out
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .map(|id| Ok(id.to_string()))
            .ok_or_else(|| Error::Aws {
                operation: "RunInstances",
                message: format!("launched {offering} but answered no instance id"),
            }),
        Err(code) => Ok(Err(code)),
    }
}

/// A ClientToken (64 ASCII characters at most) unique to this launch of `offering`.
fn client_token(offering: &Offering) -> String {
    let now = jiff::Timestamp::now().as_nanosecond();
    let mut token = format!(
        "spotkube-{now}-{}-{}",
        offering.instance_type,
        offering.capacity.as_str()
    );
    token.truncate(64);
    token
}

#[cfg(test)]
mod tests {
    use spotkube_shared::ranking::{RankedType, SCHEMA_VERSION};

    use super::*;

    fn entry(rank: u32, instance_type: &str, spot: f64) -> RankedType {
        RankedType {
            rank,
            instance_type: instance_type.into(),
            spot_usd_per_hour: spot,
            on_demand_usd_per_hour: 0.1,
            savings_percent: 50.0,
            vcpu: 2,
            memory_gib: 8.0,
            interruption_band: None,
            score: 0.0,
        }
    }

    fn ranking() -> Ranking {
        Ranking {
            schema_version: SCHEMA_VERSION.into(),
            computed_at: jiff::Timestamp::UNIX_EPOCH,
            source: "test".into(),
            region: None,
            criteria: None,
            zones: BTreeMap::from([
                (
                    "us-east-1a".to_string(),
                    // Out of order on purpose: the walk goes by rank.
                    vec![
                        entry(2, "m7g.large", 0.03),
                        entry(1, "c7g.large", 0.025),
                        entry(3, "r7g.large", 0.0),
                    ],
                ),
                ("us-east-1b".to_string(), vec![entry(1, "c8g.large", 0.02)]),
            ]),
            unavailable: Vec::new(),
        }
    }

    fn steps(walk: &[Attempt]) -> Vec<String> {
        walk.iter()
            .map(|a| format!("{} {:?}", a.offering, a.max_price))
            .collect()
    }

    #[test]
    fn the_walk_tries_every_ranked_type_on_spot_by_rank_then_on_demand() {
        assert_eq!(
            steps(&walk(&ranking(), "us-east-1a")),
            [
                "c7g.large@us-east-1a/spot Some(0.025)",
                "m7g.large@us-east-1a/spot Some(0.03)",
                "r7g.large@us-east-1a/spot None",
                "c7g.large@us-east-1a/on-demand None",
                "m7g.large@us-east-1a/on-demand None",
                "r7g.large@us-east-1a/on-demand None",
            ]
        );
        assert_eq!(
            steps(&walk(&ranking(), "us-east-1b")),
            [
                "c8g.large@us-east-1b/spot Some(0.02)",
                "c8g.large@us-east-1b/on-demand None"
            ]
        );
        assert!(walk(&ranking(), "us-east-1c").is_empty());
    }

    #[test]
    fn only_capacity_errors_move_the_walk_on() {
        for code in [
            "InsufficientInstanceCapacity",
            "InsufficientCapacity",
            "SpotMaxPriceTooLow",
            "MaxSpotInstanceCountExceeded",
        ] {
            assert!(is_capacity_error(Some(code)), "{code}");
        }
        for code in [
            "UnauthorizedOperation",
            "InvalidLaunchTemplateId.NotFound",
            "InstanceLimitExceeded",
            "RequestLimitExceeded",
            "insufficientinstancecapacity",
        ] {
            assert!(!is_capacity_error(Some(code)), "{code}");
        }
        assert!(!is_capacity_error(None));
    }

    #[test]
    fn an_instance_is_in_a_pool_by_its_tag_or_its_template_unless_a_group_has_it() {
        let pools = [
            LaunchPool::new("web", "lt-0aaa"),
            LaunchPool::new("batch", "lt-0bbb"),
        ];
        let tags = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let name = |t: &BTreeMap<String, String>| pool_of(t, &pools).map(|p| p.name.clone());
        assert_eq!(
            name(&tags(&[(POOL_TAG, "batch")])).as_deref(),
            Some("batch")
        );
        assert_eq!(
            name(&tags(&[(TEMPLATE_ID_TAG, "lt-0aaa")])).as_deref(),
            Some("web")
        );
        assert_eq!(
            name(&tags(&[(POOL_TAG, "batch"), (TEMPLATE_ID_TAG, "lt-0aaa")])).as_deref(),
            Some("batch"),
            "the pool tag wins"
        );
        assert_eq!(
            name(&tags(&[
                (TEMPLATE_ID_TAG, "lt-0aaa"),
                (ASG_TAG, "web-spot")
            ])),
            None
        );
        assert_eq!(name(&tags(&[(TEMPLATE_ID_TAG, "lt-0ccc")])), None);
        assert_eq!(name(&tags(&[(POOL_TAG, "other")])), None);
    }

    #[test]
    fn client_tokens_fit_and_differ_per_launch() {
        let offering = Offering::new("m7g.16xlarge", "us-east-1a", CapacityType::OnDemand);
        let a = client_token(&offering);
        std::thread::sleep(std::time::Duration::from_millis(1));
        let b = client_token(&offering);
        assert!(a.len() <= 64 && a.is_ascii(), "{a}");
        assert_ne!(a, b);
    }
}
