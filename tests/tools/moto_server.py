"""moto's server (pinned moto[server]==5.2.1) with spotkube's gaps filled next to it.

Usage: python moto_server.py --port PORT --snapshot PATH [--spot-advisor PATH]

Runs moto's own WSGI app in-process and adds, without touching moto's files:

1. Pricing GetProducts (moto has no Pricing backend). AWS JSON 1.1,
   `X-Amz-Target: AWSPriceListService.GetProducts`; PriceList entries are JSON *strings*
   in the real price-list shape (product.attributes + terms.OnDemand...priceDimensions).
   Filters: TERM_MATCH / EQUALS / CONTAINS / ANY_OF / NONE_OF on any attribute
   (instanceType, operatingSystem, tenancy, preInstalledSw, capacitystatus, location,
   regionCode, ...), NextToken pagination (MaxResults <= 100). Fed from the price snapshot:
   each type's Linux/Shared/NA/Used product carries the snapshot's on-demand price; decoy
   products (Windows, RHEL, Dedicated, SQL Std, AllocatedCapacityReservation at $0) are
   priced differently, so a caller that forgets a filter gets visibly wrong answers.

2. DescribeSpotPriceHistory (moto answers a constant 0.00001). Seeded per AZ:
       spot(type, az) = on_demand(type) * (1 - savings_percent/100) * AZ_FACTOR[az]
   with AZ_FACTOR = {us-east-1a: 1.00, us-east-1b: 1.03, us-east-1c: 0.97}, rounded to 6
   decimals, for every type with both prices in the snapshot. Each (type, AZ) has two
   points: the current price one hour ago and an older one (x1.10) a day ago, so callers
   must take the latest. Product descriptions `Linux/UNIX` and `Windows` (x1.8).
   Honours InstanceTypes, AvailabilityZone, ProductDescriptions, Filter.N
   (instance-type, availability-zone, product-description), StartTime/EndTime,
   MaxResults/NextToken. Newest first, like AWS.
   `POST /spotkube/spot-prices` {"prices": [{"instance_type", "availability_zone",
   "price", "product_description"?}]} adds a newer point (now) for each entry.

3. InsufficientInstanceCapacity switch. `POST /spotkube/ice` {"capacity": ["m7g.large",
   "c7g.xlarge@us-east-1b"]} — a bare type means every AZ. RunInstances for a listed
   type/AZ fails with `InsufficientInstanceCapacity` (the type comes from InstanceType or
   the launch template, the AZ from Placement or the subnet). CreateFleet drops listed
   overrides; an instant fleet reports them in `Errors` and launches from the rest; when
   nothing is left the call fails with `InsufficientInstanceCapacity`.
   `DELETE /spotkube/ice` clears the switch.

4. DescribeInstanceTypes pagination (moto 5.2.1 ignores MaxResults and answers one page).
   With MaxResults (5..100, as AWS) moto's own answer — same InstanceTypes and Filter.N
   handling — is sliced into pages; NextToken is an opaque offset. Without MaxResults,
   moto's single page is returned untouched.

5. Throttling switch (moto never throttles). `POST /spotkube/throttle` {"action":
   "DescribeSpotPriceHistory", "count": 2} makes the next `count` calls of that action
   (EC2 query `Action=`, or the `X-Amz-Target` suffix for Pricing, e.g. "GetProducts")
   fail with HTTP 400 and the service's own error shape: EC2 XML `RequestLimitExceeded`,
   Pricing JSON `ThrottlingException`. Counts add up; `DELETE /spotkube/throttle` clears.
   Every call of every action is counted (throttled ones too): `GET /spotkube/calls`
   answers {"calls": {action: n}}, `GET /spotkube/calls?action=X` {"action": X, "count": n}.

6. Hold switch, to stop the world between two steps of a client (then SIGKILL it there).
   `POST /spotkube/hold` {"action": "DeleteMessage", "at": "request"} holds the next call
   of that action before moto sees it; {"action": "ReceiveMessage", "at": "answer"} lets
   moto answer the next call that returns messages and holds that answer. `GET
   /spotkube/hold` answers {"held": [actions held now], "armed": [actions still armed]};
   `DELETE /spotkube/hold` releases everything: a held request is answered 503 without
   reaching moto, a held answer is sent (to whoever still listens).

7. The EC2 Spot Instance Advisor feed, on loopback (AWS publishes it at
   https://spot-bid-advisor.s3.amazonaws.com/spot-advisor-data.json).
   `GET /spotkube/spot-advisor-data.json` serves the file of `--spot-advisor` (default:
   testdata/fixtures/spot-advisor-sample.json) as it is, counted in `/spotkube/calls` as
   action `spot-advisor-data.json`. `POST /spotkube/spot-advisor` with a whole feed
   document serves that instead; `DELETE /spotkube/spot-advisor` makes the feed answer
   503 (an outage) until the next POST or reset.

8. Timed fault switch, for outages and throttling storms of a stated length.
   `POST /spotkube/fault` {"actions": ["ReceiveMessage", "DeleteMessage"], "mode":
   "unavailable" | "throttle", "seconds": 30} makes every call of those actions (the
   X-Amz-Target suffix for JSON protocols such as SQS, the query `Action=` otherwise)
   fail for that many seconds from now, without reaching moto: `unavailable` answers
   HTTP 503 `ServiceUnavailable`, `throttle` HTTP 400 with the service's throttling shape
   (SQS: `{"__type": "com.amazonaws.sqs#RequestThrottled"}` and `x-amzn-query-error:
   RequestThrottled;Sender`; other JSON: `ThrottlingException`; EC2 XML:
   `RequestLimitExceeded`). The calls are counted in `/spotkube/calls` like any other,
   and the faulted ones also under `faulted:<action>`. `GET /spotkube/fault` answers
   {"faults": {action: {"mode", "seconds_left"}}}; `DELETE /spotkube/fault` ends them.

9. Auto Scaling groups that launch like AWS's. moto 5.2.1 launches a whole scale-out in
   one randomly chosen AZ (always the first subnet), only ever the launch template's type,
   never on the spot market, ignores the ICE switch, never refuses a desired capacity
   above MaxSize, and answers DescribeScalingActivities with an empty list. Kept from
   moto: groups, launch templates and configurations, DesiredCapacity bookkeeping,
   DescribeAutoScalingGroups / DescribeAutoScalingInstances, TerminateInstanceInAutoScalingGroup
   (ShouldDecrementDesiredCapacity keeps the group at its new size, without it a
   replacement is launched), EC2 TerminateInstances replacing a group's instance, the
   `aws:autoscaling:groupName` tag, propagated and launch-template tags. Replaced or added:
   - Capacity type, as AWS expresses it (the `spotkube.io/capacity` tag is only a label for
     discovery and changes nothing, as in AWS): a group with a MixedInstancesPolicy keeps
     OnDemandBaseCapacity instances on-demand, then OnDemandPercentageAboveBaseCapacity of
     the rest, rounded up in favour of on-demand (AWS's rule; moto's default distribution,
     like AWS's, is 100 % on-demand); the rest are spot. A group whose launch template has
     InstanceMarketOptions.MarketType=spot is all spot. Spot instances carry
     `InstanceLifecycle: spot` in DescribeInstances.
   - Instance type: the MixedInstancesPolicy Overrides' InstanceType in their order (a
     priority list, also for spot: AWS's spot allocation strategies are not modelled), else
     the launch template's (or launch configuration's) type. WeightedCapacity is ignored:
     one instance is one unit of DesiredCapacity.
   - Zones: each instance goes to the group's AZ (of AvailabilityZones, or of the
     VPCZoneIdentifier subnets, first subnet of an AZ) with the fewest InService instances,
     ties in the group's order, so a scale-out is spread as AWS balances it.
   - The ICE switch (3): an instance tries its AZs in that order and, in each, the types in
     priority order; it launches in the first offering the switch does not list. Every AZ
     where all types are listed gets a Failed activity (AWS moves to another AZ after a
     failed attempt), so a Failed activity can come before the instance is launched
     elsewhere. A round (one scale-out or retry) stops at the first instance that cannot
     launch anywhere and tries an AZ at most once, so it records at most one Failed
     activity per AZ. DesiredCapacity stays as requested.
   - Retries: a background thread re-applies DesiredCapacity every 1 s to every group
     below it; after a failed round a group waits 2 s before the next (AWS backs off
     longer). So clearing the switch launches the missing instances within ~3 s.
   - Scale-in removes instances from the AZ with the most InService ones, oldest first
     (AWS's default termination policy, less its launch-template rules), never
     scale-in-protected ones.
   - DescribeScalingActivities: every launch, failed launch and termination above, newest
     first; AutoScalingGroupName, ActivityIds, MaxRecords (1..100, default 100), NextToken.
     A launch: StatusCode "Successful", Description "Launching a new EC2 instance: i-...",
     Details {"Subnet ID", "Availability Zone"}. A failed launch: StatusCode "Failed",
     Description "Launching a new EC2 instance. Status Reason: <reason> Launching EC2
     instance failed.", StatusMessage "<reason> Launching EC2 instance failed.", with
     <reason> for on-demand "We currently do not have sufficient <type> capacity in the
     Availability Zone you requested (<az>). Our system will be working on provisioning
     additional capacity." and for spot "Could not launch Spot Instances.
     InsufficientInstanceCapacity - There is no Spot capacity available that matches your
     request." (Real EC2 may append "You can currently get <type> capacity by not
     specifying an Availability Zone in your request or choosing <zones>." to the
     on-demand reason: match on "InsufficientInstanceCapacity" / "sufficient ... capacity",
     not on the whole text.) Details is compact JSON, as AWS's; the subnet of a failed
     launch is named only when the group has subnets. A termination: "Terminating EC2 instance: i-...", "Successful" (moto
     terminates at once; the TerminateInstanceInAutoScalingGroup answer itself says
     "InProgress", as AWS's does).
   - Validation AWS does and moto does not (HTTP 400 `ValidationError`): SetDesiredCapacity
     above MaxSize "New SetDesiredCapacity value N is above max value M for the
     AutoScalingGroup." (below MinSize: "... is below min value M ..."), on an unknown
     group "AutoScalingGroup name not found - null"; TerminateInstanceInAutoScalingGroup
     of an instance in no group "Instance Id not found - No managed instance found for
     instance ID: i-...", with ShouldDecrementDesiredCapacity below MinSize "Currently,
     desiredCapacity is D and minSize is M. Terminating instance without replacement will
     violate group's min size constraint. Either set shouldDecrementDesiredCapacity flag to
     false or lower group's min size." HonorCooldown is accepted and ignored (as false).
   - UpdateAutoScalingGroup without a MixedInstancesPolicy keeps the group's (moto drops it).
   - EC2 and Auto Scaling calls and the retry thread take one lock, so a retry never
     changes moto's instances under a DescribeInstances.

`POST /spotkube/reset` restores the seeded prices and the served Spot Advisor feed, and
clears the ICE switch, the throttles, the holds and the call counters (moto's own
`POST /moto-api/reset` clears moto's backends, not these overrides; switch 9's scaling
activities live on moto's groups, so moto's reset clears them).
"""

