//! Rig self-tests for AWS: moto as it is (SQS + DLQ, EC2, Auto Scaling) and spotkube's
//! additions next to it (Pricing GetProducts, seeded spot prices, the ICE switch), all
//! driven through the real AWS SDK.

use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, FleetLaunchTemplateConfigRequest,
    FleetLaunchTemplateOverridesRequest, FleetLaunchTemplateSpecificationRequest, FleetType,
    InstanceType, RequestLaunchTemplateData, TargetCapacitySpecificationRequest,
};
use aws_sdk_pricing::types::{Filter, FilterType};
use serde_json::Value;
use spotkube_rig::aws::{EventKind, Moto};

/// Every test gets a private moto, so resets and switches never race between tests.
async fn moto() -> Moto {
    Moto::start().await.expect("moto starts")
}

#[tokio::test]
async fn sqs_queue_redrives_to_its_dlq() -> anyhow::Result<()> {
    let moto = moto().await;
    let queues = moto.create_queue_with_dlq("spotkube-events", 2).await?;
    let event = moto
        .send_event(
            &queues.url,
            EventKind::SpotInterruptionWarning,
            "i-0123456789abcdef0",
            jiff::Timestamp::now(),
        )
        .await?;
    assert_eq!(event["detail"]["instance-id"], "i-0123456789abcdef0");
    assert!(
        event["resources"][0]
            .as_str()
            .unwrap()
            .ends_with("/i-0123456789abcdef0")
    );

    let sqs = moto.sqs().await;
    // Receive it twice without deleting (visibility 0 hands it right back) ...
    for _ in 0..2 {
        let got = sqs
            .receive_message()
            .queue_url(&queues.url)
            .visibility_timeout(0)
            .wait_time_seconds(1)
            .send()
            .await?;
        let messages = got.messages.unwrap_or_default();
        assert_eq!(messages.len(), 1);
        let body: Value = serde_json::from_str(messages[0].body.as_deref().unwrap())?;
        assert_eq!(
            body["detail-type"],
            "EC2 Spot Instance Interruption Warning"
        );
    }
    // ... and the third receive finds it moved to the DLQ.
    let got = sqs
        .receive_message()
        .queue_url(&queues.url)
        .wait_time_seconds(1)
        .send()
        .await?;
    assert!(got.messages.unwrap_or_default().is_empty());
    let dead = sqs
        .receive_message()
        .queue_url(&queues.dlq_url)
        .wait_time_seconds(1)
        .send()
        .await?;
    assert_eq!(dead.messages.unwrap_or_default().len(), 1);
    Ok(())
}

