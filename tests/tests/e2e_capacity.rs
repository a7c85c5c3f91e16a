//! Replacement before removal, on the rig: the real control plane, kwok, a private moto
//! with realistic Auto Scaling (switch 9), the node registrar joining moto's instances as
//! kwok Nodes after a join delay, and the controller as shipped (`--capacity` on by
//! default). No spare node exists at the start of any scenario: the pool's only Node
//! runs every pod, so a workload survives only if spotkube brings the capacity.
//!
//! The tests take the cluster alone: every leader's capacity loop is cluster-wide, so a
//! concurrent test's controller (another moto, no pools) would answer this test's
//! requests with "no pool".

use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{
    InstanceMarketOptionsRequest, InstanceType, LaunchTemplateSpecification, MarketType, Placement,
    RequestLaunchTemplateData, ResourceType, Tag, TagSpecification,
};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, ListParams};
use serde_json::Value;
use spotkube_rig::autoscaling::{self, LaunchTemplate};
use spotkube_rig::aws::{EventKind, Moto, Queues, TEST_AMI};
use spotkube_rig::faults::{self, NothingLost, POOL, Protection, metric_value};
use spotkube_rig::programs::ProgramOptions;
use spotkube_rig::{
    Cluster, EndpointWatch, FakeNode, Registrar, RegistrarOptions, TestNamespace, wait_for,
    wait_for_ready_endpoints, wait_for_rollout, workloads,
};
use spotkube_shared::ranking::Ranking;

static EXCLUSIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SPOT_TYPE: &str = "m7g.large";
const ON_DEMAND_TYPE: &str = "m6i.large";
const ZONES: [&str; 2] = ["us-east-1a", "us-east-1b"];
const CAPACITY_REQUEST: &str = "spotkube.io/capacity-request";
const FALLBACK_FOR: &str = "spotkube.io/fallback-for";
/// 3 replicas with maxUnavailable 1: never fewer than 2 ready.
const API_PDB_FLOOR: usize = 2;

/// A namespace, a private moto with a queue, the pool's spot group (one instance) and
/// its on-demand fallback group (none), the registrar, and `web` (1 replica) plus `api`
/// (3 replicas, PDB maxUnavailable 1) on the spot group's only Node.
struct Scenario {
    test: TestNamespace,
    moto: Moto,
    queues: Queues,
    registrar: Registrar,
    spot: String,
    on_demand: String,
    /// The spot group's first instance and its Node.
    doomed: (String, String),
}

async fn create_workload(test: &TestNamespace, name: &str, replicas: i32) -> anyhow::Result<()> {
    workloads::create_on_pool(&test.client, &test.name, name, replicas, (POOL, &test.name)).await?;
    Ok(())
}

impl Scenario {
    async fn start(prefix: &str, join_delay: Duration) -> anyhow::Result<Scenario> {
        Scenario::start_with(prefix, join_delay, 3, 2).await
    }

    /// With the spot group's MaxSize and the on-demand group's (0: no fallback group).
    async fn start_with(
        prefix: &str,
        join_delay: Duration,
        spot_max: i32,
        on_demand_max: i32,
    ) -> anyhow::Result<Scenario> {
        let cluster = Cluster::shared().await?;
        let test = cluster
            .namespace_with(prefix, &[("spotkube.io/enabled", "true")])
            .await?;
        let moto = Moto::start().await?;
        let queues = moto
            .create_queue_with_dlq(&format!("{}-events", test.name), 3)
            .await?;
        LaunchTemplate::new("spot-lt", SPOT_TYPE)
            .create(&moto)
            .await?;
        LaunchTemplate::new("on-demand-lt", ON_DEMAND_TYPE)
            .create(&moto)
            .await?;
        let spot = format!("{}-spot", test.name);
        let on_demand = format!("{}-on-demand", test.name);
        autoscaling::spot_pool_group(
            &spot,
            "spot-lt",
            &test.name,
            SPOT_TYPE,
            &ZONES,
            (0, spot_max, 1),
        )
        .create(&moto)
        .await?;
        if on_demand_max > 0 {
            autoscaling::on_demand_pool_group(
                &on_demand,
                "on-demand-lt",
                &test.name,
                &ZONES,
                (0, on_demand_max, 0),
            )
            .create(&moto)
            .await?;
        }
        let registrar = Registrar::start(
            &moto,
            test.client.clone(),
            RegistrarOptions::default()
                .join_delay(join_delay)
                .label(POOL, test.name.clone()),
        )
        .await;
        let first = autoscaling::instance_ids(&autoscaling::group(&moto, &spot).await?);
        let instance = first.first().cloned().expect("the spot group's instance");
        let node = registrar
            .ready_node(&test.client, &instance, Duration::from_secs(60))
            .await?;
        faults::web_and_api(&test.client, &test.name, 3).await?;
        Ok(Scenario {
            test,
            moto,
            queues,
            registrar,
            spot,
            on_demand,
            doomed: (instance, node),
        })
    }

