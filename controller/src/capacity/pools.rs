//! Pools, discovered from Auto Scaling group tags as Cluster Autoscaler's auto-discovery
//! does: a group joins pool `<name>` with `spotkube.io/pool=<name>` and
//! `spotkube.io/capacity=spot|on-demand`, and, when a cluster name is configured, only
//! with `kubernetes.io/cluster/<name>=owned|shared`. A pool's spot group is paired with
//! its on-demand group, the fallback.
//!
//! The capacity tag is a label for pairing: what a group launches is decided by its
//! launch template and MixedInstancesPolicy, as in AWS.

use std::collections::BTreeMap;

use aws_sdk_autoscaling::types::{AutoScalingGroup, Filter, LifecycleState};

use super::CapacityType;
use crate::aws::send_retrying_throttling;
use crate::error::{Error, Result};

/// The tag naming a group's pool.
pub const POOL_TAG: &str = "spotkube.io/pool";
/// The tag saying which side of its pool a group is: `spot` or `on-demand`.
pub const CAPACITY_TAG: &str = "spotkube.io/capacity";
/// The tag EC2 puts on every instance an Auto Scaling group launches.
pub const GROUP_NAME_TAG: &str = "aws:autoscaling:groupName";
/// The cluster tag values that claim a group for the cluster (as EKS and Cluster
/// Autoscaler use them).
pub const CLUSTER_TAG_VALUES: &[&str] = &["owned", "shared"];

/// `kubernetes.io/cluster/<cluster>`.
pub fn cluster_tag(cluster: &str) -> String {
    format!("kubernetes.io/cluster/{cluster}")
}

/// What discovery looks for.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryConfig {
    /// Only groups tagged `kubernetes.io/cluster/<name>=owned|shared`; `None` = any group
    /// with the pool tags.
    pub cluster_name: Option<String>,
    /// `MaxRecords` of DescribeAutoScalingGroups pages (AWS: up to 100); `None` = AWS's
    /// default.
    pub page_size: Option<i32>,
}

/// One Auto Scaling group as discovery read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub min: i32,
    pub max: i32,
    pub desired: i32,
    /// Instances in lifecycle state InService.
    pub in_service: i32,
    pub zones: Vec<String>,
    /// Every instance of the group, in any lifecycle state.
    pub instances: Vec<String>,
}

impl Group {
    /// `None` for a group without a name (never from AWS).
    pub fn from_sdk(group: &AutoScalingGroup) -> Option<Group> {
        let in_service = group
            .instances()
            .iter()
            .filter(|i| i.lifecycle_state() == Some(&LifecycleState::InService))
            .count();
        Some(Group {
            name: group.auto_scaling_group_name()?.to_string(),
            min: group.min_size().unwrap_or(0),
            max: group.max_size().unwrap_or(0),
            desired: group.desired_capacity().unwrap_or(0),
            in_service: i32::try_from(in_service).unwrap_or(i32::MAX),
            zones: group.availability_zones().to_vec(),
            instances: group
                .instances()
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_string))
                .collect(),
        })
    }

    /// Whether one more instance fits under MaxSize.
    pub fn below_max(&self) -> bool {
        self.desired < self.max
    }
}

/// A pool: its spot group and its on-demand group (the spot group's fallback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub spot: Option<Group>,
    pub on_demand: Option<Group>,
}

impl Pool {
    pub fn group(&self, capacity: CapacityType) -> Option<&Group> {
        match capacity {
            CapacityType::Spot => self.spot.as_ref(),
            CapacityType::OnDemand => self.on_demand.as_ref(),
            CapacityType::Fargate | CapacityType::Unknown => None,
        }
    }

    /// Where a node of the `capacity` side goes when that side cannot launch: the
    /// on-demand group for a spot node, nothing for an on-demand one.
    pub fn fallback_for(&self, capacity: CapacityType) -> Option<&Group> {
        match capacity {
            CapacityType::Spot => self.on_demand.as_ref(),
            _ => None,
        }
    }
}

/// A group discovery left out, and why (for a log line or an Event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub group: String,
    pub reason: String,
}

/// An instance's or group's place in a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership<'a> {
    pub pool: &'a Pool,
    pub group: &'a Group,
    /// Which side of the pool the group is.
    pub capacity: CapacityType,
}

/// The pools of one discovery, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pools {
    pub pools: BTreeMap<String, Pool>,
    pub skipped: Vec<Skipped>,
}

