#!/usr/bin/env bash
# Install the test extras into .venv (and everything else, if missing) and run the whole suite.
# Real scans are read from SCRUBIN_DATA_DIR (default: ../shared/data when it exists);
# tests that need them skip with a reason when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
# The Khronos glTF validator (npm) checks model.glb, axe-core scans the mentor page; their tests
# skip where node is absent.
if command -v npm >/dev/null && [[ ! -d tests/tools/node_modules/gltf-validator || ! -d tests/tools/node_modules/axe-core ]]; then
    npm install --prefix tests/tools --silent --no-audit --no-fund 2>&1 | grep -v "Unknown user config" >&2 || true
fi
if [[ -z "${SCRUBIN_DATA_DIR:-}" && -d ../shared/data ]]; then
    export SCRUBIN_DATA_DIR="$(cd ../shared/data && pwd)"
fi
exec .venv/bin/python -m pytest "$@"
