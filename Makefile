# The two commands a newcomer needs:  make demo   and   make test
# Everything they need (Kubernetes binaries, etcd, kwok, moto) is built or installed on
# first use and cached under ~/.cache/spotkube/, outside the repo, so warm runs are fast.

SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/spotkube/target
CARGO ?= cargo

.PHONY: demo test tools build lint unit help manifests bench-webhook bench-extender bench-controller bench-api-load images fuzz

help:
	@echo "make demo   run the local demo: control plane + kwok + moto + webhook, extender, controller"
	@echo "make test   run every test: format, lints, unit, component and end-to-end tests"

## The external tools of the rig and of the chart's checks: Kubernetes, etcd, kwok,
## moto, helm, cert-manager's and the Prometheus Operator's CRDs (idempotent; cold
## ~10 min on 2 cores, warm ~1 s).
tools:
	@bash tests/tools/install-tools.sh all >/dev/null

## The three programs, as the rig and the demo start them.
build:
	$(CARGO) build --workspace --bins

## The three images (FROM scratch, static binaries, uid 65532) as OCI archives under
## ~/.cache/spotkube/images/, built offline with buildah and checked (images/build.sh).
images:
	bash images/build.sh

## manifests/ rendered from the Helm chart charts/spotkube (its one source of truth).
manifests:
	bash charts/render-manifests.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	bash charts/render-manifests.sh --check

## Pure and component tests only (no control plane, no moto).
unit:
	$(CARGO) test --workspace --exclude spotkube-tests

test: tools lint build
	$(CARGO) test --workspace --no-fail-fast

demo: tools build
	$(CARGO) run --quiet -p spotkube-tests --bin spotkube-demo

## Benchmarks (figures and machine notes in BENCHMARKS.md).
bench-webhook:
	webhook/bench/run.sh

bench-extender:
	$(CARGO) bench -p spotkube-extender --bench load

bench-controller: tools build bench-build
	SPOTKUBE_BENCH_OUT=/dev/stdout SPOTKUBE_BENCH_RUNS=20 \
	  $(CARGO) test -p spotkube-tests --test e2e_controller_series -- --nocapture
	SPOTKUBE_SCALE_NODES=1000 SPOTKUBE_SCALE_PODS=10000 SPOTKUBE_BENCH_OUT=/dev/stdout \
	  $(CARGO) test -p spotkube-tests --test e2e_controller_scale -- --nocapture
	SPOTKUBE_PROGRAMS_PROFILE=release SPOTKUBE_BENCH_NODES=5000 SPOTKUBE_BENCH_PODS=50000 \
	  SPOTKUBE_BENCH_WARNINGS=200 SPOTKUBE_BENCH_OUT=/dev/stdout \
	  $(CARGO) test -p spotkube-tests --test bench_controller_5k -- --ignored --nocapture

bench-api-load: tools build
	SPOTKUBE_BENCH_DEPLOYMENTS=5000 SPOTKUBE_BENCH_WINDOW=60 SPOTKUBE_BENCH_OUT=/dev/stdout \
	  $(CARGO) test -p spotkube-tests --test e2e_api_load -- --nocapture

## Issue 13: the rig's real kube-apiserver and kube-scheduler with release builds of
## spotkube's programs (SPOTKUBE_PROGRAMS_PROFILE=release). Figures in BENCHMARKS.md.
.PHONY: bench-build bench-scheduler bench-admission bench-capacity bench-fargate
bench-build:
	$(CARGO) build --release -p spotkube-webhook -p spotkube-extender -p spotkube-controller --bins

## kube-scheduler throughput, plain profile vs spotkube's extender as shipped (and
## without filterVerb, and an extender that decides nothing: the protocol's floor),
## alternating, 3 rounds; 500 then 5,000 kwok nodes.
bench-scheduler: tools bench-build
	SPOTKUBE_PROGRAMS_PROFILE=release SPOTKUBE_BENCH_NODES=500 SPOTKUBE_BENCH_PODS=2000 \
	  SPOTKUBE_BENCH_ROUNDS=3 SPOTKUBE_BENCH_FILTER=0 SPOTKUBE_BENCH_TRIVIAL=1 SPOTKUBE_BENCH_WARMUP=1 SPOTKUBE_BENCH_OUT=/dev/stdout \
	  $(CARGO) test -p spotkube-tests --test bench_scheduler -- --ignored --nocapture
	SPOTKUBE_PROGRAMS_PROFILE=release SPOTKUBE_BENCH_NODES=5000 SPOTKUBE_BENCH_PODS=2000 \
	  SPOTKUBE_BENCH_ROUNDS=3 SPOTKUBE_BENCH_FILTER=0 SPOTKUBE_BENCH_TRIVIAL=1 SPOTKUBE_BENCH_WARMUP=1 SPOTKUBE_BENCH_OUT=/dev/stdout \
	  $(CARGO) test -p spotkube-tests --test bench_scheduler -- --ignored --nocapture

