//! Prices from AWS: DescribeInstanceTypes (facts), DescribeSpotPriceHistory (latest
//! Linux spot price per AZ and type), Pricing GetProducts (on-demand Linux, shared
//! tenancy, no pre-installed software, capacity status `Used`). Every call is paginated
//! by hand (so each page can be retried) and throttling is retried with backoff.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{InstanceType, InstanceTypeInfo as Ec2Type};
use aws_sdk_pricing::types::{Filter as PricingFilter, FilterType};
use spotkube_shared::ranking::{Criteria, InstanceTypeInfo, PriceBook, admits, vpc_cni_max_pods};

use super::advisor::SpotAdvisor;
use super::{PriceSource, SpotPrices};
use crate::aws::send_retrying_throttling;
use crate::error::Error;

pub struct AwsSource {
    ec2: aws_sdk_ec2::Client,
    pricing: aws_sdk_pricing::Client,
    region: String,
    /// Where interruption bands come from: the AWS APIs do not publish them.
    advisor: Option<SpotAdvisor>,
    /// `MaxResults` of DescribeSpotPriceHistory pages (AWS allows up to 1000).
    spot_page_size: i32,
    /// `MaxResults` of DescribeInstanceTypes pages (AWS: 5..=100); `None` = AWS's default.
    instance_types_page_size: Option<i32>,
}

impl AwsSource {
    /// `pricing` should be a client in a Pricing API region (`us-east-1`); `region` is
    /// the region to rank.
    pub fn new(ec2: aws_sdk_ec2::Client, pricing: aws_sdk_pricing::Client, region: String) -> Self {
        AwsSource {
            ec2,
            pricing,
            region,
            advisor: None,
            spot_page_size: 1000,
            instance_types_page_size: None,
        }
    }

    /// Smaller DescribeSpotPriceHistory pages (tests exercise pagination with it).
    pub fn with_spot_page_size(mut self, size: i32) -> Self {
        self.spot_page_size = size.clamp(1, 1000);
        self
    }

    /// Smaller DescribeInstanceTypes pages (tests exercise pagination with it).
    pub fn with_instance_types_page_size(mut self, size: Option<i32>) -> Self {
        self.instance_types_page_size = size.map(|s| s.clamp(5, 100));
        self
    }

    /// Takes interruption bands from the Spot Advisor feed; without it the band
    /// criterion cannot apply and every type passes it.
    pub fn with_spot_advisor(mut self, advisor: SpotAdvisor) -> Self {
        self.advisor = Some(advisor);
        self
    }

    /// Builds both clients from one SDK config; Pricing is pinned to `us-east-1`, its
    /// main endpoint, unless `AWS_ENDPOINT_URL` points everything elsewhere.
    pub fn from_config(config: &aws_config::SdkConfig, region: String) -> Self {
        let ec2 = aws_sdk_ec2::Client::new(config);
        let pricing_conf = aws_sdk_pricing::config::Builder::from(config)
            .region(aws_config::Region::new("us-east-1"))
            .build();
        AwsSource::new(
            ec2,
            aws_sdk_pricing::Client::from_conf(pricing_conf),
            region,
        )
    }