import argparse
import base64
import datetime as dt
import hashlib
import io
import itertools
import json
import math
import os
import sys
import threading
import time
import urllib.parse

from moto.autoscaling.exceptions import ValidationError as AsgValidationError
from moto.autoscaling.models import ASG_NAME_TAG, FakeAutoScalingGroup, autoscaling_backends
from moto.autoscaling.models import InstanceState as AsgInstanceState
from moto.autoscaling.responses import AutoScalingResponse
from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.responses import EC2Response
from moto.ec2.responses.fleets import Fleets
from moto.ec2.responses.instances import InstanceResponse
from moto.ec2.responses.spot_instances import SpotInstances
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

REGION = "us-east-1"
LOCATION = "US East (N. Virginia)"
AZ_FACTOR = {"us-east-1a": 1.00, "us-east-1b": 1.03, "us-east-1c": 0.97}
WINDOWS_SPOT_FACTOR = 1.8
OLD_POINT_FACTOR = 1.10

LOCK = threading.Lock()
# spot: (type, az, product) -> [(datetime, price)]; throttle/calls: action -> count
# advisor: the Spot Advisor feed served now (bytes), None during an outage
# faults: action -> (mode, time.monotonic() deadline)
STATE = {"spot": {}, "ice": set(), "throttle": {}, "calls": {}, "armed": {}, "held": [], "advisor": None, "faults": {}}
SPOT_ADVISOR_FEED = "spot-advisor-data.json"
DEFAULT_SPOT_ADVISOR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "testdata", "fixtures", "spot-advisor-sample.json"
)


def utcnow():
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def iso(ts):
    return ts.strftime("%Y-%m-%dT%H:%M:%S.000Z")


# ---------------------------------------------------------------- snapshot-derived data


def load_snapshot(path):
    with open(path) as f:
        snap = json.load(f)
    region = snap["regions"][REGION]
    return snap["instance_specs"], region["on_demand_usd_per_hour"], region["spot"], snap.get("on_demand_generated_at")


def load_spot_advisor(path):
    """The feed's bytes, served as they are; parsed once so a broken file fails at start."""
    with open(path, "rb") as f:
        raw = f.read()
    json.loads(raw)
    return raw


