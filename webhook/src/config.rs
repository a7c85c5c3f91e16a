//! Command-line flags (each with a `SPOTKUBE_*` environment twin).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Toleration;
use spotkube_shared::fargate::{FargateProfile, FargateProfiles};
use spotkube_shared::telemetry::LogFormat;

use crate::mutate::{self, MutationConfig};
use crate::server::DEFAULT_MAX_BODY_BYTES;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "spotkube-webhook",
    version,
    about = "spotkube's mutating admission webhook"
)]
pub struct Args {
    /// HTTPS address for POST /mutate.
    #[arg(long, env = "SPOTKUBE_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Plain-HTTP address for /healthz, /readyz, /metrics.
    #[arg(long, env = "SPOTKUBE_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,
    /// PEM certificate chain (reloaded when it changes).
    #[arg(long, env = "SPOTKUBE_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key (reloaded when it changes).
    #[arg(long, env = "SPOTKUBE_TLS_KEY")]
    pub tls_key: PathBuf,
    /// Re-read the certificate at least this often, besides file events.
    #[arg(long, env = "SPOTKUBE_TLS_RECHECK", default_value = "60s", value_parser = spotkube_shared::config::positive_duration)]
    pub tls_recheck: Duration,
    /// Set this schedulerName on opted-in pods (not Fargate-bound, DaemonSet or mirror pods).
    #[arg(long, env = "SPOTKUBE_SCHEDULER_NAME")]
    pub scheduler_name: Option<String>,
    /// A toleration for a spot taint, KEY[=VALUE]:EFFECT (repeat, or comma-separate in env).
    #[arg(long, env = "SPOTKUBE_SPOT_TOLERATION", value_delimiter = ',', value_parser = mutate::parse_toleration)]
    pub spot_toleration: Vec<Toleration>,
    /// Node label KEY=VALUE that marks spot capacity (repeat; default both Karpenter's and EKS's).
    #[arg(long, env = "SPOTKUBE_SPOT_NODE_LABEL", value_delimiter = ',', value_parser = parse_label)]
    pub spot_node_label: Vec<(String, String)>,
    /// Weight of the preferred spot node affinity (1-100).
    #[arg(long, env = "SPOTKUBE_PREFERRED_WEIGHT", default_value_t = 50, value_parser = clap::value_parser!(i32).range(1..=100))]
    pub preferred_weight: i32,
    /// Topology key for `spotkube.io/spread: capacity-types`.
    #[arg(long, env = "SPOTKUBE_CAPACITY_TOPOLOGY_KEY", default_value = spotkube_shared::labels::KARPENTER_CAPACITY_TYPE)]
    pub capacity_topology_key: String,
    /// A Fargate profile's selector, NAMESPACES:KEY=VALUE[,KEY=VALUE] (`*` wildcards in
    /// namespaces; repeat, or space-separate): pods matching one are left to Fargate, and
    /// `capacity: fargate` pods get the labels of their namespace's first.
    #[arg(
        long,
        env = "SPOTKUBE_FARGATE_PROFILES",
        value_name = "NAMESPACES:KEY=VALUE[,KEY=VALUE]"
    )]
    pub fargate_profile: Vec<FargateProfiles>,
    /// On SIGTERM: report not ready at once and keep answering this long, while the API
    /// servers stop calling this replica; then finish in-flight requests and exit.
    #[arg(long, env = "SPOTKUBE_SHUTDOWN_DRAIN", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_drain: Duration,
    /// Largest AdmissionReview body accepted (bytes); larger → 413.
    #[arg(long, env = "SPOTKUBE_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    #[arg(long, env = "SPOTKUBE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Args {
    /// What the mutation needs of the flags; no `--spot-node-label` keeps the default
    /// labels (both Karpenter's and EKS's).
    pub fn mutation_config(&self) -> MutationConfig {
        let mut config = MutationConfig {
            preferred_weight: self.preferred_weight,
            tolerations: self.spot_toleration.clone(),
            scheduler_name: self.scheduler_name.clone(),
            capacity_topology_key: self.capacity_topology_key.clone(),
            fargate_profiles: self.fargate_profiles(),
            ..MutationConfig::default()
        };
        if !self.spot_node_label.is_empty() {
            config.spot_labels = self.spot_node_label.clone();
        }
        config
    }

    /// Every `--fargate-profile`, in order.
    pub fn fargate_profiles(&self) -> Vec<FargateProfile> {
        spotkube_shared::fargate::flatten(&self.fargate_profile)
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("label {s:?} is not KEY=VALUE"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const TLS: [&str; 5] = [
        "spotkube-webhook",
        "--tls-cert",
        "c.pem",
        "--tls-key",
        "k.pem",
    ];

    #[test]
    fn defaults() {
        let args = Args::try_parse_from(TLS).unwrap();
        assert_eq!(args.listen.port(), 8443);
        assert_eq!(args.admin_listen.port(), 8080);
        assert_eq!(args.tls_recheck, Duration::from_secs(60));
        assert_eq!(args.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(args.shutdown_drain, Duration::from_secs(10));
        let config = args.mutation_config();
        let default = MutationConfig::default();
        assert_eq!(config.spot_labels, default.spot_labels);
        assert_eq!(config.preferred_weight, 50);
        assert_eq!(config.capacity_topology_key, default.capacity_topology_key);
        assert!(config.tolerations.is_empty() && config.scheduler_name.is_none());
        assert!(config.fargate_profiles.is_empty());
        assert!(
            Args::try_parse_from(["spotkube-webhook"]).is_err(),
            "cert and key are required"
        );
    }

    #[test]
    fn a_zero_tls_recheck_is_refused_at_start() {
        // A zero period would panic in the certificate re-check timer.
        let err = Args::try_parse_from(TLS.into_iter().chain(["--tls-recheck", "0s"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--tls-recheck"), "{err}");
        assert!(err.contains("must be greater than 0"), "{err}");
        let args = Args::try_parse_from(TLS.into_iter().chain(["--tls-recheck", "5s"])).unwrap();
        assert_eq!(args.tls_recheck, Duration::from_secs(5));
    }

    #[test]
    fn flags_reach_the_mutation_config() {
        let args = Args::try_parse_from(TLS.into_iter().chain([
            "--spot-node-label",
            "pool=spot",
            "--spot-toleration",
            "spot=true:NoSchedule",
            "--scheduler-name",
            "spotkube-scheduler",
            "--preferred-weight",
            "80",
        ]))
        .unwrap();
        let config = args.mutation_config();
        assert_eq!(
            config.spot_labels,
            [("pool".to_string(), "spot".to_string())]
        );
        assert_eq!(config.tolerations.len(), 1);
        assert_eq!(config.scheduler_name.as_deref(), Some("spotkube-scheduler"));
        assert_eq!(config.preferred_weight, 80);
        assert!(Args::try_parse_from(TLS.into_iter().chain(["--preferred-weight", "0"])).is_err());
        assert!(Args::try_parse_from(TLS.into_iter().chain(["--spot-node-label", "x"])).is_err());
    }

    #[test]
    fn fargate_profiles_repeat_and_a_bad_one_is_refused_naming_it() {
        let args = Args::try_parse_from(TLS.into_iter().chain([
            "--fargate-profile",
            "shop,pay-*:spotkube.io/fargate=true,team=a",
            "--fargate-profile",
            "batch:f=2",
        ]))
        .unwrap();
        let config = args.mutation_config();
        let shown: Vec<String> = config
            .fargate_profiles
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            ["shop,pay-*:spotkube.io/fargate=true,team=a", "batch:f=2"]
        );
        // Space-separated in one value, as the environment twin carries several; extra
        // whitespace is no profile.
        let args = Args::try_parse_from(
            TLS.into_iter()
                .chain(["--fargate-profile", " shop:f=1 \n batch:f=2  "]),
        )
        .unwrap();
        let profiles = args.fargate_profiles();
        assert_eq!(profiles.len(), 2);
        assert_eq!(profiles[1].namespaces, ["batch"]);
        let args = Args::try_parse_from(TLS.into_iter().chain(["--fargate-profile", ""])).unwrap();
        assert!(args.fargate_profiles().is_empty());

        for (value, reason) in [
            ("shop", "no ':' between namespaces and labels"),
            ("shop:", "no label"),
            ("shop:f", "a label without '='"),
        ] {
            let err = Args::try_parse_from(TLS.into_iter().chain(["--fargate-profile", value]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("--fargate-profile"), "{err}");
            assert!(
                err.contains(&format!("fargate profile {value:?}: {reason}")),
                "{err}"
            );
        }
    }
}
