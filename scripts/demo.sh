#!/usr/bin/env bash
# The README's demo: set up, then FADRM on Fashion-MNIST end to end (offline, CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export TF_CPP_MIN_LOG_LEVEL=3
python -m jdd.main --config configs/fadrm_fashion_mnist.py:demo --workdir "${1:-runs/fadrm_fashion_mnist}"
