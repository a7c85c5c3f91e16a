//! Command-line flags (each with a `SPOTKUBE_*` environment twin).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use spotkube_shared::telemetry::LogFormat;

use crate::server::{DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONCURRENT_REQUESTS, Limits};

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "spotkube-extender",
    version,
    about = "kube-scheduler extender: avoid interrupted nodes, prefer the cheapest ranked spot instance types"
)]
pub struct Args {
    /// Address of the extender API (`/filter`, `/prioritize`).
    #[arg(long, env = "SPOTKUBE_LISTEN", default_value = "0.0.0.0:8888")]
    pub listen: SocketAddr,
    /// Plain-HTTP admin address (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "SPOTKUBE_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,
    /// PEM certificate chain (reloaded when it changes); with `--tls-key`, the API is
    /// served over TLS (the scheduler's `enableHTTPS` with `tlsConfig.caFile`).
    #[arg(long, env = "SPOTKUBE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `--tls-cert` (reloaded when it changes).
    #[arg(long, env = "SPOTKUBE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Re-read the certificate at least this often, besides file events.
    #[arg(long, env = "SPOTKUBE_TLS_RECHECK", default_value = "60s", value_parser = spotkube_shared::config::positive_duration)]
    pub tls_recheck: Duration,
    /// `namespace/name` of the ConfigMap holding `ranking.json`.
    #[arg(long, env = "SPOTKUBE_RANKING_CONFIGMAP", default_value = spotkube_shared::config::DEFAULT_RANKING_CONFIGMAP, value_parser = spotkube_shared::config::object_ref)]
    pub ranking_configmap: (String, String),
    /// An extra node label carrying the capacity type (checked before Karpenter's and EKS's).
    #[arg(long, env = "SPOTKUBE_CAPACITY_TYPE_LABEL")]
    pub capacity_type_label: Option<String>,
    /// Largest request body accepted (bytes); larger → 413. The default fits node names
    /// (`nodeCacheCapable: true`) for 5,000 nodes; full Node objects need ~32 MiB.
    #[arg(long, env = "SPOTKUBE_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Calls handled at once; more are answered 503 at once.
    #[arg(long, env = "SPOTKUBE_MAX_CONCURRENT_REQUESTS", default_value_t = DEFAULT_MAX_CONCURRENT_REQUESTS, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_requests: u16,
    #[arg(long, env = "SPOTKUBE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Args {
    /// What the API accepts, from the flags.
    pub fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes,
            max_concurrent_requests: self.max_concurrent_requests,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_and_object_ref() {
        let args = Args::try_parse_from(["spotkube-extender"]).unwrap();
        assert_eq!(args.listen.port(), 8888);
        assert_eq!(args.max_body_bytes, 6 * 1024 * 1024);
        assert_eq!(args.max_concurrent_requests, 16);
        assert_eq!(args.tls_recheck, Duration::from_secs(60));
        assert_eq!(
            args.ranking_configmap,
            ("spotkube-system".into(), "spotkube-ranking".into())
        );
        assert!(Args::try_parse_from(["x", "--ranking-configmap", "nope"]).is_err());
        assert!(
            Args::try_parse_from(["x", "--tls-cert", "c.pem"]).is_err(),
            "cert needs key"
        );
    }

    #[test]
    fn limits_come_from_flags_or_env() {
        let args =
            Args::try_parse_from(["x", "--max-body-bytes=1024", "--max-concurrent-requests=2"])
                .unwrap();
        assert_eq!(args.limits().max_body_bytes, 1024);
        assert_eq!(args.limits().max_concurrent_requests, 2);
        assert!(Args::try_parse_from(["x", "--max-concurrent-requests=0"]).is_err());
        assert!(Args::try_parse_from(["x", "--tls-recheck=0s"]).is_err());
    }
}
