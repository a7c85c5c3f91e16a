//! Auto Scaling fixtures in moto, through the real SDK clients: launch templates, groups
//! (a plain launch template or a MixedInstancesPolicy, with tags that propagate to the
//! instances) and reading them back. The ICE switch is [`Moto::set_insufficient_capacity`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), spotkube_rig::RigError> {
//! use spotkube_rig::autoscaling::{GroupSpec, LaunchTemplate, group, instance_ids};
//! use spotkube_rig::aws::Moto;
//! let moto = Moto::start().await?;
//! LaunchTemplate::new("workers-lt", "m7g.large").create(&moto).await?;
//! GroupSpec::new("spot-workers", "workers-lt")
//!     .mixed(&["c7g.large", "m7g.large"], 0, 0)
//!     .zones(&["us-east-1a", "us-east-1b"])
//!     .size(0, 6, 2)
//!     .tag("spotkube.io/capacity", "spot")
//!     .create(&moto)
//!     .await?;
//! let ids = instance_ids(&group(&moto, "spot-workers").await?);
//! # Ok(()) }
//! ```

use aws_sdk_autoscaling::types::{
    AutoScalingGroup, InstancesDistribution, LaunchTemplateOverrides, LaunchTemplateSpecification,
    MixedInstancesPolicy, Tag,
};
use aws_sdk_ec2::types::{
    Instance, InstanceType, LaunchTemplateInstanceMarketOptionsRequest, MarketType,
    RequestLaunchTemplateData,
};
use aws_smithy_types::error::display::DisplayErrorContext;

use crate::RigError;
use crate::aws::{Moto, TEST_AMI};

/// A spot group of spotkube pool `pool` (tags `spotkube.io/pool`, `spotkube.io/capacity
/// =spot`) from `template` over `zones`, every instance a spot `instance_type` (a
/// MixedInstancesPolicy), sized `(min, max, desired)`.
pub fn spot_pool_group(
    name: &str,
    template: &str,
    pool: &str,
    instance_type: &str,
    zones: &[&str],
    (min, max, desired): (i32, i32, i32),
) -> GroupSpec {
    GroupSpec::new(name, template)
        .zones(zones)
        .size(min, max, desired)
        .mixed(&[instance_type], 0, 0)
        .tags(&[("spotkube.io/pool", pool), ("spotkube.io/capacity", "spot")])
}

/// The on-demand group of spotkube pool `pool` (its spot group's fallback) from
/// `template` (an on-demand template) over `zones`.
pub fn on_demand_pool_group(
    name: &str,
    template: &str,
    pool: &str,
    zones: &[&str],
    (min, max, desired): (i32, i32, i32),
) -> GroupSpec {
    GroupSpec::new(name, template)
        .zones(zones)
        .size(min, max, desired)
        .tags(&[
            ("spotkube.io/pool", pool),
            ("spotkube.io/capacity", "on-demand"),
        ])
}

/// For `map_err`: an SDK error, with its causes, as [`RigError::Aws`] after `context`.
fn sdk_err<E: std::error::Error>(context: impl std::fmt::Display) -> impl FnOnce(E) -> RigError {
    move |e| RigError::Aws(format!("{context}: {}", DisplayErrorContext(e)))
}

/// A launch template of [`TEST_AMI`] and one instance type; on-demand unless
/// [`spot_market`](LaunchTemplate::spot_market).
#[derive(Debug, Clone)]
pub struct LaunchTemplate {
    name: String,
    instance_type: String,
    spot_market: bool,
}

impl LaunchTemplate {
    pub fn new(name: &str, instance_type: &str) -> Self {
        Self {
            name: name.to_owned(),
            instance_type: instance_type.to_owned(),
            spot_market: false,
        }
    }

    /// Market type spot in the template's instance market options: every instance a group
    /// launches from it is spot, whatever the group says.
    pub fn spot_market(mut self) -> Self {
        self.spot_market = true;
        self
    }

    pub async fn create(&self, moto: &Moto) -> Result<(), RigError> {
        let mut data = RequestLaunchTemplateData::builder()
            .image_id(TEST_AMI)
            .instance_type(InstanceType::from(self.instance_type.as_str()));
        if self.spot_market {
            data = data.instance_market_options(
                LaunchTemplateInstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .build(),
            );
        }
        moto.ec2()
            .await
            .create_launch_template()
            .launch_template_name(&self.name)
            .launch_template_data(data.build())
            .send()
            .await
            .map_err(sdk_err(format!("create launch template {}", self.name)))?;
        Ok(())
    }
}

/// What a group launches from.
#[derive(Debug, Clone)]
enum Launch {
    /// The launch template alone.
    Template,
    /// A MixedInstancesPolicy over the template with these override types, in order.
    Mixed {
        types: Vec<String>,
        on_demand_base: i32,
        on_demand_percent: i32,
        spot_allocation_strategy: Option<String>,
    },
}

/// An Auto Scaling group to create: from a launch template (`$Latest`), over
/// [`zones`](GroupSpec::zones) (set them: Auto Scaling needs some),
/// min/max/desired 0/1/0 unless [`size`](GroupSpec::size) says otherwise.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    name: String,
    template: String,
    launch: Launch,
    zones: Vec<String>,
    min: i32,
    max: i32,
    desired: i32,
    tags: Vec<(String, String)>,
}

