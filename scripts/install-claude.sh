#!/usr/bin/env bash
# Installs the real Claude Code CLI from the npm registry into a cache directory, for the
# real-binary end-to-end test (tests/real_claude.rs), and prints the binary's path on stdout.
# Prints nothing on stdout (and says why on stderr) when it cannot: the test then reports
# itself skipped. The version is pinned: it is the newest one the bridge was tested with
# (src/agent/version.rs NEWEST_TESTED_CLAUDE). A plain `npm install` on Node < 22 would
# quietly pick an old release.
set -uo pipefail
version="${SYNTHESIS_CLAUDE_VERSION:-2.1.331}"
dir="${SYNTHESIS_TOOLS_DIR:-$HOME/.cache/synthesis-bridge/tools}/claude-code-$version"
bin="$dir/node_modules/@anthropic-ai/claude-code-linux-x64/claude"
if [ ! -x "$bin" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "install-claude: npm not found; cannot install @anthropic-ai/claude-code" >&2
    exit 0
  fi
  mkdir -p "$dir"
  if ! timeout 600 npm install --prefix "$dir" --no-audit --no-fund --loglevel=error \
      "@anthropic-ai/claude-code@$version" >&2; then
    echo "install-claude: npm install @anthropic-ai/claude-code@$version failed" >&2
    exit 0
  fi
fi
if [ -x "$bin" ]; then
  echo "$bin"
else
  echo "install-claude: installed, but $bin is missing (package layout changed?)" >&2
fi