    fn options(&self, identity: &str) -> ProgramOptions {
        let mut options = self
            .moto
            .controller_options(&self.queues.url, &self.test.name)
            .arg(format!("--identity={identity}"))
            .arg("--visibility-timeout=6s")
            .arg("--scale-back-interval=1s")
            .arg("--capacity-interval=1s");
        options.args.retain(|a| !a.starts_with("--lease-duration"));
        options.arg("--lease-duration=5")
    }

    async fn send(&self, kind: EventKind) -> anyhow::Result<()> {
        self.moto
            .send_event(
                &self.queues.url,
                kind,
                &self.doomed.0,
                jiff::Timestamp::now(),
            )
            .await?;
        Ok(())
    }

    async fn group(&self, name: &str) -> anyhow::Result<(i32, Vec<String>)> {
        let group = autoscaling::group(&self.moto, name).await?;
        Ok((
            group.desired_capacity().unwrap_or_default(),
            autoscaling::instance_ids(&group),
        ))
    }

    /// The Node's capacity request, parsed (`None` once the Node is gone).
    async fn request(&self, node: &str) -> anyhow::Result<Option<Value>> {
        let node = Api::<Node>::all(self.test.client.clone())
            .get_opt(node)
            .await?;
        Ok(node
            .and_then(|n| n.metadata.annotations)
            .and_then(|a| a.get(CAPACITY_REQUEST).cloned())
            .map(|v| serde_json::from_str(&v))
            .transpose()?)
    }

    /// Waits until the doomed Node is gone and `group` is back at `desired` with its
    /// instances all joined, none of them the doomed one.
    async fn replaced_in(&self, group: &str, timeout: Duration) -> anyhow::Result<Vec<String>> {
        let nodes: Api<Node> = Api::all(self.test.client.clone());
        wait_for("the doomed node replaced", timeout, || async {
            if nodes.get_opt(&self.doomed.1).await?.is_some() {
                return Ok(None);
            }
            let (_, instances) = self.group(group).await?;
            let joined = instances
                .iter()
                .all(|i| self.registrar.node_name(i).is_some());
            let fresh = !instances.is_empty() && !instances.contains(&self.doomed.0);
            Ok((joined && fresh).then_some(instances))
        })
        .await
        .map_err(Into::into)
    }

    /// Pods of `app` and the Nodes they run on.
    async fn nodes_of(&self, app: &str) -> anyhow::Result<Vec<String>> {
        let pods: Api<Pod> = Api::namespaced(self.test.client.clone(), &self.test.name);
        Ok(pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.spec.and_then(|s| s.node_name))
            .collect())
    }
}

fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A rebalance recommendation with no spare capacity: the spot group rises by one, the
/// new Node joins, then the old Node is drained and terminated with the group back at
/// its size; `web` never has zero ready endpoints and `api` never drops below its PDB.
#[tokio::test]
async fn rebalance_without_spare_capacity_replaces_the_node_before_removing_it()
-> anyhow::Result<()> {
    let _alone = EXCLUSIVE.lock().await;
    let s = Scenario::start("cap-rebalance", Duration::from_secs(2)).await?;
    let result = async {
        let cluster = Cluster::shared().await?;
        let controller = cluster.start_controller(s.options("only")).await?;
        let lost = NothingLost::watch(
            &s.test.client,
            &s.test.name,
            &[("web", Protection::Restart), ("api", Protection::Evict)],
        );
        let api = EndpointWatch::start(&s.test.client, &s.test.name, "api");
        s.send(EventKind::RebalanceRecommendation).await?;
        wait_for(
            "the spot group asked for one more",
            Duration::from_secs(30),
            || async { Ok((s.group(&s.spot).await?.0 == 2).then_some(())) },
        )
        .await?;
        let instances = s.replaced_in(&s.spot, Duration::from_secs(120)).await?;
        let ledger = lost
            .check(&s.moto, &s.queues, 0, Duration::from_secs(120))
            .await?;
        let (api_min, _) = api.finish().await;
        assert!(
            api_min >= API_PDB_FLOOR,
            "api dropped to {api_min} ready endpoints"
        );
        let (desired, _) = s.group(&s.spot).await?;
        assert_eq!(
            (desired, instances.len()),
            (1, 1),
            "the group is back at its size"
        );
        let replacement = s.registrar.node_name(&instances[0]).expect("joined");
        for app in ["web", "api"] {
            let on = s.nodes_of(app).await?;
            assert!(on.iter().all(|n| *n == replacement), "{app} runs on {on:?}");
        }
        assert_eq!(s.moto.calls("SetDesiredCapacity").await?, 1, "asked once");
        assert_eq!(
            s.moto.calls("TerminateInstanceInAutoScalingGroup").await?,
            1
        );
        assert_eq!(s.group(&s.on_demand).await?.0, 0, "no fallback needed");
        let metrics = controller.metrics().await?;
        let replaced = format!(
            "spotkube_controller_capacity_replaced_total{{pool=\"{}\",trigger=\"rebalance\"}}",
            s.test.name
        );
        assert_eq!(counter(&metrics, &replaced), 1.0, "{metrics}");
        eprintln!(
            "CAPACITY rebalance: web min_ready={} api min_ready={api_min} samples={}",
            ledger.min_ready, ledger.samples
        );
        Ok(())
    }
    .await;
    s.test.report(result)
}

/// The same with the spot type out of capacity: the spot group's launch fails, the
/// on-demand group brings the replacement within the timeout, zero gap. Then the
/// capacity comes back: the spot group fills, stays whole for the stable window, and
/// the on-demand fallback Node is drained and removed, zero gap again.
#[tokio::test]
async fn insufficient_spot_capacity_falls_back_to_on_demand_and_scales_back_when_spot_returns()
-> anyhow::Result<()> {
    let _alone = EXCLUSIVE.lock().await;
    let s = Scenario::start("cap-ice", Duration::from_secs(2)).await?;
    let result = async {
        let cluster = Cluster::shared().await?;
        let options = s
            .options("only")
            .arg("--capacity-timeout=60s")
            .arg("--fallback-stable-window=5s")
            .arg("--ice-ttl=10s");
        let controller = cluster.start_controller(options).await?;
        let lost = NothingLost::watch(
            &s.test.client,
            &s.test.name,
            &[("web", Protection::RestartPerEvent), ("api", Protection::Evict)],
        );
        let api = EndpointWatch::start(&s.test.client, &s.test.name, "api");
        s.moto.set_insufficient_capacity(&[SPOT_TYPE]).await?;
        let sent = Instant::now();
        s.send(EventKind::RebalanceRecommendation).await?;
        // The fallback: the on-demand group brings the replacement.
        let od = s.replaced_in(&s.on_demand, Duration::from_secs(120)).await?;
        let fell_back_after = sent.elapsed();
        assert_eq!(od.len(), 1, "one on-demand node");
        let fallback_node = s.registrar.node_name(&od[0]).expect("joined");
        let node = Api::<Node>::all(s.test.client.clone()).get(&fallback_node).await?;
        let annotations = node.metadata.annotations.unwrap_or_default();
        assert_eq!(annotations.get(FALLBACK_FOR), Some(&s.test.name));
        let (spot_desired, spot_instances) = s.group(&s.spot).await?;
        assert_eq!(
            (spot_desired, spot_instances.len()),
            (1, 0),
            "the spot group keeps wanting its node while out of capacity"
        );
        let metrics = controller.metrics().await?;
        let fallback = format!(
            "spotkube_controller_capacity_fallbacks_total{{pool=\"{}\",reason=\"capacity-error\"}}",
            s.test.name
        );
        assert_eq!(counter(&metrics, &fallback), 1.0, "{metrics}");

        // Spot is back: the spot group fills, then the fallback node goes.
        s.moto.clear_insufficient_capacity().await?;
        let nodes: Api<Node> = Api::all(s.test.client.clone());
        wait_for("the fallback node scaled back", Duration::from_secs(180), || async {
            let gone = nodes.get_opt(&fallback_node).await?.is_none();
            let (od_desired, _) = s.group(&s.on_demand).await?;
            Ok((gone && od_desired == 0).then_some(()))
        })
        .await?;
        let ledger = lost.check(&s.moto, &s.queues, 0, Duration::from_secs(120)).await?;
        let (api_min, _) = api.finish().await;
        assert!(api_min >= API_PDB_FLOOR, "api dropped to {api_min} ready endpoints");
        let (spot_desired, spot_instances) = s.group(&s.spot).await?;
        assert_eq!((spot_desired, spot_instances.len()), (1, 1), "spot is back");
        let spot_node = s.registrar.node_name(&spot_instances[0]).expect("joined");
        for app in ["web", "api"] {
            let on = s.nodes_of(app).await?;
            assert!(on.iter().all(|n| *n == spot_node), "{app} runs on {on:?}");
        }
        eprintln!(
            "CAPACITY ice: fallback node joined {:.1} s after the event; web min_ready={} api min_ready={api_min}",
            fell_back_after.as_secs_f64(),
            ledger.min_ready
        );
        Ok(())
    }
    .await;
    s.test.report(result)
}