#[tokio::test]
async fn events_are_the_fixtures_with_the_instance_substituted() -> anyhow::Result<()> {
    let at = jiff::Timestamp::from_second(1_795_000_000)?;
    let e = spotkube_rig::aws::event(
        EventKind::InstanceStateChange("terminated"),
        "i-0aaaabbbbccccdddd",
        at,
    )?;
    assert_eq!(e["detail"]["state"], "terminated");
    assert_eq!(e["time"], at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    let h = spotkube_rig::aws::event(EventKind::HealthScheduledChange, "i-0aaaabbbbccccdddd", at)?;
    assert!(
        h["detail"]["affectedEntities"][0]["entityValue"]
            .as_str()
            .unwrap()
            .ends_with("/i-0aaaabbbbccccdddd")
    );
    let r = spotkube_rig::aws::event(
        EventKind::RebalanceRecommendation,
        "i-0aaaabbbbccccdddd",
        at,
    )?;
    assert_eq!(r["detail"]["instance-id"], "i-0aaaabbbbccccdddd");
    Ok(())
}

#[tokio::test]
async fn pricing_get_products_serves_the_snapshot_with_filters_and_pages() -> anyhow::Result<()> {
    let moto = moto().await;
    let pricing = moto.pricing().await;
    let term = |field: &str, value: &str| {
        Filter::builder()
            .r#type(FilterType::TermMatch)
            .field(field)
            .value(value)
            .build()
            .unwrap()
    };
    let out = pricing
        .get_products()
        .service_code("AmazonEC2")
        .filters(term("instanceType", "m7g.large"))
        .filters(term("operatingSystem", "Linux"))
        .filters(term("tenancy", "Shared"))
        .filters(term("preInstalledSw", "NA"))
        .filters(term("capacitystatus", "Used"))
        .filters(term("regionCode", "us-east-1"))
        .send()
        .await?;
    let list = out.price_list.unwrap_or_default();
    assert_eq!(list.len(), 1, "exactly one Linux/Shared/NA/Used product");
    let product: Value = serde_json::from_str(&list[0])?;
    let snapshot: Value = serde_json::from_str(&std::fs::read_to_string(
        spotkube_rig::nodes::price_snapshot_path(),
    )?)?;
    let expected = snapshot["regions"]["us-east-1"]["on_demand_usd_per_hour"]["m7g.large"]
        .as_f64()
        .unwrap();
    let dims = product["terms"]["OnDemand"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()["priceDimensions"]
        .clone();
    let usd: f64 = dims.as_object().unwrap().values().next().unwrap()["pricePerUnit"]["USD"]
        .as_str()
        .unwrap()
        .parse()?;
    assert!((usd - expected).abs() < 1e-9, "{usd} vs {expected}");
    assert_eq!(
        product["product"]["attributes"]["location"],
        "US East (N. Virginia)"
    );

    // Without the OS/tenancy/software/capacity filters the decoys show up too.
    let all = pricing
        .get_products()
        .service_code("AmazonEC2")
        .filters(term("instanceType", "m7g.large"))
        .send()
        .await?;
    assert_eq!(all.price_list.unwrap_or_default().len(), 6);

    // Pagination: every Linux/Shared/NA/Used product, 100 per page, no duplicates.
    let mut seen = std::collections::HashSet::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let page = pricing
            .get_products()
            .service_code("AmazonEC2")
            .filters(term("operatingSystem", "Linux"))
            .filters(term("tenancy", "Shared"))
            .filters(term("preInstalledSw", "NA"))
            .filters(term("capacitystatus", "Used"))
            .max_results(100)
            .set_next_token(token)
            .send()
            .await?;
        pages += 1;
        for entry in page.price_list.unwrap_or_default() {
            let v: Value = serde_json::from_str(&entry)?;
            assert!(
                seen.insert(
                    v["product"]["attributes"]["instanceType"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                )
            );
        }
        token = page.next_token;
        if token.is_none() {
            break;
        }
    }
    let on_demand = snapshot["regions"]["us-east-1"]["on_demand_usd_per_hour"]
        .as_object()
        .unwrap()
        .len();
    assert_eq!(seen.len(), on_demand);
    assert!(pages > 1);
    Ok(())
}

#[tokio::test]
async fn spot_prices_are_seeded_per_zone_and_can_be_overridden() -> anyhow::Result<()> {
    let moto = moto().await;
    let ec2 = moto.ec2().await;
    let history = |zone: &'static str| {
        let ec2 = ec2.clone();
        async move {
            ec2.describe_spot_price_history()
                .instance_types(InstanceType::from("m7g.large"))
                .product_descriptions("Linux/UNIX")
                .availability_zone(zone)
                .send()
                .await
                .map(|o| o.spot_price_history.unwrap_or_default())
        }
    };
    let snapshot: Value = serde_json::from_str(&std::fs::read_to_string(
        spotkube_rig::nodes::price_snapshot_path(),
    )?)?;
    let od = snapshot["regions"]["us-east-1"]["on_demand_usd_per_hour"]["m7g.large"]
        .as_f64()
        .unwrap();
    let savings = snapshot["regions"]["us-east-1"]["spot"]["m7g.large"]["savings_percent"]
        .as_f64()
        .unwrap();
    for (zone, factor) in [
        ("us-east-1a", 1.00),
        ("us-east-1b", 1.03),
        ("us-east-1c", 0.97),
    ] {
        let points = history(zone).await?;
        assert_eq!(points.len(), 2, "current and older point in {zone}");
        // Newest first, as AWS answers.
        let latest: f64 = points[0].spot_price.as_deref().unwrap().parse()?;
        let expected = od * (1.0 - savings / 100.0) * factor;
        assert!(
            (latest - expected).abs() < 1e-5,
            "{zone}: {latest} vs {expected}"
        );
        assert_eq!(points[0].availability_zone.as_deref(), Some(zone));
        assert_eq!(
            points[0].product_description.as_ref().unwrap().as_str(),
            "Linux/UNIX"
        );
    }

    moto.seed_spot_price("m7g.large", "us-east-1b", 0.0123)
        .await?;
    let points = history("us-east-1b").await?;
    assert_eq!(points.len(), 3);
    assert_eq!(points[0].spot_price.as_deref(), Some("0.012300"));
    // Other zones are untouched.
    assert_eq!(history("us-east-1a").await?.len(), 2);

    // Pagination over the whole table.
    let page = ec2
        .describe_spot_price_history()
        .max_results(50)
        .send()
        .await?;
    assert_eq!(page.spot_price_history.unwrap_or_default().len(), 50);
    assert!(page.next_token.is_some_and(|t| !t.is_empty()));
    Ok(())
}

#[tokio::test]
async fn insufficient_capacity_switch_fails_run_instances_and_create_fleet() -> anyhow::Result<()> {
    let moto = moto().await;
    moto.set_insufficient_capacity(&["m7g.large@us-east-1b", "c7g.large"])
        .await?;

    // type@AZ: only that AZ fails.
    let err = moto
        .run_instances("m7g.large", "us-east-1b", true, 1)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("InsufficientInstanceCapacity"),
        "{err}"
    );
    assert_eq!(
        moto.run_instances("m7g.large", "us-east-1a", true, 1)
            .await?
            .len(),
        1
    );
    // bare type: every AZ fails.
    for zone in spotkube_rig::ZONES {
        assert!(
            moto.run_instances("c7g.large", zone, false, 1)
                .await
                .is_err()
        );
    }

    let ec2 = moto.ec2().await;
    ec2.create_launch_template()
        .launch_template_name("fleet-lt")
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id(spotkube_rig::aws::TEST_AMI)
                .build(),
        )
        .send()
        .await?;
    let fleet = |overrides: Vec<(&'static str, &'static str)>| {
        let ec2 = ec2.clone();
        async move {
            let mut config = FleetLaunchTemplateConfigRequest::builder()
                .launch_template_specification(
                    FleetLaunchTemplateSpecificationRequest::builder()
                        .launch_template_name("fleet-lt")
                        .version("$Latest")
                        .build(),
                );
            for (t, z) in overrides {
                config = config.overrides(
                    FleetLaunchTemplateOverridesRequest::builder()
                        .instance_type(InstanceType::from(t))
                        .availability_zone(z)
                        .build(),
                );
            }
            ec2.create_fleet()
                .r#type(FleetType::Instant)
                .launch_template_configs(config.build())
                .target_capacity_specification(
                    TargetCapacitySpecificationRequest::builder()
                        .total_target_capacity(1)
                        .default_target_capacity_type(DefaultTargetCapacityType::Spot)
                        .build(),
                )
                .send()
                .await
        }
    };
    // Everything ICE'd: the call fails.
    let err = fleet(vec![
        ("c7g.large", "us-east-1a"),
        ("m7g.large", "us-east-1b"),
    ])
    .await
    .unwrap_err();
    assert!(
        format!("{}", aws_sdk_ec2::error::DisplayErrorContext(&err))
            .contains("InsufficientInstanceCapacity")
    );
    // Partly ICE'd: launched from the rest, the ICE'd override reported in Errors.
    let out = fleet(vec![
        ("c7g.large", "us-east-1a"),
        ("m7g.large", "us-east-1c"),
    ])
    .await?;
    let errors = out.errors.unwrap_or_default();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].error_code.as_deref(),
        Some("InsufficientInstanceCapacity")
    );
    let launched: Vec<_> = out.instances.unwrap_or_default();
    assert!(!launched.is_empty());
    assert!(
        launched
            .iter()
            .all(|i| i.instance_type.as_ref().map(|t| t.as_str()) == Some("m7g.large"))
    );

    // Cleared: m7g.large@us-east-1b launches again.
    moto.clear_insufficient_capacity().await?;
    assert_eq!(
        moto.run_instances("m7g.large", "us-east-1b", true, 1)
            .await?
            .len(),
        1
    );
    Ok(())
}