    async fn instance_types(&self) -> Result<BTreeMap<String, InstanceTypeInfo>, Error> {
        let mut types = BTreeMap::new();
        let mut token: Option<String> = None;
        loop {
            let call = || async {
                self.ec2
                    .describe_instance_types()
                    .set_max_results(self.instance_types_page_size)
                    .set_next_token(token.clone())
                    .send()
                    .await
            };
            let page = send_retrying_throttling("DescribeInstanceTypes", call).await?;
            for t in page.instance_types() {
                if let Some((name, info)) = type_info(t) {
                    types.insert(name, info);
                }
            }
            token = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                return Ok(types);
            }
        }
    }

    /// Latest Linux/UNIX spot price per AZ and type, for `names` only.
    async fn spot_prices_of(&self, names: &[String]) -> Result<SpotPrices, Error> {
        let mut latest: BTreeMap<(String, String), (aws_smithy_types::DateTime, f64)> =
            BTreeMap::new();
        let now = aws_smithy_types::DateTime::from(std::time::SystemTime::now());
        // The API takes instance types as a filter; keep requests small.
        for chunk in names.chunks(100) {
            let mut token: Option<String> = None;
            loop {
                let call = || async {
                    self.ec2
                        .describe_spot_price_history()
                        .set_instance_types(Some(
                            chunk
                                .iter()
                                .map(|n| InstanceType::from(n.as_str()))
                                .collect(),
                        ))
                        .product_descriptions("Linux/UNIX")
                        .max_results(self.spot_page_size)
                        // With start = end = now, AWS answers the price in force now.
                        .start_time(now)
                        .end_time(now)
                        .set_next_token(token.clone())
                        .send()
                        .await
                };
                let page = send_retrying_throttling("DescribeSpotPriceHistory", call).await?;
                for p in page.spot_price_history() {
                    let (Some(zone), Some(t), Some(price), Some(ts)) = (
                        p.availability_zone(),
                        p.instance_type(),
                        p.spot_price(),
                        p.timestamp(),
                    ) else {
                        continue;
                    };
                    let Ok(price) = price.parse::<f64>() else {
                        return Err(Error::Aws {
                            operation: "DescribeSpotPriceHistory",
                            message: format!("spot price {price:?} is not a number"),
                        });
                    };
                    let key = (zone.to_string(), t.as_str().to_string());
                    match latest.get(&key) {
                        Some((seen, _)) if seen.as_nanos() >= ts.as_nanos() => {}
                        _ => {
                            latest.insert(key, (*ts, price));
                        }
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
        }
        let mut spot: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        for ((zone, name), (_, price)) in latest {
            spot.entry(zone).or_default().insert(name, price);
        }
        Ok(spot)
    }

    /// On-demand Linux $/hour per type in the region.
    async fn on_demand(&self) -> Result<BTreeMap<String, f64>, Error> {
        let filter = |field: &str, value: &str| {
            PricingFilter::builder()
                .r#type(FilterType::TermMatch)
                .field(field)
                .value(value)
                .build()
                .expect("filter has every required field")
        };
        let filters = vec![
            filter("regionCode", &self.region),
            filter("operatingSystem", "Linux"),
            filter("tenancy", "Shared"),
            filter("preInstalledSw", "NA"),
            filter("capacitystatus", "Used"),
        ];
        let mut prices = BTreeMap::new();
        let mut token: Option<String> = None;
        loop {
            let call = || async {
                self.pricing
                    .get_products()
                    .service_code("AmazonEC2")
                    .set_filters(Some(filters.clone()))
                    .format_version("aws_v1")
                    .set_next_token(token.clone())
                    .send()
                    .await
            };
            let page = send_retrying_throttling("GetProducts", call).await?;
            for item in page.price_list() {
                if let Some((name, price)) = parse_price_item(item)? {
                    prices.entry(name).or_insert(price);
                }
            }
            token = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                return Ok(prices);
            }
        }
    }
}

/// Reads one `DescribeInstanceTypes` entry.
fn type_info(t: &Ec2Type) -> Option<(String, InstanceTypeInfo)> {
    let name = t.instance_type()?.as_str().to_string();
    let network = t.network_info();
    let max_pods = network.and_then(|n| {
        Some(vpc_cni_max_pods(
            u32::try_from(n.maximum_network_interfaces()?).ok()?,
            u32::try_from(n.ipv4_addresses_per_interface()?).ok()?,
        ))
    });
    let info = InstanceTypeInfo {
        vcpu: u32::try_from(t.v_cpu_info()?.default_v_cpus()?).ok()?,
        memory_gib: t.memory_info()?.size_in_mib()? as f64 / 1024.0,
        architectures: t
            .processor_info()
            .map(|p| {
                p.supported_architectures()
                    .iter()
                    .map(|a| a.as_str().to_string())
                    .collect()
            })
            .unwrap_or_default(),
        current_generation: t.current_generation(),
        burstable: t.burstable_performance_supported(),
        bare_metal: t.bare_metal(),
        interruption_band: None,
        max_pods,
    };
    Some((name, info))
}

/// One GetProducts price-list item (a JSON document as a string) → (type, $/hour).
/// Items without an instance type or a positive USD price are skipped.
pub fn parse_price_item(item: &str) -> Result<Option<(String, f64)>, Error> {
    let bad = |message: String| Error::Aws {
        operation: "GetProducts",
        message,
    };
    let doc: serde_json::Value =
        serde_json::from_str(item).map_err(|e| bad(format!("price item is not JSON: {e}")))?;
    let Some(name) = doc
        .pointer("/product/attributes/instanceType")
        .and_then(|v| v.as_str())
    else {
        return Ok(None);
    };
    let terms = doc.pointer("/terms/OnDemand").and_then(|v| v.as_object());
    let price = terms
        .into_iter()
        .flat_map(|t| t.values())
        .filter_map(|term| term.get("priceDimensions")?.as_object())
        .flat_map(|dims| dims.values())
        .filter_map(|dim| {
            dim.pointer("/pricePerUnit/USD")?
                .as_str()?
                .parse::<f64>()
                .ok()
        })
        .find(|p| *p > 0.0);
    Ok(price.map(|p| (name.to_string(), p)))
}

impl PriceSource for AwsSource {
    fn name(&self) -> &'static str {
        "aws"
    }

    async fn price_book(&self, criteria: &Criteria) -> Result<PriceBook, Error> {
        let mut types = self.instance_types().await?;
        let bands = match &self.advisor {
            Some(advisor) => Some(advisor.bands(&self.region).await?),
            None => None,
        };
        for (name, info) in types.iter_mut() {
            info.interruption_band = bands.as_ref().and_then(|b| b.by_type.get(name).copied());
        }
        // Ask prices only for types that could rank.
        let candidates: Vec<String> = types
            .iter()
            .filter(|(name, info)| admits(criteria, name, info))
            .map(|(name, _)| name.clone())
            .collect();
        tracing::debug!(
            types = types.len(),
            candidates = candidates.len(),
            "instance types read"
        );
        let spot = self.spot_prices_of(&candidates).await?;
        let on_demand = self.on_demand().await?;
        Ok(PriceBook {
            region: Some(self.region.clone()),
            types,
            spot,
            on_demand,
            bands_fallback: bands.and_then(|b| b.fallback),
        })
    }

    async fn spot_prices(&self, types: &[String]) -> Result<SpotPrices, Error> {
        self.spot_prices_of(types).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_items_yield_type_and_usd() {
        let item = r#"{"product":{"attributes":{"instanceType":"c7g.large","operatingSystem":"Linux"}},
            "terms":{"OnDemand":{"X.JRTCKXETXF":{"priceDimensions":{"X.JRTCKXETXF.6YS6EN2CT7":
            {"unit":"Hrs","pricePerUnit":{"USD":"0.0725000000"}}}}}}}"#;
        assert_eq!(
            parse_price_item(item).unwrap(),
            Some(("c7g.large".into(), 0.0725))
        );
        assert_eq!(
            parse_price_item(r#"{"product":{"attributes":{}}}"#).unwrap(),
            None
        );
        let zero = item.replace("0.0725000000", "0.0000000000");
        assert_eq!(parse_price_item(&zero).unwrap(), None);
        assert!(parse_price_item("not json").is_err());
    }
}