/// An interruption warning with no spare capacity: the replacement is asked for within
/// 1 s of the request's record, the pods run on the replacement before the deadline,
/// and exactly one instance is added net (the doomed one is terminated with decrement,
/// so the group launches no second replacement).
#[tokio::test]
async fn interruption_warning_requests_a_replacement_at_once_and_nets_one_instance()
-> anyhow::Result<()> {
    let _alone = EXCLUSIVE.lock().await;
    let s = Scenario::start("cap-warning", Duration::from_secs(2)).await?;
    let result = async {
        let cluster = Cluster::shared().await?;
        let controller = cluster.start_controller(s.options("only")).await?;
        let sent = jiff::Timestamp::now();
        let deadline = sent + jiff::SignedDuration::from_secs(120);
        s.send(EventKind::SpotInterruptionWarning).await?;
        let request = wait_for("the request sent", Duration::from_secs(30), || async {
            Ok(s
                .request(&s.doomed.1)
                .await?
                .filter(|r| r["requestedAt"].is_string()))
        })
        .await?;
        let requested: jiff::Timestamp = request["requestedAt"].as_str().unwrap().parse()?;
        let metrics = controller.metrics().await?;
        // The controller's own measure, receipt's record to SetDesiredCapacity sent.
        let (count, sum) = (
            metric_value(&metrics, "spotkube_controller_capacity_recorded_to_requested_seconds_count"),
            metric_value(&metrics, "spotkube_controller_capacity_recorded_to_requested_seconds_sum"),
        );
        assert_eq!(count, Some(1.0), "{metrics}");
        assert!(sum.unwrap() <= 1.0, "recorded → requested took {sum:?} s");
        let instances = s.replaced_in(&s.spot, Duration::from_secs(110)).await?;
        let replacement = s.registrar.node_name(&instances[0]).expect("joined");
        wait_for("the pods on the replacement", Duration::from_secs(60), || async {
            let web = s.nodes_of("web").await?;
            let api = s.nodes_of("api").await?;
            let all = web.len() == 1
                && api.len() == 3
                && web.iter().chain(&api).all(|n| *n == replacement);
            Ok(all.then_some(()))
        })
        .await?;
        for app in ["web", "api"] {
            wait_for_ready_endpoints(
                &s.test.client,
                &s.test.name,
                app,
                if app == "web" { 1 } else { 3 },
                Duration::from_secs(30),
            )
            .await?;
        }
        let ready_at = jiff::Timestamp::now();
        assert!(ready_at < deadline, "the pods were ready at {ready_at}, after {deadline}");
        // Net one instance: one launched since the start, the group back at 1.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (desired, now) = s.group(&s.spot).await?;
        assert_eq!((desired, now.len()), (1, 1), "{now:?}");
        assert_eq!(s.moto.calls("SetDesiredCapacity").await?, 1);
        eprintln!(
            "CAPACITY warning: sent → requested {:.2} s; pods ready on the replacement {:.1} s after the warning (deadline 120 s)",
            requested.duration_since(sent).as_secs_f64(),
            ready_at.duration_since(sent).as_secs_f64()
        );
        Ok(())
    }
    .await;
    s.test.report(result)
}

