#!/usr/bin/env bash
# README command 2: install (idempotent), lint, run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check src tests benchmarks scripts
.venv/bin/python -m pytest -q "$@"
