#!/usr/bin/env bash
# Installs the official `openai` Python SDK (and pydantic) into a virtualenv in a cache
# directory, for tests/openai_sdk.rs, plus LangChain (langchain, langchain-openai) for
# tests/python_clients.rs, and prints the venv's python on stdout. Prints nothing on stdout
# (and says why on stderr) when openai cannot be installed: the tests then report themselves
# skipped. LangChain is optional: without it only the LangChain test skips (it says so).
# Installs python3-venv with apt-get first when the venv module is missing and it may.
set -uo pipefail
dir="${SYNTHESIS_TOOLS_DIR:-$HOME/.cache/synthesis-bridge/tools}/openai-sdk-venv"
python="$dir/bin/python"
if ! "$python" -c 'import openai, pydantic' >/dev/null 2>&1; then
  if ! command -v python3 >/dev/null 2>&1; then
    echo "install-openai-sdk: python3 not found" >&2
    exit 0
  fi
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      { timeout 600 apt-get update -qq && timeout 600 apt-get install -y -qq python3-venv python3-pip; } >&2 || true
    fi
  fi
  rm -rf "$dir"
  if ! python3 -m venv "$dir" >&2; then
    echo "install-openai-sdk: python3 -m venv failed (install python3-venv)" >&2
    exit 0
  fi
  if ! timeout 600 "$dir/bin/pip" install --quiet --disable-pip-version-check openai pydantic >&2; then
    echo "install-openai-sdk: pip install openai pydantic failed" >&2
    exit 0
  fi
fi
if ! "$python" -c 'import langchain, langchain_openai' >/dev/null 2>&1; then
  timeout 600 "$dir/bin/pip" install --quiet --disable-pip-version-check langchain langchain-openai >&2 \
    || echo "install-openai-sdk: pip install langchain langchain-openai failed; the LangChain test will skip" >&2
fi
if "$python" -c 'import openai, pydantic' >/dev/null 2>&1; then
  echo "$python"
else
  echo "install-openai-sdk: installed, but openai does not import" >&2
fi