/// The leader is SIGKILLed after the scale-up and before the drain (the replacement is
/// still joining); the standby finishes the same plan without asking twice.
#[tokio::test]
async fn a_leader_killed_between_scale_up_and_drain_leaves_the_plan_to_the_next()
-> anyhow::Result<()> {
    let _alone = EXCLUSIVE.lock().await;
    let s = Scenario::start("cap-kill", Duration::from_secs(10)).await?;
    let result = async {
        let cluster = Cluster::shared().await?;
        let mut first = cluster.start_controller(s.options("first")).await?;
        wait_for("first leads", Duration::from_secs(30), || async {
            Ok(first.is_leader().await?.then_some(()))
        })
        .await?;
        let mut standby = s.options("second");
        standby.no_ready_wait = true;
        let second = cluster.start_controller(standby).await?;
        let lost = NothingLost::watch(
            &s.test.client,
            &s.test.name,
            &[("web", Protection::Restart), ("api", Protection::Evict)],
        );
        s.send(EventKind::RebalanceRecommendation).await?;
        wait_for("the request sent", Duration::from_secs(30), || async {
            Ok(s.request(&s.doomed.1)
                .await?
                .filter(|r| r["phase"] == "requested"))
        })
        .await?;
        first.process.kill();
        wait_for("second leads", Duration::from_secs(30), || async {
            Ok(second.is_leader().await?.then_some(()))
        })
        .await?;
        s.replaced_in(&s.spot, Duration::from_secs(120)).await?;
        lost.check(&s.moto, &s.queues, 0, Duration::from_secs(120))
            .await?;
        assert_eq!(s.moto.calls("SetDesiredCapacity").await?, 1, "asked twice");
        assert_eq!(
            s.group(&s.spot).await?.0,
            1,
            "the group is back at its size"
        );
        Ok(())
    }
    .await;
    s.test.report(result)
}

/// A rebalance with no capacity to be had (the spot group at its MaxSize, no on-demand
/// group): nothing is asked, the node stays `PreferNoSchedule` with its workloads where
/// they are, and once the expiry passes without an interruption its mark, taint and
/// request are removed.
#[tokio::test]
async fn a_rebalance_without_capacity_is_unmarked_after_the_expiry() -> anyhow::Result<()> {
    let _alone = EXCLUSIVE.lock().await;
    let s = Scenario::start_with("cap-expiry", Duration::from_secs(2), 1, 0).await?;
    let result = async {
        let cluster = Cluster::shared().await?;
        let controller = cluster
            .start_controller(s.options("only").arg("--rebalance-expiry=8s"))
            .await?;
        let nodes: Api<Node> = Api::all(s.test.client.clone());
        s.send(EventKind::RebalanceRecommendation).await?;
        let request = wait_for(
            "the request unavailable",
            Duration::from_secs(30),
            || async {
                Ok(s.request(&s.doomed.1)
                    .await?
                    .filter(|r| r["phase"] == "unavailable"))
            },
        )
        .await?;
        assert!(
            request["message"]
                .as_str()
                .unwrap_or_default()
                .contains("MaxSize"),
            "{request}"
        );
        let node = nodes.get(&s.doomed.1).await?;
        let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
        assert!(
            taints
                .iter()
                .any(|t| t.key == "spotkube.io/interruption" && t.effect == "PreferNoSchedule"),
            "{taints:?}"
        );
        assert_eq!(
            s.moto.calls("SetDesiredCapacity").await?,
            0,
            "nothing asked"
        );
        // Nothing moved: both workloads still run on the node.
        for app in ["web", "api"] {
            let on = s.nodes_of(app).await?;
            assert!(on.iter().all(|n| *n == s.doomed.1), "{app} runs on {on:?}");
        }
        wait_for(
            "the mark removed after the expiry",
            Duration::from_secs(30),
            || async {
                let node = nodes.get(&s.doomed.1).await?;
                let annotations = node.metadata.annotations.clone().unwrap_or_default();
                let tainted = node
                    .spec
                    .and_then(|s| s.taints)
                    .unwrap_or_default()
                    .iter()
                    .any(|t| t.key == "spotkube.io/interruption");
                let clean = !tainted
                    && !annotations.contains_key("spotkube.io/interruption")
                    && !annotations.contains_key(CAPACITY_REQUEST);
                Ok(clean.then_some(()))
            },
        )
        .await?;
        let metrics = controller.metrics().await?;
        assert_eq!(
            metric_value(
                &metrics,
                "spotkube_controller_capacity_rebalance_expired_total"
            ),
            Some(1.0),
            "{metrics}"
        );
        Ok(())
    }
    .await;
    s.test.report(result)
}