#[tokio::test]
async fn asg_instances_can_back_kwok_nodes() -> anyhow::Result<()> {
    let moto = moto().await;
    let ids = moto
        .create_asg("workers", "m7g.large", &["us-east-1a", "us-east-1b"], 2)
        .await?;
    assert_eq!(ids.len(), 2);
    for id in &ids {
        let zone = moto.instance_zone(id).await?;
        let node = spotkube_rig::FakeNode::spot("m7g.large", &zone)
            .with_instance_id(id)
            .to_node()?;
        assert_eq!(
            node.spec.unwrap().provider_id.unwrap(),
            format!("aws:///{zone}/{id}")
        );
    }
    let node = moto
        .launch_node("c7g.xlarge", "us-east-1c", spotkube_rig::Capacity::Spot)
        .await?;
    assert_eq!(moto.instance_zone(&node.instance_id).await?, "us-east-1c");
    let spot = moto
        .ec2()
        .await
        .describe_instances()
        .instance_ids(&node.instance_id)
        .send()
        .await?
        .reservations
        .unwrap_or_default()
        .into_iter()
        .flat_map(|r| r.instances.unwrap_or_default())
        .next()
        .and_then(|i| i.instance_lifecycle)
        .map(|l| l.as_str().to_owned());
    assert_eq!(spot.as_deref(), Some("spot"), "launched on the spot market");
    Ok(())
}
