//! What ships for the controller's AWS side (`manifests/controller/aws/`) agrees with
//! the controller: the queue keeps a message long enough for its redrive policy to
//! move it to the DLQ, only spotkube's own rules may send to it, and the IAM policy
//! grants exactly the AWS operations the controller's source calls.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde_yaml_ng::Value;
use spotkube_controller::config::{Cli, Command};

fn aws_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/controller/aws")
}

/// The template with CloudFormation's short tags kept as tagged values: `!Ref X`,
/// `!GetAtt X.Arn`, `!Sub "..."`.
fn template() -> Value {
    let text = std::fs::read_to_string(aws_dir().join("cloudformation.yaml")).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

/// The tag and the value of a tagged node (`!Ref Queue` → `("Ref", "Queue")`).
fn tagged(value: &Value) -> Option<(String, &Value)> {
    match value {
        Value::Tagged(t) => Some((t.tag.to_string().trim_start_matches('!').into(), &t.value)),
        _ => None,
    }
}

/// A number, or a `!Ref` to a parameter with a numeric default.
fn number(template: &Value, value: &Value) -> u64 {
    if let Some(n) = value.as_u64() {
        return n;
    }
    match tagged(value) {
        Some((tag, Value::String(parameter))) if tag == "Ref" => template["Parameters"]
            [parameter.as_str()]["Default"]
            .as_u64()
            .unwrap_or_else(|| panic!("parameter {parameter} has no numeric default")),
        _ => panic!("not a number or a !Ref to a parameter: {value:?}"),
    }
}

/// The logical ids of the resources of `kind`.
fn resources_of(template: &Value, kind: &str) -> BTreeSet<String> {
    template["Resources"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some(kind))
        .map(|(id, _)| id.as_str().unwrap().to_string())
        .collect()
}

/// `!GetAtt Resource.Arn` → `Resource`.
fn arn_of(value: &Value) -> Option<String> {
    let (tag, value) = tagged(value)?;
    let target = value.as_str()?.strip_suffix(".Arn")?;
    (tag == "GetAtt").then(|| target.to_string())
}

#[test]
fn the_queue_keeps_a_message_past_every_redelivery_so_the_dlq_can_take_it() {
    let template = template();
    let queue = &template["Resources"]["Queue"]["Properties"];
    let retention = number(&template, &queue["MessageRetentionPeriod"]);
    let queue_visibility = number(&template, &queue["VisibilityTimeout"]);
    let wait = number(&template, &queue["ReceiveMessageWaitTimeSeconds"]);
    let max_receive = number(&template, &queue["RedrivePolicy"]["maxReceiveCount"]);
    assert_eq!(
        arn_of(&queue["RedrivePolicy"]["deadLetterTargetArn"]).as_deref(),
        Some("DeadLetterQueue")
    );
    // The controller's ReceiveMessage sets its own visibility (--visibility-timeout),
    // which overrides the queue's: the longer of the two is what a redelivery waits.
    let cli = Cli::try_parse_from(["spotkube-controller", "run", "--queue-url", "q"]).unwrap();
    let Some(Command::Run(run)) = cli.command else {
        panic!("`run` parses");
    };
    let visibility = queue_visibility.max(run.visibility_timeout.as_secs());
    // An unprocessable message is received max_receive times, each after the previous
    // receive's visibility expired and a long poll picked it up; only the receive after
    // that moves it to the DLQ. If retention ran out first, it would just vanish.
    assert!(
        retention > max_receive * (visibility + wait),
        "retention {retention} s <= maxReceiveCount {max_receive} x (visibility {visibility} s + wait {wait} s)"
    );
    let dlq = &template["Resources"]["DeadLetterQueue"]["Properties"];
    assert!(number(&template, &dlq["MessageRetentionPeriod"]) > retention);
}

#[test]
fn only_spotkubes_own_rules_may_send_to_the_queue() {
    let template = template();
    let rules = resources_of(&template, "AWS::Events::Rule");
    assert!(rules.len() >= 4, "{rules:?}");
    for rule in &rules {
        let targets = template["Resources"][rule.as_str()]["Properties"]["Targets"]
            .as_sequence()
            .unwrap();
        assert!(
            targets
                .iter()
                .all(|t| arn_of(&t["Arn"]).as_deref() == Some("Queue")),
            "{rule} targets the queue"
        );
    }
    let statements =
        template["Resources"]["QueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
            .as_sequence()
            .unwrap();
    let mut allowed = BTreeSet::new();
    for statement in statements {
        assert_eq!(statement["Effect"].as_str(), Some("Allow"));
        assert_eq!(
            statement["Principal"]["Service"].as_str(),
            Some("events.amazonaws.com"),
            "EventBridge alone: {statement:?}"
        );
        assert_eq!(statement["Action"].as_str(), Some("sqs:SendMessage"));
        assert_eq!(arn_of(&statement["Resource"]).as_deref(), Some("Queue"));
        let source = &statement["Condition"]["ArnEquals"]["aws:SourceArn"];
        let source = arn_of(source)
            .unwrap_or_else(|| panic!("no aws:SourceArn condition naming a rule: {statement:?}"));
        assert!(
            rules.contains(&source),
            "{source} is a rule of this template"
        );
        allowed.insert(source);
    }
    assert_eq!(allowed, rules, "one statement per rule");
}

/// Every `Action` of an IAM policy document, flattened.
fn actions(document: &serde_json::Value) -> BTreeSet<String> {
    let statements = document["Statement"].as_array().unwrap();
    let mut actions = BTreeSet::new();
    for statement in statements {
        assert_eq!(statement["Effect"], "Allow");
        match &statement["Action"] {
            serde_json::Value::String(a) => {
                actions.insert(a.clone());
            }
            serde_json::Value::Array(list) => {
                actions.extend(list.iter().map(|a| a.as_str().unwrap().to_string()))
            }
            other => panic!("Action {other}"),
        }
    }
    actions
}

/// The AWS clients the controller holds, by the name it gives them, and the IAM
/// service prefix of their operations.
const CLIENTS: [(&str, &str); 4] = [
    ("sqs", "sqs"),
    ("ec2", "ec2"),
    ("pricing", "pricing"),
    ("autoscaling", "autoscaling"),
];

/// Permissions an operation needs besides its own action, which no scan of the calls
/// can see: RunInstances with tag specifications needs CreateTags on the new instance,
/// and with a launch template naming an instance profile, PassRole on its role.
const IMPLIED: [(&str, &[&str]); 1] = [("ec2:RunInstances", &["ec2:CreateTags", "iam:PassRole"])];

/// The calls and what they imply.
fn with_implied(mut calls: BTreeSet<String>) -> BTreeSet<String> {
    for (action, implied) in IMPLIED {
        if calls.contains(action) {
            calls.extend(implied.iter().map(|a| a.to_string()));
        }
    }
    calls
}

/// Client methods that are not AWS operations.
const NOT_OPERATIONS: [&str; 3] = ["clone", "config", "as_ref"];

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// `describe_spot_price_history` → `DescribeSpotPriceHistory`.
fn operation_name(method: &str) -> String {
    method
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or(String::new(), |c| {
                c.to_uppercase().chain(chars).collect::<String>()
            })
        })
        .collect()
}

