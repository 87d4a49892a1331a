#!/usr/bin/env bash
# Creates the environment (with the test extra) if missing and runs the whole test suite.
source "$(dirname "$0")/_env.sh"
ensure_env "test"
export TF_CPP_MIN_LOG_LEVEL=3
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
