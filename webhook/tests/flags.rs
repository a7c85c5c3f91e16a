//! The binary's flags and their environment twins, as the chart sets them.

use std::process::Command;

/// `spotkube-webhook` with only `env` set and TLS files that do not exist: it either
/// refuses its flags (exit 2) or gets as far as loading the certificate (exit 1).
fn run(env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_spotkube-webhook"))
        .env_clear()
        .envs(env.iter().copied())
        .args([
            "--tls-cert",
            "/nonexistent/tls.crt",
            "--tls-key",
            "/nonexistent/tls.key",
        ])
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn fargate_profiles_come_from_the_environment_space_separated() {
    // Two profiles: both parse, so the program goes on to its certificate.
    let (code, stderr) = run(
        &[(
            "SPOTKUBE_FARGATE_PROFILES",
            "shop,pay-*:spotkube.io/fargate=true batch:f=2",
        )],
        &[],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("loading the serving certificate"),
        "{stderr}"
    );

    // Split on spaces: the second value is refused on its own, by name. (Unsplit,
    // "shop:f=1 pay" would be one valid profile whose label f is "1 pay".)
    let (code, stderr) = run(&[("SPOTKUBE_FARGATE_PROFILES", "shop:f=1 pay")], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(
            "fargate profile \"pay\": no ':' between namespaces and labels (expected NAMESPACES:KEY=VALUE[,KEY=VALUE])"
        ),
        "{stderr}"
    );

    // Empty (a Deployment's `value: ""`) is no profile, not a bad one.
    let (code, stderr) = run(&[("SPOTKUBE_FARGATE_PROFILES", "")], &[]);
    assert_eq!(code, 1, "{stderr}");

    // A flag wins over the environment.
    let (code, stderr) = run(
        &[("SPOTKUBE_FARGATE_PROFILES", "broken")],
        &["--fargate-profile", "shop:f=1"],
    );
    assert_eq!(code, 1, "{stderr}");
}
