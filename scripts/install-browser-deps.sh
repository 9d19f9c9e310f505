#!/usr/bin/env bash
# What the browser tests (tests/test_web.py) and `skfusion export-web` need besides pip:
# Debian's headless Chromium (driven by playwright; never `playwright install`) and the
# page's npm packages, kept outside the clone in ~/.cache/skfusion/npm (where
# skfusion.web.find_node_modules looks by default). Installs only what is missing.
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium
fi
NPM_DIR="${SKFUSION_NPM_CACHE:-$HOME/.cache/skfusion/npm}"
if [ ! -f "$NPM_DIR/node_modules/onnxruntime-web/package.json" ] \
    || [ ! -f "$NPM_DIR/node_modules/@huggingface/transformers/package.json" ]; then
    mkdir -p "$NPM_DIR"
    # --ignore-scripts: onnxruntime-node's postinstall downloads from a blocked host,
    # and the browser does not need it.
    npm install --ignore-scripts --no-audit --no-fund --prefix "$NPM_DIR" \
        onnxruntime-web@1.31.0-dev.20260914-8d85527a0 @huggingface/transformers@4.3.2
fi
