#!/usr/bin/env bash
# Benchmarks the webhook: release build, TLS with keep-alive on loopback, the captured
# Pod CREATE from a Deployment (shared/fixtures) in an opted-in namespace, so every
# request resolves a policy and returns a full JSONPatch.
#   1. throughput: as fast as possible for $DURATION with $CONNS connections;
#   2. latency at a fixed 1,000 req/s.
# Needs oha (cargo install oha --locked; found on PATH or in ~/.cache/spotkube/tools/bin).
# Usage: webhook/bench/run.sh [FIXTURE]
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
fixture="${1:-$repo/testdata/fixtures/admission/pod-create-from-deployment.json}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/spotkube/target}"
PATH="$HOME/.cache/spotkube/tools/bin:$PATH"
DURATION="${DURATION:-15s}"
CONNS="${CONNS:-32}"
PORT="${PORT:-18443}"

cargo build --release -q -p spotkube-webhook --example bench-server
work="$(mktemp -d)"
"$repo/certs/generate.sh" "$work" >/dev/null 2>&1
# One JSON line per request goes to a file, as in production.
"$CARGO_TARGET_DIR/release/examples/bench-server" "127.0.0.1:$PORT" "$work/tls.crt" "$work/tls.key" \
  2>"$work/webhook.log" &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do
  curl -s -o /dev/null --cacert "$work/ca.crt" "https://127.0.0.1:$PORT/" && break
  sleep 0.1
done
# Sanity: the response carries a patch.
curl -sf --cacert "$work/ca.crt" -H 'content-type: application/json' --data-binary @"$fixture" \
  "https://127.0.0.1:$PORT/mutate" | grep -q '"patchType":"JSONPatch"'

oha_args=(--no-tui --cacert "$work/ca.crt" -m POST -H 'content-type: application/json' -D "$fixture")
echo "== throughput: $CONNS connections, $DURATION, HTTP/1.1 keep-alive over TLS"
oha "${oha_args[@]}" -z "$DURATION" -c "$CONNS" "https://127.0.0.1:$PORT/mutate"
echo "== latency at a fixed 1000 req/s, 8 connections, $DURATION"
oha "${oha_args[@]}" -z "$DURATION" -c 8 -q 1000 "https://127.0.0.1:$PORT/mutate"
echo "== requests logged: $(wc -l <"$work/webhook.log")"