impl Pools {
    /// Builds pools from DescribeAutoScalingGroups' groups, checking every tag again (a
    /// filter is only as good as the server applying it). Groups are taken in name order,
    /// so when two groups claim the same side of a pool the first name wins, every time.
    pub fn from_groups(groups: &[AutoScalingGroup], cluster: Option<&str>) -> Pools {
        let mut sorted: Vec<&AutoScalingGroup> = groups.iter().collect();
        sorted.sort_by(|a, b| {
            a.auto_scaling_group_name()
                .cmp(&b.auto_scaling_group_name())
        });
        let cluster_key = cluster.map(cluster_tag);
        let mut out = Pools::default();
        for sdk in sorted {
            let Some(group) = Group::from_sdk(sdk) else {
                continue;
            };
            let tag = |key: &str| {
                sdk.tags()
                    .iter()
                    .find(|t| t.key() == Some(key))
                    .map(|t| t.value().unwrap_or_default())
            };
            let mut skip = |reason: String| {
                out.skipped.push(Skipped {
                    group: group.name.clone(),
                    reason,
                })
            };
            let Some(pool_name) = tag(POOL_TAG).filter(|v| !v.is_empty()) else {
                skip(format!("no {POOL_TAG} tag"));
                continue;
            };
            // Exactly the values the filter asks for, so discovery and this agree.
            let capacity = match tag(CAPACITY_TAG) {
                Some("spot") => CapacityType::Spot,
                Some("on-demand") => CapacityType::OnDemand,
                _ => {
                    skip(format!("{CAPACITY_TAG} is not spot or on-demand"));
                    continue;
                }
            };
            if let Some(key) = &cluster_key
                && !tag(key).is_some_and(|v| CLUSTER_TAG_VALUES.contains(&v))
            {
                skip(format!("{key} is not owned or shared"));
                continue;
            }
            let pool = out
                .pools
                .entry(pool_name.to_string())
                .or_insert_with(|| Pool {
                    name: pool_name.to_string(),
                    spot: None,
                    on_demand: None,
                });
            let slot = match capacity {
                CapacityType::Spot => &mut pool.spot,
                _ => &mut pool.on_demand,
            };
            match slot {
                Some(first) => {
                    let reason = format!(
                        "pool {pool_name} already has {} group {}",
                        capacity.as_str(),
                        first.name
                    );
                    out.skipped.push(Skipped {
                        group: group.name,
                        reason,
                    });
                }
                None => *slot = Some(group),
            }
        }
        out
    }

    /// The pool and side of the group `name`, if discovered.
    pub fn pool_of_group(&self, name: &str) -> Option<Membership<'_>> {
        self.pools.values().find_map(|pool| {
            [CapacityType::Spot, CapacityType::OnDemand]
                .into_iter()
                .find_map(|capacity| {
                    let group = pool.group(capacity).filter(|g| g.name == name)?;
                    Some(Membership {
                        pool,
                        group,
                        capacity,
                    })
                })
        })
    }

    /// The pool of instance `instance_id` (from a Node's providerID, see
    /// [`spotkube_shared::node::ProviderId`]): the discovered group that lists it, else
    /// the group its EC2 tags name (`aws:autoscaling:groupName`; pass `&[]` when unknown),
    /// so an instance launched after discovery is still placed. `None` = a node of no
    /// pool (Karpenter's, a managed node group not tagged for spotkube): its provisioner
    /// brings the capacity.
    pub fn pool_of_instance(
        &self,
        instance_id: &str,
        ec2_tags: &[aws_sdk_ec2::types::Tag],
    ) -> Option<Membership<'_>> {
        let listed = self.pools.values().find_map(|pool| {
            let group = [pool.spot.as_ref(), pool.on_demand.as_ref()]
                .into_iter()
                .flatten()
                .find(|g| g.instances.iter().any(|i| i == instance_id))?;
            self.pool_of_group(&group.name)
        });
        listed.or_else(|| self.pool_of_group(group_name_of(ec2_tags)?))
    }
}

/// The `aws:autoscaling:groupName` tag of an EC2 instance.
pub fn group_name_of(ec2_tags: &[aws_sdk_ec2::types::Tag]) -> Option<&str> {
    ec2_tags
        .iter()
        .find(|t| t.key() == Some(GROUP_NAME_TAG))
        .and_then(|t| t.value())
}

