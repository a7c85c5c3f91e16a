//! A mocked API server for component tests of the controller's I/O, in the style of
//! kube-rs controller-rs `fixtures.rs`: the test scripts the exact requests it expects,
//! in order, and the response to each; [`Served::check`] then fails the test on any
//! request out of script or any expected request that never came. Event recordings
//! (events.k8s.io) are answered aside, wherever they come.
//!
//! Built on `tower::service_fn` rather than tower-test: tower-test pulls in tokio's
//! `test-util`, which would make every test build recompile tokio and all of its
//! dependents (the AWS SDK among them) apart from the binaries' build.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response};
use kube::client::Body;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use spotkube_controller::act::Actor;
use spotkube_controller::context::Context;
use spotkube_controller::metrics::Metrics;
use spotkube_controller::nodes_index::NodesIndex;
use spotkube_controller::supervisor::Tasks;
use tokio_util::sync::CancellationToken;

type Check = Arc<dyn Fn(&Value) -> Result<(), String> + Send + Sync>;

/// One expected request and its answer.
pub struct Expect {
    method: Method,
    path: String,
    query: Option<String>,
    status: u16,
    body: Value,
    check: Option<Check>,
}

impl Expect {
    pub fn new(method: Method, path: &str) -> Expect {
        Expect {
            method,
            path: path.to_string(),
            query: None,
            status: 200,
            body: json!({}),
            check: None,
        }
    }

    pub fn get(path: &str) -> Expect {
        Expect::new(Method::GET, path)
    }

    pub fn patch(path: &str) -> Expect {
        Expect::new(Method::PATCH, path)
    }

    /// The query string must contain `part` (e.g. a field selector).
    pub fn with_query(mut self, part: &str) -> Expect {
        self.query = Some(part.to_string());
        self
    }

    pub fn returns(mut self, body: Value) -> Expect {
        self.body = body;
        self
    }

    /// Answers with an API `Status` of `code`.
    pub fn fails(mut self, code: u16, reason: &str) -> Expect {
        self.status = code;
        self.body = json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": format!("mocked {code}"), "reason": reason, "code": code,
        });
        self
    }

    /// Checks the request's JSON body; `Err` names what is wrong.
    pub fn checks(
        mut self,
        check: impl Fn(&Value) -> Result<(), String> + Send + Sync + 'static,
    ) -> Expect {
        self.check = Some(Arc::new(check));
        self
    }
}

/// What the mocked server saw: read it once the code under test is done.
#[derive(Clone, Default)]
pub struct Served {
    pending: Arc<Mutex<VecDeque<Expect>>>,
    failures: Arc<Mutex<Vec<String>>>,
}

impl Served {
    /// Panics unless every expected request came, in order, as scripted.
    pub fn check(&self) {
        let failures = self.failures.lock().unwrap();
        assert!(failures.is_empty(), "out of script: {failures:#?}");
        let pending = self.pending.lock().unwrap();
        let missing: Vec<String> = pending
            .iter()
            .map(|e| format!("{} {}", e.method, e.path))
            .collect();
        assert!(missing.is_empty(), "never requested: {missing:?}");
    }

    /// Waits until every scripted request came (or `timeout` passed): for work an
    /// action leaves running, such as a rollout follow. Then [`Served::check`].
    pub async fn settled(&self, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while !self.pending.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    fn answer(&self, method: &Method, uri: &http::Uri, body: &Value) -> Response<Body> {
        let Some(expect) = self.pending.lock().unwrap().pop_front() else {
            return self.fail(format!("unexpected {method} {uri}"));
        };
        if (method, uri.path()) != (&expect.method, expect.path.as_str()) {
            return self.fail(format!(
                "{method} {uri}, expected {} {}",
                expect.method, expect.path
            ));
        }
        if let Some(part) = &expect.query
            && !uri.query().unwrap_or_default().contains(part.as_str())
        {
            return self.fail(format!("{uri} lacks {part}"));
        }
        if let Some(Err(problem)) = expect.check.as_ref().map(|check| check(body)) {
            return self.fail(format!("{method} {uri}: {problem}"));
        }
        respond(expect.status, &expect.body)
    }

    fn fail(&self, failure: String) -> Response<Body> {
        self.failures.lock().unwrap().push(failure);
        respond(
            500,
            &json!({"kind": "Status", "code": 500, "message": "out of script"}),
        )
    }
}

/// A client whose requests are served by `script`.
pub fn client(script: Vec<Expect>) -> (kube::Client, Served) {
    let served = Served::default();
    served.pending.lock().unwrap().extend(script);
    let server = served.clone();
    let service = tower::service_fn(move |request: Request<Body>| {
        let server = server.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect_bytes().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if parts.uri.path().contains("/apis/events.k8s.io/") {
                return Ok::<_, std::convert::Infallible>(respond(201, &body));
            }
            Ok(server.answer(&parts.method, &parts.uri, &body))
        }
    });
    (kube::Client::new(service, "default"), served)
}

fn respond(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// An offline SQS client: component tests never reach it.
pub fn sqs() -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version_latest()
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// An actor over `client`, with its metrics registry (to read what it counted).
pub fn actor(client: kube::Client, nodes: NodesIndex) -> (Actor, Registry) {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let ctx = Context::new(client, Some("test".into()), metrics.clone(), nodes, sqs());
    let tasks = Tasks::new(CancellationToken::new(), metrics);
    (Actor::new(ctx, tasks), registry)
}

/// The registry in Prometheus text format.
pub fn scrape(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

/// A Node named `name` at `resource_version`, backed by EC2 instance `instance`.
pub fn node(name: &str, instance: &str, resource_version: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": name, "resourceVersion": resource_version },
        "spec": { "providerID": format!("aws:///us-east-1a/{instance}") },
    })
}

/// Deployment `shop/web` at `resource_version` with `replicas` and `annotations`.
pub fn deployment(resource_version: &str, replicas: i32, annotations: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {
            "name": "web", "namespace": "shop", "resourceVersion": resource_version,
            "generation": 2, "annotations": annotations,
        },
        "spec": { "replicas": replicas, "selector": {}, "template": {} },
        "status": {
            "observedGeneration": 2, "replicas": replicas,
            "updatedReplicas": replicas, "availableReplicas": replicas,
        },
    })
}
