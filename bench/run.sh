#!/usr/bin/env bash
# Runs the benchmark: builds release binaries, starts the server pinned to CPU 0 and the load
# generator pinned to CPU 1, and writes bench/results/<time>.jsonl (one JSON line per step) and
# bench/results/<time>.md (the table). With no arguments it runs every scenario (`all`); any
# arguments are passed to herald-bench instead, e.g. `bench/run.sh broadcast --rates 1,15`.
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
