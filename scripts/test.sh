#!/usr/bin/env bash
# The whole test suite: lint, unit tests, real-kernel tests (as root), and a quick benchmark run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/pytest tests "$@"
