#!/usr/bin/env bash
# The README's test command: set up (with the test extra) and run the suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv/bin/activate
export JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=3
python -m pytest -q tests
