#!/usr/bin/env bash
# The whole test suite: lint, unit tests, real-kernel tests (as root), then a smoke run of the
# benchmarks (3 rounds each against LXC and crun: proves they run, the figures mean nothing).
# Extra arguments go to the main pytest run and skip the smoke run: scripts/test.sh -k freeze
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
if [ $# -gt 0 ]; then
  exec .venv/bin/pytest tests "$@"
fi
LXCONE_BENCH_QUICK=1 .venv/bin/pytest benchmarks -q -p no:cacheprovider
.venv/bin/pytest tests