def seeded_spot_prices(on_demand, spot):
    """(type, az, product) -> [(ts, price)] oldest first, per the module docstring."""
    now = utcnow()
    series = {}
    for itype, info in spot.items():
        od = on_demand.get(itype)
        if not od:
            continue
        base = od * (1 - info["savings_percent"] / 100.0)
        for az, factor in AZ_FACTOR.items():
            linux = round(base * factor, 6)
            for product, p in (("Linux/UNIX", linux), ("Windows", round(linux * WINDOWS_SPOT_FACTOR, 6))):
                series[(itype, az, product)] = [
                    (now - dt.timedelta(days=1), round(p * OLD_POINT_FACTOR, 6)),
                    (now - dt.timedelta(hours=1), p),
                ]
    return series


def family_name(itype):
    prefix = itype[0]
    return {
        "c": "Compute optimized",
        "m": "General purpose",
        "t": "General purpose",
        "a": "General purpose",
        "r": "Memory optimized",
        "x": "Memory optimized",
        "z": "Memory optimized",
        "i": "Storage optimized",
        "d": "Storage optimized",
        "h": "Storage optimized",
    }.get(prefix, "Accelerated computing")


def price_products(specs, on_demand, published):
    """Every product of the GetProducts stand-in, as (attributes, price) pairs."""
    products = []
    for itype, price in sorted(on_demand.items()):
        spec = specs.get(itype, {})
        vcpu = spec.get("vcpu", 2)
        attrs = {
            "servicecode": "AmazonEC2",
            "servicename": "Amazon Elastic Compute Cloud",
            "location": LOCATION,
            "locationType": "AWS Region",
            "regionCode": REGION,
            "instanceType": itype,
            "instanceFamily": family_name(itype),
            "currentGeneration": "Yes",
            "vcpu": str(vcpu),
            "memory": f"{spec['memory_gib']:g} GiB" if "memory_gib" in spec else "NA",
            "licenseModel": "No License required",
            "marketoption": "OnDemand",
        }
        variants = [
            ({"operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}, price),
            ({"operatingSystem": "Windows", "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}, price + 0.046 * vcpu),
            ({"operatingSystem": "RHEL", "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}, price + 0.0144 * vcpu),
            ({"operatingSystem": "Linux", "tenancy": "Dedicated", "preInstalledSw": "NA", "capacitystatus": "Used"}, price * 1.1),
            ({"operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "SQL Std", "capacitystatus": "Used"}, price + 0.12 * vcpu),
            ({"operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "AllocatedCapacityReservation"}, 0.0),
        ]
        for extra, p in variants:
            a = dict(attrs, **extra)
            a["usagetype"] = ("BoxUsage:" if a["tenancy"] == "Shared" else "DedicatedUsage:") + itype
            a["operation"] = "RunInstances" + {"Linux": "", "Windows": ":0002", "RHEL": ":0010"}[a["operatingSystem"]]
            products.append((a, round(p, 10), published))
    return products


def price_list_entry(attrs, price, published):
    sku = hashlib.sha1(json.dumps(attrs, sort_keys=True).encode()).hexdigest()[:16].upper()
    term, rate = "JRTCKXETXF", "6YS6EN2CT7"
    version = published.replace("-", "").replace(":", "").replace("T", "").replace("Z", "")
    return json.dumps({
        "product": {"productFamily": "Compute Instance", "attributes": attrs, "sku": sku},
        "serviceCode": "AmazonEC2",
        "terms": {"OnDemand": {f"{sku}.{term}": {
            "priceDimensions": {f"{sku}.{term}.{rate}": {
                "unit": "Hrs",
                "endRange": "Inf",
                "description": f"${price:.4f} per On Demand {attrs['operatingSystem']} {attrs['instanceType']} Instance Hour",
                "appliesTo": [],
                "rateCode": f"{sku}.{term}.{rate}",
                "beginRange": "0",
                "pricePerUnit": {"USD": f"{price:.10f}"},
            }},
            "sku": sku,
            "effectiveDate": published,
            "offerTermCode": term,
            "termAttributes": {},
        }}},
        "version": version,
        "publicationDate": published,
    })


# ---------------------------------------------------------------- Pricing GetProducts


class PricingError(Exception):
    def __init__(self, code, message, status=400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def filter_matches(attrs, flt):
    ftype = flt.get("Type", "TERM_MATCH")
    field = flt.get("Field", "")
    value = str(flt.get("Value", ""))
    actual = next((v for k, v in attrs.items() if k.lower() == field.lower()), None)
    if ftype in ("TERM_MATCH", "EQUALS"):
        return actual is not None and actual.lower() == value.lower()
    if ftype == "CONTAINS":
        return actual is not None and value.lower() in actual.lower()
    if ftype == "ANY_OF":
        return actual is not None and actual.lower() in [v.strip().lower() for v in value.split(",")]
    if ftype == "NONE_OF":
        return actual is None or actual.lower() not in [v.strip().lower() for v in value.split(",")]
    raise PricingError("InvalidParameterException", f"Unsupported filter type {ftype}")


def get_products(body, products):
    if body.get("ServiceCode") != "AmazonEC2":
        return {"FormatVersion": "aws_v1", "PriceList": []}
    filters = body.get("Filters") or []
    max_results = int(body.get("MaxResults") or 100)
    if not 1 <= max_results <= 100:
        raise PricingError("InvalidParameterException", "MaxResults must be between 1 and 100")
    start = decode_token(body.get("NextToken"))
    matching = [p for p in products if all(filter_matches(p[0], f) for f in filters)]
    page = matching[start:start + max_results]
    out = {"FormatVersion": "aws_v1", "PriceList": [price_list_entry(*p) for p in page]}
    if start + max_results < len(matching):
        out["NextToken"] = encode_token(start + max_results)
    return out


def encode_token(offset):
    return base64.urlsafe_b64encode(f"spotkube:{offset}".encode()).decode()


def decode_token(token):
    if not token:
        return 0
    try:
        return int(base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)[1])
    except Exception:
        raise PricingError("InvalidNextTokenException", "The NextToken is invalid")


# ---------------------------------------------------------------- EC2 overrides


def parse_time(value):
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    text = str(value).replace("Z", "+00:00")
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return dt.datetime.fromtimestamp(float(value), dt.timezone.utc)


def describe_spot_price_history(self):
    types = set(self._get_param("InstanceTypes", []) or [])
    products = set(self._get_param("ProductDescriptions", []) or [])
    az = self._get_param("AvailabilityZone")
    filters = self._filters_from_querystring()
    types |= set(filters.get("instance-type", []))
    products |= set(filters.get("product-description", []))
    zones = set(filters.get("availability-zone", [])) | ({az} if az else set())
    start = parse_time(self._get_param("StartTime"))
    end = parse_time(self._get_param("EndTime"))
    max_results = int(self._get_param("MaxResults") or 1000)
    offset = 0
    token = self._get_param("NextToken")
    if token:
        try:
            offset = decode_token(token)
        except PricingError:
            raise EC2ClientError("InvalidNextToken", "The token is invalid")
    items = []
    with LOCK:
        series = {k: list(v) for k, v in STATE["spot"].items()}
    for (itype, zone, product), points in sorted(series.items()):
        if (types and itype not in types) or (zones and zone not in zones) or (products and product not in products):
            continue
        chosen = []
        for i, (ts, price) in enumerate(points):
            nxt = points[i + 1][0] if i + 1 < len(points) else None
            if end and ts > end:
                continue
            # A point counts if it was in effect at any time inside [start, end].
            if start and nxt is not None and nxt <= start:
                continue
            chosen.append((ts, price))
        for ts, price in chosen:
            items.append({
                "InstanceType": itype,
                "ProductDescription": product,
                "SpotPrice": f"{price:.6f}",
                "AvailabilityZone": zone,
                "Timestamp": iso(ts),
            })
    items.sort(key=lambda i: i["Timestamp"], reverse=True)
    page = items[offset:offset + max_results]
    result = {"SpotPriceHistory": page}
    result["NextToken"] = encode_token(offset + max_results) if offset + max_results < len(items) else ""
    return ActionResult(result)


def ice_hit(itype, az):
    with LOCK:
        ice = set(STATE["ice"])
    return itype in ice or (az is not None and f"{itype}@{az}" in ice)


def ice_reason(itype, az):
    where = f"the Availability Zone you requested ({az})" if az else "the Availability Zone we selected"
    return (
        f"We currently do not have sufficient {itype} capacity in {where}. "
        "Our system will be working on provisioning additional capacity."
    )


def ice_error(itype, az):
    return EC2ClientError("InsufficientInstanceCapacity", ice_reason(itype, az))


def template_instance_type(backend, spec):
    try:
        if spec.get("LaunchTemplateId"):
            template = backend.get_launch_template(spec["LaunchTemplateId"])
        else:
            template = backend.get_launch_template_by_name(spec.get("LaunchTemplateName"))
        version = str(spec.get("Version", "$Default"))
        if version == "$Latest":
            data = template.latest_version()
        elif version == "$Default":
            data = template.default_version()
        else:
            data = template.get_version(version)
        return data.instance_type or None
    except Exception:
        return None


def describe_instance_types(self):
    max_results = self._get_param("MaxResults")
    if max_results is None or max_results == "":
        return _original_describe_instance_types(self)
    max_results = int(max_results)
    if not 5 <= max_results <= 100:
        raise EC2ClientError("InvalidParameterValue", f"MaxResults {max_results} is out of range [5, 100]")
    token = self._get_param("NextToken")
    offset = 0
    if token:
        try:
            offset = decode_token(token)
        except PricingError:
            raise EC2ClientError("InvalidNextToken", "The token is invalid")
    # moto's full answer (InstanceTypes and Filter.N honoured by moto itself), then a page.
    full = _original_describe_instance_types(self).result["InstanceTypes"]
    result = {"InstanceTypes": full[offset:offset + max_results]}
    if offset + max_results < len(full):
        result["NextToken"] = encode_token(offset + max_results)
    return ActionResult(result)


_original_describe_instance_types = InstanceResponse.describe_instance_types
_original_run_instances = InstanceResponse.run_instances
_original_create_fleet = Fleets.create_fleet


def run_instances(self):
    itype = self._get_param("InstanceType") or template_instance_type(self.ec2_backend, self._get_param("LaunchTemplate", {}) or {})
    az = self._get_param("Placement.AvailabilityZone")
    subnet_id = self._get_param("SubnetId")
    if not az and subnet_id:
        try:
            az = self.ec2_backend.get_subnet(subnet_id).availability_zone
        except Exception:
            az = None
    if itype and ice_hit(itype, az):
        raise ice_error(itype, az)
    return _original_run_instances(self)


def create_fleet(self):
    configs = self._get_param("LaunchTemplateConfigs", []) or []
    fleet_type = self._get_param("Type", if_none="maintain")
    dropped, kept_configs = [], []
    for config in configs:
        spec = config.get("LaunchTemplateSpecification", {}) or {}
        overrides = config.get("Overrides") or []
        if not overrides:
            itype = template_instance_type(self.ec2_backend, spec)
            if itype and ice_hit(itype, None):
                dropped.append((spec, {"InstanceType": itype}))
                continue
            kept_configs.append(config)
            continue
        kept = []
        for o in overrides:
            itype = o.get("InstanceType") or template_instance_type(self.ec2_backend, spec)
            az = o.get("AvailabilityZone")
            if not az and o.get("SubnetId"):
                try:
                    az = self.ec2_backend.get_subnet(o["SubnetId"]).availability_zone
                except Exception:
                    az = None
            if itype and ice_hit(itype, az):
                dropped.append((spec, dict(o, InstanceType=itype)))
            else:
                kept.append(o)
        if kept:
            kept_configs.append(dict(config, Overrides=kept))
    if not dropped:
        return _original_create_fleet(self)
    if not kept_configs:
        _, o = dropped[0]
        raise ice_error(o["InstanceType"], o.get("AvailabilityZone"))
    original_get_param = self._get_param

    def get_param(name, *args, **kwargs):
        if name == "LaunchTemplateConfigs":
            return kept_configs
        return original_get_param(name, *args, **kwargs)

    self._get_param = get_param
    try:
        result = _original_create_fleet(self)
    finally:
        self._get_param = original_get_param
    if fleet_type == "instant":
        errors = []
        for spec, o in dropped:
            overrides = {"InstanceType": o["InstanceType"]}
            if o.get("AvailabilityZone"):
                overrides["AvailabilityZone"] = o["AvailabilityZone"]
            errors.append({
                "LaunchTemplateAndOverrides": {"LaunchTemplateSpecification": spec, "Overrides": overrides},
                "Lifecycle": "spot" if (self._get_param("TargetCapacitySpecification", {}) or {}).get("DefaultTargetCapacityType") == "spot" else "on-demand",
                "ErrorCode": "InsufficientInstanceCapacity",
                "ErrorMessage": str(ice_error(o["InstanceType"], o.get("AvailabilityZone"))),
            })
        result.result["Errors"] = errors
    return result


def install_overrides():
    SpotInstances.describe_spot_price_history = describe_spot_price_history
    InstanceResponse.run_instances = run_instances
    InstanceResponse.describe_instance_types = describe_instance_types
    Fleets.create_fleet = create_fleet
    install_autoscaling_overrides()


# ---------------------------------------------------------------- Auto Scaling (switch 9)

# moto's backends are plain dicts: EC2 and Auto Scaling calls and the retry thread take
# this lock so a retry never changes instances under a DescribeInstances.
MOTO_LOCK = threading.RLock()
ASG_RECONCILE_SECONDS = 1.0
ASG_RETRY_SECONDS = 2.0
SPOT_ICE_REASON = (
    "Could not launch Spot Instances. InsufficientInstanceCapacity - "
    "There is no Spot capacity available that matches your request."
)
LAUNCH_FAILED = "Launching EC2 instance failed."
ACTIVITY_IDS = itertools.count(1)


def activity_id():
    n = next(ACTIVITY_IDS)
    return f"{n:08x}-5a1e-4c0d-9e00-{hashlib.sha1(str(n).encode()).hexdigest()[:12]}"


def record_activity(group, description, cause, status, message=None, details=None):
    now = utcnow()
    activity = {
        "ActivityId": activity_id(),
        "AutoScalingGroupName": group.name,
        "AutoScalingGroupARN": group.arn,
        "Description": description,
        "Cause": cause,
        "StartTime": now,
        "EndTime": now,
        "StatusCode": status,
        "Progress": 100,
        # AWS's Details name the subnet only when the group has subnets.
        "Details": json.dumps({k: v for k, v in (details or {}).items() if v}, separators=(",", ":")),
    }
    if message:
        activity["StatusMessage"] = message
    # On the group object, so moto's own reset and DeleteAutoScalingGroup drop them too.
    if not hasattr(group, "spotkube_activities"):
        group.spotkube_activities = []
    group.spotkube_activities.append(activity)
    return activity


def group_template_data(group):
    if group.ec2_launch_template is None:
        return {}
    try:
        return group.ec2_launch_template.get_version(group.launch_template_version).data or {}
    except Exception:
        return {}


def group_types(group):
    """The types an instance may be, in priority order."""
    overrides = ((group.mixed_instances_policy or {}).get("LaunchTemplate") or {}).get("Overrides") or []
    types = [o["InstanceType"] for o in overrides if isinstance(o, dict) and o.get("InstanceType")]
    return types or [group.instance_type]


def on_demand_target(group):
    """How many of the group's DesiredCapacity AWS keeps on-demand."""
    desired = group.desired_capacity or 0
    if group.mixed_instances_policy:
        dist = group.mixed_instances_policy.get("InstancesDistribution") or {}
        base = int(dist.get("OnDemandBaseCapacity", 0) or 0)
        percent = int(dist.get("OnDemandPercentageAboveBaseCapacity", 100))
        if desired <= base:
            return desired
        # AWS rounds the percentage up, in favour of on-demand.
        return base + math.ceil((desired - base) * percent / 100)
    market = (group_template_data(group).get("InstanceMarketOptions") or {}).get("MarketType")
    return 0 if market == "spot" else desired


def group_zones(group):
    """[(az, subnet id or None)], one per AZ, in the group's order."""
    zones = []
    if group.vpc_zone_identifier:
        for subnet_id in group.vpc_zone_identifier.split(","):
            subnet = group.ec2_backend.get_subnet(subnet_id.strip())
            zones.append((subnet.availability_zone, subnet.id))
    else:
        zones = [(az, None) for az in group.availability_zones]
    seen, unique = set(), []
    for az, subnet in zones:
        if az not in seen:
            seen.add(az)
            unique.append((az, subnet))
    return unique


def instance_zone(instance):
    placement = instance.placement
    return getattr(placement, "zone", placement)


def balanced_zones(group):
    """The group's AZs, fewest InService instances first (ties in the group's order)."""
    counts = {}
    for state in group.active_instances():
        zone = instance_zone(state.instance)
        counts[zone] = counts.get(zone, 0) + 1
    zones = group_zones(group)
    return sorted(zones, key=lambda z: (counts.get(z[0], 0), zones.index(z)))


def launch_cause(before, after):
    return (
        f"At {iso(utcnow())} an instance was started in response to a difference between "
        f"desired and actual capacity, increasing the capacity from {before} to {after}."
    )


def asg_launch_one(group, tags, failed_zones):
    """Launches one instance as in switch 9; False when no offering is left."""
    on_demand = sum(1 for s in group.active_instances() if getattr(s.instance, "lifecycle", None) != "spot")
    spot = on_demand >= on_demand_target(group)
    types = group_types(group)
    before = len(group.active_instances())
    for az, subnet in balanced_zones(group):
        if az in failed_zones:
            continue
        itype = next((t for t in types if not ice_hit(t, az)), None)
        if itype is None:
            failed_zones.add(az)
            reason = SPOT_ICE_REASON if spot else ice_reason(types[0], az)
            record_activity(
                group,
                f"Launching a new EC2 instance. Status Reason: {reason} {LAUNCH_FAILED}",
                launch_cause(before, before + 1),
                "Failed",
                f"{reason} {LAUNCH_FAILED}",
                {"Subnet ID": subnet or "", "Availability Zone": az},
            )
            continue
        launch_template = None
        if group.ec2_launch_template is not None:
            launch_template = {"LaunchTemplateId": group.ec2_launch_template.id}
        reservation = group.autoscaling_backend.ec2_backend.run_instances(
            group.image_id,
            1,
            group.user_data,
            group.security_groups,
            instance_type=itype,
            tags={"instance": dict(tags)},
            placement=az,
            launch_config=group.launch_config,
            launch_template=launch_template,
            is_instance_type_default=False,
            associate_public_ip=group.launch_config.associate_public_ip_address if group.launch_config else None,
            subnet_id=subnet,
        )
        for instance in reservation.instances:
            if spot:
                instance.lifecycle = "spot"
            instance.autoscaling_group = group
            group.instance_states.append(
                AsgInstanceState(instance, protected_from_scale_in=group.new_instances_protected_from_scale_in)
            )
            record_activity(
                group,
                f"Launching a new EC2 instance: {instance.id}",
                launch_cause(before, before + 1),
                "Successful",
                details={"Subnet ID": instance.subnet_id or "", "Availability Zone": az},
            )
        return True
    return False


def asg_replace_instances(self, count_needed, propagated_tags):
    """moto's one launch path (scale-out, replacement): switch 9 instead of one random AZ."""
    tags = dict(propagated_tags)
    tags[ASG_NAME_TAG] = self.name
    tags.update(self.instance_tags)
    failed_zones = set()
    for _ in range(count_needed):
        if not asg_launch_one(self, tags, failed_zones):
            self.spotkube_retry_at = time.monotonic() + ASG_RETRY_SECONDS
            return
    self.spotkube_retry_at = 0


def asg_set_desired_capacity(self, new_capacity):
    """moto's, without its mixed-instances arithmetic (which can round below desired) and
    with AWS's scale-in order; launches go through asg_replace_instances."""
    self.desired_capacity = self.min_size if new_capacity is None else new_capacity
    active = self.active_instances()
    delta = (self.desired_capacity or 0) - len(active)
    if delta > 0:
        self.replace_autoscaling_group_instances(delta, self.get_propagated_tags())
    elif delta < 0:
        removable = [s for s in active if not s.protected_from_scale_in]
        removed = []
        for _ in range(min(-delta, len(removable))):
            per_zone = {}
            for s in removable:
                per_zone.setdefault(instance_zone(s.instance), []).append(s)
            fullest = max(per_zone.values(), key=len)
            victim = min(fullest, key=lambda s: s.instance.launch_time)
            removable.remove(victim)
            removed.append(victim)
        if removed:
            before = len(active)
            self.autoscaling_backend.ec2_backend.terminate_instances([s.instance.id for s in removed])
            self.instance_states = [s for s in self.instance_states if s not in removed]
            for i, s in enumerate(removed):
                record_activity(
                    self,
                    f"Terminating EC2 instance: {s.instance.id}",
                    f"At {iso(utcnow())} an instance was taken out of service in response to a "
                    f"difference between desired and actual capacity, shrinking the capacity "
                    f"from {before - i} to {before - i - 1}.",
                    "Successful",
                    details={"Subnet ID": s.instance.subnet_id or "", "Availability Zone": instance_zone(s.instance)},
                )
    if self.name in self.autoscaling_backend.autoscaling_groups:
        self.autoscaling_backend.update_attached_elbs(self.name)
        self.autoscaling_backend.update_attached_target_groups(self.name)


def asg_update(self, *args, **kwargs):
    if kwargs.get("mixed_instances_policy") is None:
        kwargs["mixed_instances_policy"] = self.mixed_instances_policy
    return _original_asg_update(self, *args, **kwargs)


def asg_group(backend, name):
    group = backend.autoscaling_groups.get(name)
    if group is None:
        raise AsgValidationError("AutoScalingGroup name not found - null")
    return group


def set_desired_capacity_call(self):
    group = asg_group(self.autoscaling_backend, self._get_param("AutoScalingGroupName"))
    desired = self._get_int_param("DesiredCapacity")
    if group.max_size is not None and desired > group.max_size:
        raise AsgValidationError(
            f"New SetDesiredCapacity value {desired} is above max value {group.max_size} for the AutoScalingGroup."
        )
    if group.min_size is not None and desired < group.min_size:
        raise AsgValidationError(
            f"New SetDesiredCapacity value {desired} is below min value {group.min_size} for the AutoScalingGroup."
        )
    # HonorCooldown is ignored, as if false (switch 9).
    return _original_set_desired_capacity_call(self)


def terminate_instance_in_asg_call(self):
    instance_id = self._get_param("InstanceId")
    decrement = self._get_bool_param("ShouldDecrementDesiredCapacity", False)
    group = next(
        (g for g in self.autoscaling_backend.autoscaling_groups.values()
         if any(s.instance.id == instance_id for s in g.instance_states)),
        None,
    )
    if group is None:
        raise AsgValidationError(f"Instance Id not found - No managed instance found for instance ID: {instance_id}")
    if decrement and group.min_size is not None and (group.desired_capacity or 0) - 1 < group.min_size:
        raise AsgValidationError(
            f"Currently, desiredCapacity is {group.desired_capacity} and minSize is {group.min_size}. "
            "Terminating instance without replacement will violate group's min size constraint. "
            "Either set shouldDecrementDesiredCapacity flag to false or lower group's min size."
        )
    result = _original_terminate_instance_in_asg_call(self)
    activity = result.result["Activity"]
    # Moto terminates at once: the stored activity is finished, the answer stays InProgress.
    record_activity(group, activity.description, activity.cause, "Successful", details={
        "Subnet ID": "", "Availability Zone": activity_zone(self, instance_id),
    })
    return result


def activity_zone(response, instance_id):
    try:
        return instance_zone(response.autoscaling_backend.ec2_backend.get_instance(instance_id))
    except Exception:
        return ""


def describe_scaling_activities_call(self):
    name = self._get_param("AutoScalingGroupName")
    ids = set(self._get_param("ActivityIds", []) or [])
    max_records = self._get_int_param("MaxRecords") or 100
    if not 1 <= max_records <= 100:
        raise AsgValidationError("MaxRecords must be between 1 and 100")
    groups = self.autoscaling_backend.autoscaling_groups
    chosen = [groups[name]] if name in groups else ([] if name else list(groups.values()))
    activities = [a for g in chosen for a in getattr(g, "spotkube_activities", [])]
    if ids:
        activities = [a for a in activities if a["ActivityId"] in ids]
    # Activity ids increase (zero-padded hex): newest first even within one second.
    activities.sort(key=lambda a: a["ActivityId"], reverse=True)
    try:
        offset = decode_token(self._get_param("NextToken"))
    except PricingError:
        raise AsgValidationError("The token is invalid")
    result = {"Activities": activities[offset:offset + max_records]}
    if offset + max_records < len(activities):
        result["NextToken"] = encode_token(offset + max_records)
    return ActionResult(result)


def asg_reconcile_forever():
    """AWS keeps launching until a group is at DesiredCapacity; so does this thread."""
    while True:
        time.sleep(ASG_RECONCILE_SECONDS)
        try:
            with MOTO_LOCK:
                for _, regions in list(autoscaling_backends.items()):
                    for _, backend in list(regions.items()):
                        for group in list(backend.autoscaling_groups.values()):
                            if time.monotonic() < getattr(group, "spotkube_retry_at", 0):
                                continue
                            if len(group.active_instances()) < (group.desired_capacity or 0):
                                group.set_desired_capacity(group.desired_capacity)
        except Exception as e:  # a test rig thread must not die silently
            print(f"spotkube: auto scaling retry failed: {e!r}", file=sys.stderr, flush=True)


def locked(call):
    def wrapper(self, *args, **kwargs):
        with MOTO_LOCK:
            return call(self, *args, **kwargs)

    return wrapper


_original_asg_update = FakeAutoScalingGroup.update
_original_set_desired_capacity_call = AutoScalingResponse.set_desired_capacity
_original_terminate_instance_in_asg_call = AutoScalingResponse.terminate_instance_in_auto_scaling_group


def install_autoscaling_overrides():
    FakeAutoScalingGroup.replace_autoscaling_group_instances = asg_replace_instances
    FakeAutoScalingGroup.set_desired_capacity = asg_set_desired_capacity
    FakeAutoScalingGroup.update = asg_update
    AutoScalingResponse.set_desired_capacity = set_desired_capacity_call
    AutoScalingResponse.terminate_instance_in_auto_scaling_group = terminate_instance_in_asg_call
    AutoScalingResponse.describe_scaling_activities = describe_scaling_activities_call
    AutoScalingResponse.call_action = locked(AutoScalingResponse.call_action)
    EC2Response.call_action = locked(EC2Response.call_action)
    threading.Thread(target=asg_reconcile_forever, name="asg-retry", daemon=True).start()


# ---------------------------------------------------------------- WSGI wrapper


def query_action(environ):
    """The `Action` of an AWS query-protocol request (EC2, SQS query, ...), from the query
    string or the form body; the body is put back for moto to read."""
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    if "Action" in query:
        return query["Action"][0]
    if not environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        return None
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(raw)
    form = urllib.parse.parse_qs(raw.decode("utf-8", "replace"))
    return form.get("Action", [None])[0]


def json_response(start_response, status, payload, content_type="application/json"):
    body = json.dumps(payload).encode()
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


class SpotkubeApp:
    def __init__(self, moto_app, products, seeded, spot_advisor):
        self.moto_app = moto_app
        self.products = products
        self.seeded = seeded
        self.spot_advisor = spot_advisor
        self.reset()

    def reset(self):
        with LOCK:
            STATE["spot"] = {k: list(v) for k, v in self.seeded.items()}
            STATE["advisor"] = self.spot_advisor
            STATE["ice"] = set()
            STATE["throttle"] = {}
            STATE["calls"] = {}
            STATE["faults"] = {}
        self.release_holds()

    def release_holds(self):
        with LOCK:
            STATE["armed"] = {}
            held = STATE.get("held", [])
            STATE["held"] = []
        for _, release in held:
            release.set()

    def hold(self, action):
        """Blocks the calling request thread until the holds are released."""
        release = threading.Event()
        with LOCK:
            STATE["held"].append((action, release))
        release.wait()

    def armed(self, action, at):
        """Whether the next `action` call is to be held `at` this step (and disarms it)."""
        with LOCK:
            if STATE["armed"].get(action) != at:
                return False
            del STATE["armed"][action]
            return True

    def held_answer(self, environ, start_response, action):
        """Lets moto answer; holds the answer when it returns messages."""
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda chunk: None

        body = b"".join(self.moto_app(environ, capture))
        try:
            messages = json.loads(body or b"{}").get("Messages") or []
        except ValueError:
            messages = []
        if messages and self.armed(action, "answer"):
            self.hold(action)
        start_response(captured["status"], captured["headers"])
        return [body]

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if path.startswith("/spotkube/"):
            return self.control(environ, start_response, path)
        if path.startswith("/moto-api/"):
            with MOTO_LOCK:
                return self.moto_app(environ, start_response)
        throttled = self.count_call(environ, target)
        if throttled:
            return self.throttle_response(start_response, *throttled)
        faulted = self.fault_for(environ, target)
        if faulted:
            return self.fault_response(start_response, target, *faulted)
        action = target.rsplit(".", 1)[-1] if target else None
        if action and self.armed(action, "request"):
            self.hold(action)
            return json_response(start_response, "503 Service Unavailable", {"__type": "ServiceUnavailable", "message": "released by the test"})
        if action:
            with LOCK:
                answer_armed = STATE["armed"].get(action) == "answer"
            if answer_armed:
                return self.held_answer(environ, start_response, action)
        if target.startswith("AWSPriceListService."):
            return self.pricing(environ, start_response, target.split(".", 1)[1])
        return self.moto_app(environ, start_response)

    def count_call(self, environ, target):
        """Counts the call; returns (protocol, action) when the throttle switch hits it."""
        if target:
            protocol, action = "json", target.rsplit(".", 1)[-1]
        else:
            protocol, action = "query", query_action(environ)
        if not action:
            return None
        with LOCK:
            STATE["calls"][action] = STATE["calls"].get(action, 0) + 1
            left = STATE["throttle"].get(action, 0)
            if left <= 0:
                return None
            STATE["throttle"][action] = left - 1
        return protocol, action

    def fault_for(self, environ, target):
        """(action, mode) when a timed fault covers this call now (and counts it)."""
        action = target.rsplit(".", 1)[-1] if target else None
        with LOCK:
            if not STATE["faults"]:
                return None
        if action is None:
            action = query_action(environ)
        if not action:
            return None
        with LOCK:
            fault = STATE["faults"].get(action)
            if fault is None:
                return None
            mode, deadline = fault
            if time.monotonic() >= deadline:
                del STATE["faults"][action]
                return None
            key = f"faulted:{action}"
            STATE["calls"][key] = STATE["calls"].get(key, 0) + 1
        return action, mode

    def fault_response(self, start_response, target, action, mode):
        if mode == "unavailable":
            if target:
                return json_response(
                    start_response,
                    "503 Service Unavailable",
                    {"__type": "ServiceUnavailable", "message": "Service is unavailable (spotkube fault switch)"},
                    "application/x-amz-json-1.0",
                )
            body = b"<ErrorResponse><Error><Code>ServiceUnavailable</Code><Message>Service is unavailable</Message></Error></ErrorResponse>"
            start_response("503 Service Unavailable", [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
            return [body]
        if target.startswith("AmazonSQS."):
            body = json.dumps({"__type": "com.amazonaws.sqs#RequestThrottled", "message": "Rate exceeded"}).encode()
            start_response("400 Bad Request", [
                ("Content-Type", "application/x-amz-json-1.0"),
                ("x-amzn-query-error", "RequestThrottled;Sender"),
                ("Content-Length", str(len(body))),
            ])
            return [body]
        return self.throttle_response(start_response, "json" if target else "query", action)

    def throttle_response(self, start_response, protocol, action):
        if protocol == "json":
            return json_response(
                start_response,
                "400 Bad Request",
                {"__type": "ThrottlingException", "Message": "Rate exceeded"},
                "application/x-amz-json-1.1",
            )
        request_id = hashlib.sha1(f"{action}{utcnow()}".encode()).hexdigest()
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            "<Response><Errors><Error><Code>RequestLimitExceeded</Code>"
            "<Message>Request limit exceeded.</Message></Error></Errors>"
            f"<RequestID>{request_id}</RequestID></Response>"
        ).encode()
        start_response("400 Bad Request", [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
        return [body]

    def faults(self):
        now = time.monotonic()
        with LOCK:
            return {
                action: {"mode": mode, "seconds_left": round(deadline - now, 3)}
                for action, (mode, deadline) in STATE["faults"].items()
                if deadline > now
            }

    def read_json(self, environ):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        return json.loads(raw or b"{}")

    def pricing(self, environ, start_response, operation):
        ctype = "application/x-amz-json-1.1"
        try:
            body = self.read_json(environ)
            if operation != "GetProducts":
                raise PricingError("UnknownOperationException", f"{operation} is not served by the spotkube stand-in")
            return json_response(start_response, "200 OK", get_products(body, self.products), ctype)
        except PricingError as e:
            return json_response(start_response, f"{e.status} Bad Request", {"__type": e.code, "Message": e.message}, ctype)
        except ValueError as e:
            return json_response(start_response, "400 Bad Request", {"__type": "SerializationException", "Message": str(e)}, ctype)

    def control(self, environ, start_response, path):
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            if path == "/spotkube/reset" and method == "POST":
                self.reset()
                return json_response(start_response, "200 OK", {"reset": True})
            if path == "/spotkube/spot-prices" and method == "POST":
                body = self.read_json(environ)
                now = utcnow()
                with LOCK:
                    for p in body.get("prices", []):
                        key = (p["instance_type"], p["availability_zone"], p.get("product_description", "Linux/UNIX"))
                        points = STATE["spot"].setdefault(key, [])
                        ts = now if not points or points[-1][0] < now else points[-1][0] + dt.timedelta(seconds=1)
                        points.append((ts, float(p["price"])))
                return json_response(start_response, "200 OK", {"seeded": len(body.get("prices", []))})
            if path == "/spotkube/ice" and method == "POST":
                body = self.read_json(environ)
                with LOCK:
                    STATE["ice"] |= set(body.get("capacity", []))
                    current = sorted(STATE["ice"])
                return json_response(start_response, "200 OK", {"capacity": current})
            if path == "/spotkube/ice" and method == "DELETE":
                with LOCK:
                    STATE["ice"] = set()
                return json_response(start_response, "200 OK", {"capacity": []})
            if path == "/spotkube/ice" and method == "GET":
                with LOCK:
                    current = sorted(STATE["ice"])
                return json_response(start_response, "200 OK", {"capacity": current})
            if path == "/spotkube/throttle" and method == "POST":
                body = self.read_json(environ)
                action, count = str(body["action"]), int(body.get("count", 1))
                with LOCK:
                    STATE["throttle"][action] = STATE["throttle"].get(action, 0) + count
                    current = dict(STATE["throttle"])
                return json_response(start_response, "200 OK", {"throttle": current})
            if path == "/spotkube/throttle" and method == "DELETE":
                with LOCK:
                    STATE["throttle"] = {}
                return json_response(start_response, "200 OK", {"throttle": {}})
            if path == "/spotkube/fault" and method == "POST":
                body = self.read_json(environ)
                mode, seconds = str(body.get("mode", "unavailable")), float(body["seconds"])
                if mode not in ("unavailable", "throttle"):
                    raise ValueError(f"mode must be unavailable or throttle, not {mode}")
                deadline = time.monotonic() + seconds
                with LOCK:
                    for action in body["actions"]:
                        STATE["faults"][str(action)] = (mode, deadline)
                return json_response(start_response, "200 OK", {"faults": self.faults()})
            if path == "/spotkube/fault" and method == "GET":
                return json_response(start_response, "200 OK", {"faults": self.faults()})
            if path == "/spotkube/fault" and method == "DELETE":
                with LOCK:
                    STATE["faults"] = {}
                return json_response(start_response, "200 OK", {"faults": {}})
            if path == "/spotkube/hold" and method == "POST":
                body = self.read_json(environ)
                action, at = str(body["action"]), str(body.get("at", "request"))
                if at not in ("request", "answer"):
                    raise ValueError(f"at must be request or answer, not {at}")
                with LOCK:
                    STATE["armed"][action] = at
                return json_response(start_response, "200 OK", {"armed": {action: at}})
            if path == "/spotkube/hold" and method == "GET":
                with LOCK:
                    held = [action for action, _ in STATE["held"]]
                    armed = sorted(STATE["armed"])
                return json_response(start_response, "200 OK", {"held": held, "armed": armed})
            if path == "/spotkube/hold" and method == "DELETE":
                self.release_holds()
                return json_response(start_response, "200 OK", {"held": []})
            if path == "/spotkube/calls" and method == "GET":
                query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
                with LOCK:
                    calls = dict(STATE["calls"])
                if "action" in query:
                    action = query["action"][0]
                    return json_response(start_response, "200 OK", {"action": action, "count": calls.get(action, 0)})
                return json_response(start_response, "200 OK", {"calls": calls})
            if path == f"/spotkube/{SPOT_ADVISOR_FEED}" and method == "GET":
                with LOCK:
                    STATE["calls"][SPOT_ADVISOR_FEED] = STATE["calls"].get(SPOT_ADVISOR_FEED, 0) + 1
                    feed = STATE["advisor"]
                if feed is None:
                    return json_response(start_response, "503 Service Unavailable", {"error": "the feed is down (DELETE /spotkube/spot-advisor)"})
                start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(feed)))])
                return [feed]
            if path == "/spotkube/spot-advisor" and method == "POST":
                body = self.read_json(environ)
                with LOCK:
                    STATE["advisor"] = json.dumps(body).encode()
                return json_response(start_response, "200 OK", {"regions": sorted(body.get("spot_advisor", {}))})
            if path == "/spotkube/spot-advisor" and method == "DELETE":
                with LOCK:
                    STATE["advisor"] = None
                return json_response(start_response, "200 OK", {"down": True})
            if path == "/spotkube/health":
                return json_response(start_response, "200 OK", {"ok": True})
            return json_response(start_response, "404 Not Found", {"error": f"no such endpoint {method} {path}"})
        except (KeyError, ValueError, TypeError) as e:
            return json_response(start_response, "400 Bad Request", {"error": f"bad request: {e!r}"})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--snapshot", required=True, help="aws-price-snapshot.json")
    parser.add_argument("--spot-advisor", default=DEFAULT_SPOT_ADVISOR, help="the Spot Advisor feed to serve")
    args = parser.parse_args()

    specs, on_demand, spot, published = load_snapshot(args.snapshot)
    install_overrides()
    app = SpotkubeApp(
        DomainDispatcherApplication(create_backend_app),
        price_products(specs, on_demand, published or "2026-01-01T00:00:00Z"),
        seeded_spot_prices(on_demand, spot),
        load_spot_advisor(args.spot_advisor),
    )
    server = make_server(args.host, args.port, app, threaded=True)
    print(f"spotkube moto on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
