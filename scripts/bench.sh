#!/usr/bin/env bash
# Runs the benchmark suite (benches/bridge.rs) on a release build and prints its tables.
#   scripts/bench.sh           full run (medians of 5 runs; a few minutes)
#   scripts/bench.sh --quick   a few-second smoke (CI): checks every reply, asserts no times
#   scripts/bench.sh --only B3 one part (B1 latency, B2 throughput, B3 memory, B4 start-up)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --locked --bench bridge -- "$@"
