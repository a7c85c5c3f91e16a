//! Command-line flags (each with a `SPOTKUBE_*` environment twin).

use std::net::SocketAddr;
use std::path::PathBuf;

use spotkube_shared::telemetry::LogFormat;

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
    /// PEM certificate chain; with `--tls-key`, the API is served over TLS.
    #[arg(long, env = "SPOTKUBE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `--tls-cert`.
    #[arg(long, env = "SPOTKUBE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// `namespace/name` of the ConfigMap holding `ranking.json`.
    #[arg(long, env = "SPOTKUBE_RANKING_CONFIGMAP", default_value = "spotkube-system/spotkube-ranking", value_parser = parse_object_ref)]
    pub ranking_configmap: (String, String),
    /// An extra node label carrying the capacity type (checked before Karpenter's and EKS's).
    #[arg(long, env = "SPOTKUBE_CAPACITY_TYPE_LABEL")]
    pub capacity_type_label: Option<String>,
    /// Largest request body accepted (5,000 full Node objects are ~30 MB).
    #[arg(long, env = "SPOTKUBE_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: usize,
    #[arg(long, env = "SPOTKUBE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

fn parse_object_ref(value: &str) -> Result<(String, String), String> {
    match value.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{value:?} is not namespace/name")),
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
}
