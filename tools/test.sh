#!/usr/bin/env bash
# Install what the tests need and run the whole test suite (arguments go to pytest, e.g. a test file).
#
#   ./tools/test.sh                 everything: the daemon, the training package, lint and types
#   ./tools/test.sh --quick         the daemon only: no TensorFlow installed, tests marked `train` left out
#   ./tools/test.sh tests/unit      one folder or file (no lint step when pytest arguments are given)
#
# System packages (Debian/Ubuntu), installed with apt-get when missing: mosquitto and its clients
# (the tests run real brokers), shellcheck, systemd (systemd-analyze) and openssl. apt-get runs
# directly as root and through sudo otherwise. Set SKIP_APT=1 to skip that step: the
# tests of shellcheck and systemd-analyze then skip, saying why, where those tools are absent.
# Then the project with its test and training extras goes into .venv, and pytest runs.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="train,test,jax"
marks=()
if [ "${1:-}" = --quick ]; then
  shift
  extras="test"
  marks=(-m "not train")
fi
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

if [ "${SKIP_APT:-0}" != 1 ] && command -v apt-get >/dev/null; then
  missing=()
  { [ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null; } || missing+=(mosquitto)
  command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
  command -v mosquitto_passwd >/dev/null || [ -x /usr/bin/mosquitto_passwd ] || missing+=(mosquitto)
  command -v shellcheck >/dev/null || missing+=(shellcheck)
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  command -v openssl >/dev/null || missing+=(openssl)
  if [ ${#missing[@]} -gt 0 ]; then
    as_root=()
    if [ "$(id -u)" -ne 0 ]; then
      command -v sudo >/dev/null || { echo "tools/test.sh: needs ${missing[*]}; run as root or install sudo" >&2; exit 1; }
      as_root=(sudo)
    fi
    echo "tools/test.sh: installing ${missing[*]}" >&2
    "${as_root[@]}" apt-get update -qq
    # shellcheck disable=SC2046
    "${as_root[@]}" apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u)
  fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[$extras]"
if [ $# -eq 0 ]; then
  # The habits, enforced (configured in pyproject.toml): lint, then types.
  .venv/bin/ruff check .
  .venv/bin/mypy
fi
exec .venv/bin/python -m pytest ${marks[@]+"${marks[@]}"} "$@"
