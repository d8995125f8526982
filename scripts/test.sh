#!/usr/bin/env bash
# The README's test command: set up (with the test extra) and run the suite on the CPU.
# `bash scripts/test.sh --all` also runs the tests marked `slow`: parity and squeeze of the
# full-size DenseNet-121, EfficientNet-B0, ResNet-101, MobileNetV2 x1.0 and ShuffleNetV2 x1.0
# (minutes of XLA compilation each on 2 cores; the default run covers the same modules at
# reduced width or depth), the RepBlend and EDGE end-to-end smokes (EDGE on both backends), the
# trajectory-matching benchmark's parity check, the experts on 1 vs 4 (fake CPU) devices and the
# caption-pipeline and expert benchmarks at tiny size. Every notebook in colabs/ runs in both.
# Both print the 25 slowest tests, so the CI log shows where the time goes. The suite runs in
# JDD_TEST_WORKERS processes (default 2; test files are kept whole per process): most of its
# time is XLA compilation, which uses one core, so two processes halve the wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv/bin/activate
export JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=3
# One persistent XLA compilation cache for the whole run, new and empty each time: the end-to-end
# tests, the notebooks and the killed-and-resumed subprocesses compile many of the same programs
# (same smoke configs), and a program that took 0.2 s or more to compile is compiled once per run
# instead of once per test (2:50 -> 1:45 on tests/test_runner.py, test_sre2l.py and the quickstart
# notebook). A cache entry holds the executable itself, so results do not change.
XLA_CACHE="$(mktemp -d -t jdd-xla-cache.XXXXXX)"
trap 'rm -rf "$XLA_CACHE"' EXIT
export JAX_COMPILATION_CACHE_DIR="$XLA_CACHE" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0.2
WORKERS="${JDD_TEST_WORKERS:-2}"
if [ "${1:-}" = "--all" ]; then
  python -m pytest -q --durations=25 -n "$WORKERS" --dist loadfile tests
else
  python -m pytest -q --durations=25 -n "$WORKERS" --dist loadfile -m "not slow" tests
fi
