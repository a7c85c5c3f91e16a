#!/usr/bin/env bash
# Compares bench-server binaries (webhook/examples/bench-server.rs builds) by the
# server's CPU time per request: user + system time from /proc/PID/stat over an oha run
# (32 connections, TLS, keep-alive, the captured Pod CREATE), divided by the requests
# the server logged. Unlike req/s, this barely moves with the machine's load, so two
# builds can be compared on a busy machine. The binaries alternate, $ROUNDS times.
# Needs oha (see run.sh).
# Usage: webhook/bench/cpu-per-request.sh BENCH_SERVER [BENCH_SERVER...]
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
fixture="$repo/testdata/fixtures/admission/pod-create-from-deployment.json"
PATH="$HOME/.cache/spotkube/tools/bin:$PATH"
DURATION="${DURATION:-8s}"
ROUNDS="${ROUNDS:-2}"
PORT="${PORT:-18444}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$repo/certs/generate.sh" "$work" >/dev/null 2>&1
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz="$(getconf CLK_TCK)"
for round in $(seq "$ROUNDS"); do
  for bin in "$@"; do
    "$bin" "127.0.0.1:$PORT" "$work/tls.crt" "$work/tls.key" 2>"$work/webhook.log" &
    server=$!
    for _ in $(seq 50); do
      curl -s -o /dev/null --cacert "$work/ca.crt" "https://127.0.0.1:$PORT/" && break
      sleep 0.1
    done
    t0="$(ticks "$server")"
    out="$(oha --no-tui --cacert "$work/ca.crt" -m POST -H 'content-type: application/json' \
      -D "$fixture" -z "$DURATION" -c 32 "https://127.0.0.1:$PORT/mutate")"
    t1="$(ticks "$server")"
    n="$(wc -l <"$work/webhook.log")"
    rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
    echo "round $round $bin: $rps req/s, server CPU $(((t1 - t0) * 1000000 / hz / n)) us/request" \
      "over $n requests, load $(cut -d' ' -f1 /proc/loadavg)"
    kill "$server"
    wait "$server" 2>/dev/null || true
  done
done