/// A launch template tagged `spotkube.io/pool=<pool>`.
async fn pool_template(moto: &Moto, pool: &str) -> anyhow::Result<String> {
    let out = moto
        .ec2()
        .await
        .create_launch_template()
        .launch_template_name(format!("{pool}-lt"))
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id(TEST_AMI)
                .instance_type(InstanceType::from(SPOT_TYPE))
                .build(),
        )
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::LaunchTemplate)
                .tags(Tag::builder().key("spotkube.io/pool").value(pool).build())
                .build(),
        )
        .send()
        .await?;
    Ok(out
        .launch_template()
        .and_then(|t| t.launch_template_id())
        .expect("a template id")
        .to_string())
}

/// One spot instance of `instance_type` in `zone` from `template`, in pool `pool`.
async fn launch_from(
    moto: &Moto,
    template: &str,
    pool: &str,
    instance_type: &str,
    zone: &str,
) -> anyhow::Result<String> {
    let out = moto
        .ec2()
        .await
        .run_instances()
        .launch_template(
            LaunchTemplateSpecification::builder()
                .launch_template_id(template)
                .build(),
        )
        .instance_type(InstanceType::from(instance_type))
        .placement(Placement::builder().availability_zone(zone).build())
        .instance_market_options(
            InstanceMarketOptionsRequest::builder()
                .market_type(MarketType::Spot)
                .build(),
        )
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(Tag::builder().key("spotkube.io/pool").value(pool).build())
                .build(),
        )
        .min_count(1)
        .max_count(1)
        .send()
        .await?;
    Ok(out
        .instances()
        .first()
        .and_then(|i| i.instance_id())
        .expect("an instance")
        .to_string())
}

