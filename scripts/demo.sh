#!/usr/bin/env bash
# Creates the environment if missing, trains SGZ on the embedded default data (CPU-sized demo config),
# enhances the embedded test photos and prints input-vs-enhanced PSNR/SSIM against their ground truth.
source "$(dirname "$0")/_env.sh"
ensure_env ""
export TF_CPP_MIN_LOG_LEVEL=3
exec .venv/bin/python -m launch.demo --workdir "${WORKDIR:-runs/demo}" "$@"