/// The IAM actions of every fluent call `<client>.<operation>()` in `source` (the
/// receiver and the call may be split over lines), e.g. `self.ec2
/// .describe_instance_types()` → `ec2:DescribeInstanceTypes`.
fn calls_in(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<String>()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut calls = BTreeSet::new();
    for (client, service) in CLIENTS {
        let needle = format!("{client}.");
        for (at, _) in code.match_indices(&needle) {
            // `sqs.` as a whole name (not `aws_sdk_sqs.`), reached as a field or variable.
            if code[..at].chars().next_back().is_some_and(ident) {
                continue;
            }
            let rest = &code[at + needle.len()..];
            let method: String = rest.chars().take_while(|c| ident(*c)).collect();
            if method.is_empty()
                || !rest[method.len()..].starts_with('(')
                || NOT_OPERATIONS.contains(&method.as_str())
            {
                continue;
            }
            calls.insert(format!("{service}:{}", operation_name(&method)));
        }
    }
    calls
}

/// What the controller's source calls on its AWS clients.
fn controller_calls() -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    files
        .iter()
        .flat_map(|f| calls_in(&std::fs::read_to_string(f).unwrap()))
        .collect()
}

#[test]
fn the_scan_finds_fluent_calls_split_over_lines_and_nothing_else() {
    let source = r#"
        let out = self.actor.ctx.sqs
            .receive_message()
            .queue_url(&url)
            .send();
        self.ec2.describe_spot_price_history().send(); // a trailing comment: ec2.fake()
        let sqs = aws_sdk_sqs::Client::new(&config);
        let copy = ctx.sqs.clone();
        my_sqs.delete_queue();
    "#;
    assert_eq!(
        calls_in(source),
        BTreeSet::from([
            "ec2:DescribeSpotPriceHistory".to_string(),
            "sqs:ReceiveMessage".to_string()
        ])
    );
}

#[test]
fn the_iam_policy_grants_exactly_what_the_controller_calls() {
    let calls = controller_calls();
    // The scan must see the intake's and the price source's calls at least.
    for known in [
        "sqs:ReceiveMessage",
        "ec2:DescribeInstanceTypes",
        "pricing:GetProducts",
    ] {
        assert!(calls.contains(known), "{known} in {calls:?}");
    }
    for known in [
        "autoscaling:SetDesiredCapacity",
        "autoscaling:TerminateInstanceInAutoScalingGroup",
    ] {
        assert!(calls.contains(known), "{known} in {calls:?}");
    }
    let calls = with_implied(calls);
    let text = std::fs::read_to_string(aws_dir().join("iam-policy.json")).unwrap();
    let policy: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(actions(&policy), calls, "iam-policy.json");
    // An IAM policy in the template, if it ships one, must agree too.
    let template = template();
    for kind in ["AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"] {
        for id in resources_of(&template, kind) {
            let document = &template["Resources"][id.as_str()]["Properties"]["PolicyDocument"];
            let document: serde_json::Value =
                serde_json::to_value(document).expect("a plain policy document");
            assert_eq!(actions(&document), calls, "{id} in cloudformation.yaml");
        }
    }
}