impl GroupSpec {
    /// A group `name` launching from the launch template `template` as it is.
    pub fn new(name: &str, template: &str) -> Self {
        Self {
            name: name.to_owned(),
            template: template.to_owned(),
            launch: Launch::Template,
            zones: Vec::new(),
            min: 0,
            max: 1,
            desired: 0,
            tags: Vec::new(),
        }
    }

    /// Through a MixedInstancesPolicy instead: the template overridden by `types` (in
    /// order), OnDemandBaseCapacity `on_demand_base`, OnDemandPercentageAboveBaseCapacity
    /// `on_demand_percent`.
    pub fn mixed(mut self, types: &[&str], on_demand_base: i32, on_demand_percent: i32) -> Self {
        self.launch = Launch::Mixed {
            types: types.iter().map(|t| t.to_string()).collect(),
            on_demand_base,
            on_demand_percent,
            spot_allocation_strategy: None,
        };
        self
    }

    /// The MixedInstancesPolicy's SpotAllocationStrategy (unset by default). Only with
    /// [`mixed`](GroupSpec::mixed), after it.
    pub fn spot_allocation_strategy(mut self, strategy: &str) -> Self {
        match &mut self.launch {
            Launch::Mixed {
                spot_allocation_strategy,
                ..
            } => *spot_allocation_strategy = Some(strategy.to_owned()),
            Launch::Template => panic!("a spot allocation strategy needs a mixed policy"),
        }
        self
    }

    pub fn zones(mut self, zones: &[&str]) -> Self {
        self.zones = zones.iter().map(|z| z.to_string()).collect();
        self
    }

    /// MinSize, MaxSize, DesiredCapacity.
    pub fn size(mut self, min: i32, max: i32, desired: i32) -> Self {
        (self.min, self.max, self.desired) = (min, max, desired);
        self
    }

    /// A group tag, propagated to the instances at launch.
    pub fn tag(mut self, key: &str, value: &str) -> Self {
        self.tags.push((key.to_owned(), value.to_owned()));
        self
    }

    /// [`tag`](GroupSpec::tag) for each pair.
    pub fn tags(self, tags: &[(&str, &str)]) -> Self {
        tags.iter().fold(self, |spec, (k, v)| spec.tag(k, v))
    }

    /// Creates the group; moto launches `desired` instances at once.
    pub async fn create(&self, moto: &Moto) -> Result<(), RigError> {
        let spec = LaunchTemplateSpecification::builder()
            .launch_template_name(&self.template)
            .version("$Latest")
            .build();
        let mut request = moto
            .autoscaling()
            .await
            .create_auto_scaling_group()
            .auto_scaling_group_name(&self.name)
            .set_availability_zones(Some(self.zones.clone()))
            .min_size(self.min)
            .max_size(self.max)
            .desired_capacity(self.desired);
        request = match &self.launch {
            Launch::Template => request.launch_template(spec),
            Launch::Mixed {
                types,
                on_demand_base,
                on_demand_percent,
                spot_allocation_strategy,
            } => {
                let mut template = aws_sdk_autoscaling::types::LaunchTemplate::builder()
                    .launch_template_specification(spec);
                for t in types {
                    template = template
                        .overrides(LaunchTemplateOverrides::builder().instance_type(t).build());
                }
                request.mixed_instances_policy(
                    MixedInstancesPolicy::builder()
                        .launch_template(template.build())
                        .instances_distribution(
                            InstancesDistribution::builder()
                                .on_demand_base_capacity(*on_demand_base)
                                .on_demand_percentage_above_base_capacity(*on_demand_percent)
                                .set_spot_allocation_strategy(spot_allocation_strategy.clone())
                                .build(),
                        )
                        .build(),
                )
            }
        };
        for (k, v) in &self.tags {
            request = request.tags(
                Tag::builder()
                    .key(k)
                    .value(v)
                    .propagate_at_launch(true)
                    .resource_id(&self.name)
                    .resource_type("auto-scaling-group")
                    .build(),
            );
        }
        request
            .send()
            .await
            .map_err(sdk_err(format!("create group {}", self.name)))?;
        Ok(())
    }
}

/// The group `name` as Auto Scaling describes it.
pub async fn group(moto: &Moto, name: &str) -> Result<AutoScalingGroup, RigError> {
    moto.autoscaling()
        .await
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .map_err(sdk_err(format!("describe group {name}")))?
        .auto_scaling_groups()
        .first()
        .cloned()
        .ok_or_else(|| RigError::Aws(format!("describe group: group {name} not found")))
}

/// The ids of the group's instances, in the order Auto Scaling lists them.
pub fn instance_ids(group: &AutoScalingGroup) -> Vec<String> {
    group
        .instances()
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect()
}

/// What EC2 (not Auto Scaling) says about these instances.
pub async fn ec2_instances(moto: &Moto, ids: &[String]) -> Result<Vec<Instance>, RigError> {
    let out = moto
        .ec2()
        .await
        .describe_instances()
        .set_instance_ids(Some(ids.to_vec()))
        .send()
        .await
        .map_err(sdk_err("describe instances"))?;
    Ok(out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .cloned()
        .collect())
}