## Issue 11: 50 rebalance recommendations at once over three Auto Scaling pools (moto,
## the node registrar's 2 s join delay), release controller. Figures in BENCHMARKS.md.
bench-capacity: tools bench-build
	SPOTKUBE_PROGRAMS_PROFILE=release SPOTKUBE_BENCH_REBALANCES=50 SPOTKUBE_BENCH_JOIN_DELAY=2 \
	  $(CARGO) test -p spotkube-tests --test bench_capacity -- --ignored --nocapture

## Issue 12: Fargate failover of 20 `fallback: fargate` workloads warned at once (the
## Fargate stand-in's start delay 5 s), then the recovery loop's cost with 1,000
## workloads on Fargate (cooldown running; all due without spot room), release
## controller. Figures in BENCHMARKS.md.
bench-fargate: tools bench-build
	SPOTKUBE_PROGRAMS_PROFILE=release SPOTKUBE_BENCH_FARGATE_WORKLOADS=20 SPOTKUBE_BENCH_FARGATE_DELAY=5 \
	  SPOTKUBE_BENCH_FARGATE_IDLE=1000 SPOTKUBE_BENCH_WINDOW=60 SPOTKUBE_BENCH_OUT=/dev/stdout \
	  $(CARGO) test -p spotkube-tests --test bench_fargate -- --ignored --nocapture --test-threads=1

## Pod CREATE latency through kube-apiserver: no webhook call / webhook called without
## a patch / webhook mutating, 500 creates each in alternating blocks of 50.
bench-admission: tools bench-build
	SPOTKUBE_PROGRAMS_PROFILE=release SPOTKUBE_BENCH_CREATES=500 SPOTKUBE_BENCH_BLOCK=50 \
	  SPOTKUBE_BENCH_OUT=/dev/stdout \
	  $(CARGO) test -p spotkube-tests --test bench_admission -- --ignored --nocapture

## Fuzz targets (proptest, */tests/fuzz_*.rs) at the full count, release build: 10^6
## inputs per property, each prints its count, time and seed (figures in BENCHMARKS.md,
## "Reliability — fuzzing"). `make test` runs the same properties at 256 inputs each.
## FUZZ_CASES=N changes the count; SPOTKUBE_FUZZ_SEED=S replays a run.
FUZZ_CASES ?= 1000000
fuzz:
	SPOTKUBE_FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --release -p spotkube-webhook --test fuzz_mutate -- --nocapture
	SPOTKUBE_FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --release -p spotkube-extender --test fuzz_verbs --test fuzz_ranking -- --nocapture
	SPOTKUBE_FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --release -p spotkube-controller --test fuzz_events -- --nocapture

## Issue 14's fault matrix at the full counts (figures in BENCHMARKS.md, "Reliability").
## `make test` runs the same tests once per row (SPOTKUBE_FAULT_RUNS=1, 20 mass nodes).
## Controller rows: leader SIGKILLed at each step x 20 runs with a standby taking over,
## kube-apiserver restarted
## mid-interruption, 200 spot nodes interrupted at once.
.PHONY: faults
faults: tools build
	SPOTKUBE_FAULT_RUNS=20 SPOTKUBE_FAULT_MASS_NODES=200 \
	  $(CARGO) test -p spotkube-tests --test faults_controller -- --nocapture
## AWS rows: SQS unavailable 30 s, SQS throttled 20 s, soak of 1,000 mixed events over
## 10 min on a changing cluster (make test: 100 over 1 min). Admission rows: webhook down
## with failurePolicy Ignore and back, certificates rotated mid-traffic, extender down.
	SPOTKUBE_SOAK_EVENTS=1000 SPOTKUBE_SOAK_SECONDS=600 \
	  $(CARGO) test -p spotkube-tests --test faults_aws -- --nocapture
	$(CARGO) test -p spotkube-tests --test faults_admission -- --nocapture
	$(CARGO) test -p spotkube-tests --test e2e_smoke webhook_down -- --nocapture
