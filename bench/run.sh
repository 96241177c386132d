#!/usr/bin/env bash
# Runs the benchmark: builds release binaries, starts the server pinned to CPU 0 and the load
# generator pinned to CPU 1, and writes bench/results/<time>.jsonl (one JSON line per step) and
# bench/results/<time>.md (the table). With no arguments it runs every scenario (`all`); any
# arguments are passed to herald-bench instead, e.g. `bench/run.sh broadcast --rates 1,15`.
#
# The Redis engine: `--engine redis` starts a private redis-server (append-only, fsync every
# second) and stops it at the end; `--nodes N` starts N nodes, all pinned to CPU 0, sharing it;
# `--redis-cpu C` pins Redis too. The steps then have a Redis CPU column. For example
# `bench/run.sh personal --engine redis --nodes 2 --redis-cpu 0`, or
# `bench/run.sh resubscribe --engine redis --redis-cpu 0` (Redis restarted under 19,900
# subscriptions: the time until every node is ready, then until every user has a publication).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 0 ] && set -- all

cargo build --release --locked -p herald -p herald-bench
mkdir -p bench/results
stamp=$(date -u +%Y%m%dT%H%M%SZ)
taskset -c 1 target/release/herald-bench "$@" \
  --spawn target/release/herald --server-cpu 0 \
  --json "bench/results/$stamp.jsonl" --markdown "bench/results/$stamp.md"
echo "results: bench/results/$stamp.md"
