#!/usr/bin/env bash
# Runs the benchmark suite on a release build and prints its tables.
#   scripts/bench.sh           full run (medians of 5 runs; a few minutes)
#   scripts/bench.sh --quick   a few-second smoke (CI): checks every reply, asserts no times
#   scripts/bench.sh --only B3 one part (B1 latency, B2 throughput, B3 memory, B4 start-up,
#                              B5 the real Claude Code vs the peers' shapes)
# B1–B4: benches/bridge.rs (the simulated Claude). B5: benches/real_claude.rs (needs
# SYNTHESIS_REAL_CLAUDE, set from scripts/install-claude.sh; says SKIPPED without it).
set -euo pipefail
cd "$(dirname "$0")/.."
only=""
prev=""
for arg in "$@"; do
  if [ "$prev" = "--only" ]; then only="${arg^^}"; fi
  prev="$arg"
done
if [ "$only" != "B5" ]; then
  cargo bench --locked --bench bridge -- "$@"
fi
if [ -z "$only" ] || [ "$only" = "B5" ]; then
  cargo bench --locked --bench real_claude -- "$@"
fi