/// The DescribeAutoScalingGroups filters of `config` (ANDed; values of one filter ORed).
pub fn filters(config: &DiscoveryConfig) -> Vec<Filter> {
    let filter = |name: String, values: &[&str]| {
        Filter::builder()
            .name(name)
            .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
            .build()
    };
    let mut filters = vec![
        filter("tag-key".into(), &[POOL_TAG]),
        filter(format!("tag:{CAPACITY_TAG}"), &["spot", "on-demand"]),
    ];
    if let Some(cluster) = &config.cluster_name {
        filters.push(filter(
            format!("tag:{}", cluster_tag(cluster)),
            CLUSTER_TAG_VALUES,
        ));
    }
    filters
}

/// Reads every tagged group (all pages; a throttled page restarts the listing, which
/// is idempotent) and builds the pools.
pub async fn discover(
    autoscaling: &aws_sdk_autoscaling::Client,
    config: &DiscoveryConfig,
) -> Result<Pools> {
    let filters = filters(config);
    let call = || async {
        let mut pages = autoscaling
            .describe_auto_scaling_groups()
            .set_filters(Some(filters.clone()))
            .into_paginator();
        if let Some(size) = config.page_size {
            pages = pages.page_size(size.clamp(1, 100));
        }
        pages.items().send().try_collect().await
    };
    let groups = send_retrying_throttling("DescribeAutoScalingGroups", call).await?;
    Ok(Pools::from_groups(&groups, config.cluster_name.as_deref()))
}

/// The group `name` now; an error when AWS does not know it.
pub async fn describe_group(
    autoscaling: &aws_sdk_autoscaling::Client,
    name: &str,
) -> Result<Group> {
    let call = || async {
        autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
    };
    let out = send_retrying_throttling("DescribeAutoScalingGroups", call).await?;
    out.auto_scaling_groups()
        .iter()
        .find(|g| g.auto_scaling_group_name() == Some(name))
        .and_then(Group::from_sdk)
        .ok_or_else(|| Error::Aws {
            operation: "DescribeAutoScalingGroups",
            message: format!("Auto Scaling group {name} not found"),
        })
}

#[cfg(test)]
mod tests {
    use aws_sdk_autoscaling::types::{Instance, TagDescription};
    use spotkube_shared::node::ProviderId;

    use super::*;

    fn sdk_group(name: &str, tags: &[(&str, &str)], instances: &[&str]) -> AutoScalingGroup {
        let mut group = AutoScalingGroup::builder()
            .auto_scaling_group_name(name)
            .min_size(0)
            .max_size(5)
            .desired_capacity(instances.len() as i32)
            .availability_zones("us-east-1a")
            .availability_zones("us-east-1b");
        for (k, v) in tags {
            group = group.tags(
                TagDescription::builder()
                    .resource_id(name)
                    .resource_type("auto-scaling-group")
                    .key(*k)
                    .value(*v)
                    .propagate_at_launch(true)
                    .build(),
            );
        }
        for (n, id) in instances.iter().enumerate() {
            // The last one still launching: counted as an instance, not InService.
            let state = if n + 1 == instances.len() && instances.len() > 1 {
                LifecycleState::Pending
            } else {
                LifecycleState::InService
            };
            group = group.instances(
                Instance::builder()
                    .instance_id(*id)
                    .availability_zone("us-east-1a")
                    .lifecycle_state(state)
                    .health_status("Healthy")
                    .protected_from_scale_in(false)
                    .build(),
            );
        }
        group.build()
    }

    const CLUSTER: (&str, &str) = ("kubernetes.io/cluster/prod", "owned");

    fn groups() -> Vec<AutoScalingGroup> {
        vec![
            sdk_group(
                "web-od",
                &[
                    (POOL_TAG, "web"),
                    (CAPACITY_TAG, "on-demand"),
                    ("kubernetes.io/cluster/prod", "shared"),
                ],
                &["i-0d1"],
            ),
            sdk_group(
                "web-spot",
                &[(POOL_TAG, "web"), (CAPACITY_TAG, "spot"), CLUSTER],
                &["i-0a1", "i-0a2"],
            ),
            sdk_group(
                "batch-spot",
                &[(POOL_TAG, "batch"), (CAPACITY_TAG, "spot"), CLUSTER],
                &["i-0b1"],
            ),
            sdk_group("untagged", &[("team", "x")], &["i-0c1"]),
            sdk_group(
                "other-cluster",
                &[
                    (POOL_TAG, "web"),
                    (CAPACITY_TAG, "spot"),
                    ("kubernetes.io/cluster/staging", "owned"),
                ],
                &[],
            ),
            sdk_group(
                "bad-capacity",
                &[(POOL_TAG, "web"), (CAPACITY_TAG, "SPOT"), CLUSTER],
                &[],
            ),
            sdk_group(
                "web-spot-2",
                &[(POOL_TAG, "web"), (CAPACITY_TAG, "spot"), CLUSTER],
                &[],
            ),
        ]
    }

