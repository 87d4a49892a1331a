#!/usr/bin/env bash
# Creates the environment (with the test extra) if missing, fetches the metric assets (a no-op when the cache
# already holds them) and runs the whole test suite.
source "$(dirname "$0")/_env.sh"
ensure_env "test"
export TF_CPP_MIN_LOG_LEVEL=3
# NIQE/BRISQUE/LPIPS parameters into $LOWLIGHT_ASSETS (default ~/.cache/lowlight_jax/assets): the metric tests read
# them from the cache and fail, naming this command, when it is empty.
.venv/bin/python -m launch.assets fetch --quiet
# Whole files per worker (module fixtures built once), in the order tests/conftest.py sets (the SCUF file first, the
# slowest files last; its memory comment says why).
exec .venv/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder "$@"
