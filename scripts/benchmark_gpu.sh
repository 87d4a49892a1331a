#!/usr/bin/env bash
# Runs every launch.benchmark section on this machine's GPU and writes docs/benchmark_<device>.json, e.g.
# docs/benchmark_nvidia_h100_80gb_hbm3.json (written atomically: a failed run leaves any earlier file as it was).
#
#   bash scripts/benchmark_gpu.sh [extra launch.benchmark flags, e.g. --methods=sgz,scuf]
#
# The interpreter: $PYTHON if set, else .venv/bin/python, else python3, the first whose jax sees a GPU (this
# project's .venv has the CPU jax: install a CUDA build there, e.g. `.venv/bin/pip install "jax[cuda13]"`, or
# point PYTHON at one). Sections: SGZ inference and training (with the PyTorch peer when torch imports), the input
# pipeline, the metrics (when `python -m launch.assets list` finds their assets in the cache), every method
# (`methods`) and the SCUF memory table, whose 1-device rows are also run for the measured peak (--scuf_measure).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=""
for cand in "${PYTHON:-}" .venv/bin/python python3; do
  [ -n "$cand" ] || continue
  command -v "$cand" >/dev/null 2>&1 || [ -x "$cand" ] || continue
  if "$cand" -c 'import sys, jax; sys.exit(jax.default_backend() != "gpu")' >/dev/null 2>&1; then
    PY="$cand"; break
  fi
done
if [ -z "$PY" ]; then
  echo "error: no GPU: neither \$PYTHON, .venv/bin/python nor python3 has a jax that sees one (install jax with" \
       "CUDA, e.g. '.venv/bin/pip install \"jax[cuda13]\"', or set PYTHON)" >&2
  exit 1
fi

device="$("$PY" -c 'import re, jax; print(re.sub(r"[^a-z0-9]+", "_", jax.devices()[0].device_kind.lower()).strip("_"))')"
sections="sgz_inference,sgz_train,data,methods,scuf_memory"
if "$PY" -m launch.assets list 2>/dev/null | grep -q "niqe" && "$PY" -c 'from lowlight_jax.metrics import assets
for n in assets.METRIC_ASSETS["niqe"] + assets.METRIC_ASSETS["lpips"]: assets.asset_path(n)' >/dev/null 2>&1; then
  sections="$sections,metrics"
else
  echo "note: no metric assets in the cache (python -m launch.assets fetch): the metrics section is left out" >&2
fi
peer=()
if "$PY" -c 'import torch' >/dev/null 2>&1; then peer=(--peer); fi

out="docs/benchmark_${device}.json"
tmp="$(mktemp "docs/.benchmark_${device}.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
echo "benchmarking on $device with $PY (sections: $sections) -> $out" >&2
"$PY" -m launch.benchmark --sections="$sections" --scuf_measure "${peer[@]}" "$@" > "$tmp"
"$PY" -c 'import json, sys; json.load(open(sys.argv[1]))' "$tmp"  # A whole JSON object, or keep the old file.
mv "$tmp" "$out"
trap - EXIT
echo "wrote $out" >&2
