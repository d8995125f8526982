#!/usr/bin/env bash
# The README's demo: set up, then SRe2L on Fashion-MNIST end to end (offline, CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export TF_CPP_MIN_LOG_LEVEL=3
python -m jdd.main --config configs/sre2l_fashion_mnist.py:demo --workdir "${1:-runs/sre2l_fashion_mnist}"
