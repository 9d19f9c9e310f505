#!/usr/bin/env bash
# Try the newest versions the package index serves, without the lock: a throwaway venv
# (outside the clone) with the demo and test extras installed unconstrained, then the
# test suite. Never part of CI; it tells whether `scripts/lock.sh` would bring a break.
# Usage: bash scripts/try-latest.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$(mktemp -d)/venv"
trap 'rm -rf "$(dirname "$VENV")"' EXIT
python -m venv "$VENV"
. "$VENV/bin/activate"
pip install -q torch
pip install -q -e ".[demo,test]"
pip list --format=freeze > "${TRY_LATEST_FREEZE:-/dev/null}"
SKFUSION_UNLOCKED=1 HF_HUB_OFFLINE=1 python -m pytest -q "$@"