    #[test]
    fn spot_groups_pair_with_the_on_demand_group_of_their_pool() {
        let pools = Pools::from_groups(&groups(), Some("prod"));
        assert_eq!(
            pools.pools.keys().collect::<Vec<_>>(),
            ["batch", "web"],
            "{pools:?}"
        );
        let web = &pools.pools["web"];
        let spot = web.spot.as_ref().unwrap();
        assert_eq!(spot.name, "web-spot");
        assert_eq!(
            (spot.min, spot.max, spot.desired, spot.in_service),
            (0, 5, 2, 1)
        );
        assert_eq!(spot.instances, ["i-0a1", "i-0a2"]);
        assert_eq!(spot.zones, ["us-east-1a", "us-east-1b"]);
        assert_eq!(web.on_demand.as_ref().unwrap().name, "web-od");
        assert_eq!(web.fallback_for(CapacityType::Spot).unwrap().name, "web-od");
        assert_eq!(web.fallback_for(CapacityType::OnDemand), None);
        let batch = &pools.pools["batch"];
        assert_eq!(batch.spot.as_ref().unwrap().name, "batch-spot");
        assert_eq!(batch.on_demand, None, "no fallback");

        let skipped: BTreeMap<&str, &str> = pools
            .skipped
            .iter()
            .map(|s| (s.group.as_str(), s.reason.as_str()))
            .collect();
        assert_eq!(
            skipped,
            BTreeMap::from([
                (
                    "bad-capacity",
                    "spotkube.io/capacity is not spot or on-demand"
                ),
                (
                    "other-cluster",
                    "kubernetes.io/cluster/prod is not owned or shared"
                ),
                ("untagged", "no spotkube.io/pool tag"),
                ("web-spot-2", "pool web already has spot group web-spot"),
            ])
        );
    }

    #[test]
    fn without_a_cluster_name_the_cluster_tag_is_not_required() {
        let pools = Pools::from_groups(&groups(), None);
        // other-cluster sorts before web-spot and takes the web pool's spot side.
        assert_eq!(
            pools.pools["web"].spot.as_ref().unwrap().name,
            "other-cluster"
        );
        assert!(
            pools
                .skipped
                .iter()
                .any(|s| s.group == "web-spot" && s.reason.contains("already has spot group"))
        );
    }

    #[test]
    fn an_instance_is_placed_by_membership_then_by_its_group_tag() {
        let pools = Pools::from_groups(&groups(), Some("prod"));
        let id = "aws:///us-east-1a/i-0a2"
            .parse::<ProviderId>()
            .unwrap()
            .instance_id;
        let m = pools.pool_of_instance(&id, &[]).unwrap();
        assert_eq!(
            (m.pool.name.as_str(), m.group.name.as_str(), m.capacity),
            ("web", "web-spot", CapacityType::Spot)
        );

        // Launched after discovery: only its tags know the group.
        let tags = [
            aws_sdk_ec2::types::Tag::builder()
                .key("Name")
                .value("x")
                .build(),
            aws_sdk_ec2::types::Tag::builder()
                .key(GROUP_NAME_TAG)
                .value("web-od")
                .build(),
        ];
        let m = pools.pool_of_instance("i-new", &tags).unwrap();
        assert_eq!(
            (m.group.name.as_str(), m.capacity),
            ("web-od", CapacityType::OnDemand)
        );

        // A group spotkube does not manage, or no group at all: no pool.
        assert_eq!(pools.pool_of_instance("i-0c1", &[]), None);
        let karpenter = [aws_sdk_ec2::types::Tag::builder()
            .key("karpenter.sh/nodepool")
            .value("default")
            .build()];
        assert_eq!(pools.pool_of_instance("i-k", &karpenter), None);
    }

    #[test]
    fn filters_ask_for_the_pool_tags_and_the_cluster_tag_when_configured() {
        let shown = |config: &DiscoveryConfig| {
            filters(config)
                .iter()
                .map(|f| format!("{}={}", f.name().unwrap(), f.values().join("|")))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            shown(&DiscoveryConfig::default()),
            [
                "tag-key=spotkube.io/pool",
                "tag:spotkube.io/capacity=spot|on-demand"
            ]
        );
        let config = DiscoveryConfig {
            cluster_name: Some("prod".into()),
            page_size: None,
        };
        assert_eq!(
            shown(&config)[2],
            "tag:kubernetes.io/cluster/prod=owned|shared"
        );
    }
}