/// A launch-template pool (a node in no Auto Scaling group): with the first two ranked
/// types of the node's zone out of capacity, the third is launched; the two are listed
/// `unavailable` in the ranking ConfigMap, and the extender scores nodes of them as an
/// unranked type while a node of the third keeps its rank. `web` never goes dark.
#[tokio::test]
async fn a_launch_template_pool_walks_the_ranking_past_offerings_out_of_capacity()
-> anyhow::Result<()> {
    let _alone = EXCLUSIVE.lock().await;
    let cluster = Cluster::shared().await?;
    let test = cluster
        .namespace_with("cap-lt", &[("spotkube.io/enabled", "true")])
        .await?;
    let result = async {
        let moto = Moto::start().await?;
        let queues = moto
            .create_queue_with_dlq(&format!("{}-events", test.name), 3)
            .await?;
        let configmap = format!("{}/spotkube-ranking", test.name);
        let controller = cluster
            .start_controller(
                moto.controller_options(&queues.url, &test.name)
                    .arg("--publish-ranking")
                    .arg("--source=aws")
                    .arg("--region=us-east-1")
                    .arg(format!("--ranking-configmap={configmap}"))
                    .arg("--capacity-interval=1s")
                    .arg("--scale-back-interval=1s"),
            )
            .await?;
        let cms: Api<ConfigMap> = Api::namespaced(test.client.clone(), &test.name);
        let ranking = wait_for("the ranking published", Duration::from_secs(60), || async {
            Ok(match cms.get_opt("spotkube-ranking").await? {
                Some(cm) => Some(Ranking::from_json(
                    &cm.data.unwrap_or_default()["ranking.json"],
                )?),
                None => None,
            })
        })
        .await?;
        let zone = ZONES[0];
        let ranked: Vec<String> = ranking.zones[zone]
            .iter()
            .map(|e| e.instance_type.clone())
            .collect();
        anyhow::ensure!(ranked.len() >= 4, "{zone} ranks {ranked:?}");
        let template = pool_template(&moto, &test.name).await?;
        let registrar = Registrar::start(
            &moto,
            test.client.clone(),
            RegistrarOptions::default()
                .join_delay(Duration::from_secs(2))
                .label(POOL, test.name.clone()),
        )
        .await;
        let doomed = launch_from(&moto, &template, &test.name, &ranked[3], zone).await?;
        let doomed_node = wait_for("the node joins", Duration::from_secs(60), || async {
            Ok(registrar.node_name(&doomed))
        })
        .await?;
        create_workload(&test, "web", 1).await?;
        wait_for_rollout(&test.client, &test.name, "web", Duration::from_secs(60)).await?;
        wait_for_ready_endpoints(&test.client, &test.name, "web", 1, Duration::from_secs(30))
            .await?;
        let web = EndpointWatch::start(&test.client, &test.name, "web");

        let out: Vec<String> = ranked[..2].iter().map(|t| format!("{t}@{zone}")).collect();
        let out: Vec<&str> = out.iter().map(String::as_str).collect();
        moto.set_insufficient_capacity(&out).await?;
        moto.send_event(
            &queues.url,
            EventKind::RebalanceRecommendation,
            &doomed,
            jiff::Timestamp::now(),
        )
        .await?;
        let nodes: Api<Node> = Api::all(test.client.clone());
        let replacement = wait_for("the node replaced", Duration::from_secs(120), || async {
            if nodes.get_opt(&doomed_node).await?.is_some() {
                return Ok(None);
            }
            Ok(registrar
                .joined()
                .into_iter()
                .find(|(instance, _)| *instance != doomed))
        })
        .await?;
        let launched =
            autoscaling::ec2_instances(&moto, std::slice::from_ref(&replacement.0)).await?;
        let launched_type = launched[0].instance_type().map(|t| t.as_str().to_string());
        assert_eq!(
            launched_type.as_deref(),
            Some(ranked[2].as_str()),
            "the third ranked type"
        );
        let pods: Api<Pod> = Api::namespaced(test.client.clone(), &test.name);
        wait_for(
            "web on the replacement",
            Duration::from_secs(60),
            || async {
                let on: Vec<String> = pods
                    .list(&ListParams::default().labels("app=web"))
                    .await?
                    .items
                    .into_iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .filter_map(|p| p.spec.and_then(|s| s.node_name))
                    .collect();
                Ok((on == [replacement.1.clone()]).then_some(()))
            },
        )
        .await?;
        let (min, _) = web.finish().await;
        assert!(min >= 1, "web went dark");

        // The two offerings are published unavailable.
        let now = jiff::Timestamp::now();
        let published = wait_for("the marks published", Duration::from_secs(30), || async {
            let cm = cms.get("spotkube-ranking").await?;
            let r = Ranking::from_json(&cm.data.unwrap_or_default()["ranking.json"])?;
            let both = ranked[..2]
                .iter()
                .all(|t| r.is_unavailable(zone, t, spotkube_shared::node::CapacityType::Spot, now));
            Ok(both.then_some(r))
        })
        .await?;
        assert!(!published.is_unavailable(
            zone,
            &ranked[2],
            spotkube_shared::node::CapacityType::Spot,
            now
        ));
        // The extender scores a node of a marked type as unranked (2), the third keeps
        // its rank (3 → 8).
        let marked = FakeNode::spot(&ranked[0], zone);
        let kept = FakeNode::spot(&ranked[2], zone);
        marked.create(&test.client).await?;
        kept.create(&test.client).await?;
        let extender = cluster
            .start_extender(ProgramOptions {
                args: vec![format!("--ranking-configmap={configmap}")],
                ..Default::default()
            })
            .await?;
        let http = reqwest::Client::new();
        let probe = serde_json::json!({
            "Pod": {"metadata": {"name": "probe"}},
            "Nodes": null,
            "NodeNames": [marked.name, kept.name],
        });
        wait_for(
            "the extender scores the marks",
            Duration::from_secs(30),
            || async {
                let body: Value = http
                    .post(format!("{}/prioritize", extender.url()))
                    .json(&probe)
                    .send()
                    .await?
                    .json()
                    .await?;
                let score = |name: &str| {
                    body.as_array()
                        .into_iter()
                        .flatten()
                        .find(|h| h["Host"] == name)
                        .map(|h| h["Score"].clone())
                };
                let want = (Some(serde_json::json!(2)), Some(serde_json::json!(8)));
                Ok(((score(&marked.name), score(&kept.name)) == want).then_some(()))
            },
        )
        .await?;
        let metrics = controller.metrics().await?;
        assert!(
            metrics.contains("spotkube_controller_capacity_offerings_marked_total"),
            "{metrics}"
        );
        assert_eq!(
            moto.calls("TerminateInstances").await?,
            1,
            "the old instance"
        );
        Ok(())
    }
    .await;
    test.report(result)
}

