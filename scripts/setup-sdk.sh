#!/usr/bin/env bash
# What the SDK tests (tests/tests/sdk.rs) need: Node.js and npm, Python's venv, then the Node
# SDK's dependencies and build (sdk/node) and a Python environment with the Python SDK and its
# test tools (target/sdk-venv). Idempotent; scripts/test.sh runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '\033[1msetup-sdk:\033[0m %s\n' "$*" >&2; }
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
# A Node.js that bundles npm (as some distributions' builds do) conflicts with Debian's npm.
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

log "the Node.js SDK: npm ci and build (sdk/node)"
(cd sdk/node && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)

venv=target/sdk-venv
if [ ! -x "$venv/bin/python" ]; then
  log "a Python environment for the Python SDK ($venv)"
  python3 -m venv "$venv"
fi
# Installed again when pyproject.toml changed since the last install.
stamp="$venv/.krunbox-sdk-installed"
if [ ! -f "$stamp" ] || [ sdk/python/pyproject.toml -nt "$stamp" ]; then
  log "the Python SDK and its test tools (pytest, jsonschema, the MCP client library)"
  "$venv/bin/pip" install -q --disable-pip-version-check -e 'sdk/python[test]'
  touch "$stamp"
fi
