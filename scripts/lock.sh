#!/usr/bin/env bash
# Re-resolve constraints.txt: every transitive dependency of every extra in
# pyproject.toml, resolved together for Python 3.10+ on any platform, so that the
# README's demo install and test install get the same versions. Run it after changing
# a dependency in pyproject.toml, then run the README's two commands in a fresh clone
# and commit constraints.txt with the change.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v uv >/dev/null 2>&1 || python -m pip install -q uv
uv pip compile pyproject.toml --all-extras --universal --python-version 3.10 \
    --custom-compile-command "bash scripts/lock.sh" --quiet --output-file constraints.txt
echo "wrote constraints.txt ($(grep -c '==' constraints.txt) pins)"
