#!/usr/bin/env bash
# The main job on its embedded default: a busybox container, shown isolated, then stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/lxcone demo "$@"