/// A rebalance recommendation spot cannot answer (the pool's spot group at MaxSize, no
/// on-demand group) moves a `fallback: fargate` workload to Fargate at once, while there
/// is time, with zero gap; the others stay on the node, which stays PreferNoSchedule.
#[tokio::test]
async fn a_rebalance_spot_cannot_replace_moves_fallback_fargate_workloads_early()
-> anyhow::Result<()> {
    let _alone = EXCLUSIVE.lock().await;
    let s = Scenario::start_with("cap-fargate", Duration::from_secs(2), 1, 0).await?;
    let result = async {
        let cluster = Cluster::shared().await?;
        let profile = format!("{}:spotkube.io/fargate=true", s.test.name);
        let stand_in = spotkube_rig::fargate::FargateStandIn::shared(cluster).await?;
        let _served = stand_in.serve(
            profile.parse()?,
            spotkube_rig::fargate::FargateOptions {
                start_delay: Duration::from_secs(5),
                ..Default::default()
            },
        );
        workloads::create_on_pool(
            &s.test.client,
            &s.test.name,
            "shop",
            1,
            (POOL, &s.test.name),
        )
        .await?;
        let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
            Api::namespaced(s.test.client.clone(), &s.test.name);
        let fallback = serde_json::json!({ "metadata": { "annotations": {
            "spotkube.io/fallback": "fargate" } } });
        deployments
            .patch(
                "shop",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&fallback),
            )
            .await?;
        wait_for_ready_endpoints(
            &s.test.client,
            &s.test.name,
            "shop",
            1,
            Duration::from_secs(60),
        )
        .await?;
        let _controller = cluster
            .start_controller(
                s.options("only")
                    .arg(format!("--fargate-profile={profile}")),
            )
            .await?;
        let shop = EndpointWatch::start(&s.test.client, &s.test.name, "shop");
        s.send(EventKind::RebalanceRecommendation).await?;
        wait_for("shop on Fargate", Duration::from_secs(60), || async {
            let on = s.nodes_of("shop").await?;
            let d = deployments.get("shop").await?;
            let state = d
                .metadata
                .annotations
                .unwrap_or_default()
                .get("spotkube.io/state")
                .cloned();
            let moved = state.as_deref() == Some("fargate")
                && !on.is_empty()
                && on.iter().all(|n| n.starts_with("fargate-ip-"));
            Ok(moved.then_some(()))
        })
        .await?;
        let d = deployments.get("shop").await?;
        let reason = d.metadata.annotations.unwrap_or_default()["spotkube.io/reason"].clone();
        assert!(
            reason.contains("no spot replacement") && reason.contains("MaxSize"),
            "{reason}"
        );
        // The rest waits on the node for an interruption that may never come.
        for app in ["web", "api"] {
            let on = s.nodes_of(app).await?;
            assert!(on.iter().all(|n| *n == s.doomed.1), "{app} runs on {on:?}");
        }
        let (min, samples) = shop.finish().await;
        assert!(samples > 20, "only {samples} samples");
        assert!(min >= 1, "shop had {min} ready endpoints at some point");
        // The node stays marked until its expiry: gone with the test, so the next test's
        // leader (every capacity loop is cluster-wide) has nothing of it to expire.
        Api::<Node>::all(s.test.client.clone())
            .delete(&s.doomed.1, &kube::api::DeleteParams::default())
            .await?;
        Ok(())
    }
    .await;
    s.test.report(result)
}
