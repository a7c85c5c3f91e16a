//! The harness of every fuzz target (`*/tests/fuzz_*.rs`, `make fuzz`), included by
//! `#[path]`: test code shared across crates without a crate of its own.

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

/// Runs `test` on `strategy`'s inputs; the count and seed come from the environment.
/// No failure persistence: proptest would write `proptest-regressions/` into the
/// source tree; a failure prints its minimal input and the seed that reproduces it.
pub fn fuzz<S: Strategy>(
    name: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let env = |key: &str| std::env::var(key).ok().filter(|v| !v.is_empty());
    let cases = env("SPOTKUBE_FUZZ_CASES").map_or(Config::default().cases, |v| {
        v.replace('_', "").parse().expect("SPOTKUBE_FUZZ_CASES")
    });
    let seed = env("SPOTKUBE_FUZZ_SEED").map_or_else(
        || {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        },
        |v| v.parse().expect("SPOTKUBE_FUZZ_SEED"),
    );
    let config = Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    };
    let started = std::time::Instant::now();
    let result = TestRunner::new(config).run(&strategy, test);
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(()) => println!(
            "fuzz {name}: {cases} inputs, 0 failures, {secs:.1} s ({:.0}/s), seed {seed}",
            f64::from(cases) / secs.max(1e-9)
        ),
        Err(e) => panic!(
            "fuzz {name}: {e}\nreproduce with SPOTKUBE_FUZZ_SEED={seed} SPOTKUBE_FUZZ_CASES={cases}"
        ),
    }
}
