#!/usr/bin/env bash
# Install the project with its test and training extras into .venv and run the whole test suite.
# Needs: python3 (3.11+) with venv, and the Mosquitto broker binary (apt-get install mosquitto);
# the shellcheck and systemd-analyze tests run when those tools are present (they skip, saying why, when absent).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[train,test]"
exec .venv/bin/python -m pytest "$@"
