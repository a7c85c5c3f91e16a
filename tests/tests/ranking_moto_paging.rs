//! The AWS price source's resilience against moto: DescribeInstanceTypes followed through
//! many NextTokens (the rig's wrapper pages moto's catalogue when `MaxResults` is given)
//! and throttled DescribeSpotPriceHistory / Pricing GetProducts calls retried with backoff
//! (the wrapper's throttling switch), each proved by the wrapper's call counters.

use aws_sdk_ec2::error::ProvideErrorMetadata;
use spotkube_rig::aws::Moto;
use spotkube_shared::ranking::Ranking;

/// `spotkube-controller rank --source aws --output json` against `moto`.
async fn rank_from_moto(
    moto: &Moto,
    extra: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<Ranking> {
    Ok(moto.rank(extra, env).await?)
}

/// The SDK's own retries off (`AWS_MAX_ATTEMPTS=1`): only the source's backoff can
/// absorb a throttled call.
const NO_SDK_RETRIES: &[(&str, &str)] = &[("AWS_MAX_ATTEMPTS", "1")];

const PAGE: usize = 20;

#[tokio::test]
async fn instance_types_read_through_many_pages_rank_like_one_page() -> anyhow::Result<()> {
    let moto = Moto::start().await?;
    let one_page = rank_from_moto(&moto, &[], NO_SDK_RETRIES).await?;
    assert_eq!(
        moto.calls("DescribeInstanceTypes").await?,
        1,
        "without a page size moto answers the whole catalogue at once"
    );
    assert_eq!(one_page.zones.len(), 3);
    assert!(
        one_page.zones.values().all(|z| z.len() == 6),
        "{one_page:?}"
    );

    // The size of moto's catalogue, from one unpaged call of our own.
    let catalogue = moto
        .ec2()
        .await
        .describe_instance_types()
        .send()
        .await?
        .instance_types()
        .len();
    assert!(catalogue > 10 * PAGE, "catalogue of {catalogue} types");
    let before = moto.calls("DescribeInstanceTypes").await?;

    let paged = rank_from_moto(
        &moto,
        &["--instance-types-page-size", &PAGE.to_string()],
        NO_SDK_RETRIES,
    )
    .await?;
    assert_eq!(paged.zones, one_page.zones);
    assert_eq!(
        moto.calls("DescribeInstanceTypes").await? - before,
        catalogue.div_ceil(PAGE) as u64,
        "every page of {PAGE} read, once"
    );
    Ok(())
}

#[tokio::test]
async fn throttled_spot_and_on_demand_calls_are_retried_to_the_same_ranking() -> anyhow::Result<()>
{
    let moto = Moto::start().await?;
    let calm = rank_from_moto(&moto, &[], NO_SDK_RETRIES).await?;
    let spot_calls = moto.calls("DescribeSpotPriceHistory").await?;
    let product_calls = moto.calls("GetProducts").await?;
    assert!(spot_calls >= 1 && product_calls >= 1);

    // The switch answers as AWS does: the SDK sees the throttling codes by name.
    moto.throttle("DescribeSpotPriceHistory", 1).await?;
    let err = moto
        .ec2()
        .await
        .describe_spot_price_history()
        .send()
        .await
        .expect_err("throttled");
    assert_eq!(err.code(), Some("RequestLimitExceeded"), "{err:?}");
    moto.throttle("GetProducts", 1).await?;
    let err = moto
        .pricing()
        .await
        .get_products()
        .service_code("AmazonEC2")
        .send()
        .await
        .expect_err("throttled");
    assert_eq!(
        aws_sdk_pricing::error::ProvideErrorMetadata::code(&err),
        Some("ThrottlingException"),
        "{err:?}"
    );
    // Both switches are used up: the next calls go through.
    moto.ec2()
        .await
        .describe_spot_price_history()
        .max_results(5)
        .send()
        .await?;
    let spot_before = moto.calls("DescribeSpotPriceHistory").await?;
    let products_before = moto.calls("GetProducts").await?;

    moto.throttle("DescribeSpotPriceHistory", 2).await?;
    moto.throttle("GetProducts", 2).await?;
    let throttled = rank_from_moto(&moto, &[], NO_SDK_RETRIES).await?;
    assert_eq!(throttled.zones, calm.zones);
    assert_eq!(
        moto.calls("DescribeSpotPriceHistory").await? - spot_before,
        spot_calls + 2,
        "two throttled attempts retried"
    );
    assert_eq!(
        moto.calls("GetProducts").await? - products_before,
        product_calls + 2,
        "two throttled attempts retried"
    );
    Ok(())
}
