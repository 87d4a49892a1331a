# Sourced by scripts/demo.sh and scripts/test.sh: creates .venv if missing and installs the pinned environment.
# Usage: ensure_env EXTRA   (EXTRA is "" or "test")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ensure_env() {
  local extra="$1" py="" stamp want
  if [ ! -x .venv/bin/python ]; then
    for cand in python3.11 python3.12 python3; do
      if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        py="$cand"; break
      fi
    done
    [ -n "$py" ] || { echo "error: Python >= 3.11 is required" >&2; exit 1; }
    "$py" -m venv .venv
  fi
  # Reinstall only when the dependency spec changed.
  want="$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -c1-16)-${extra}"
  stamp=".venv/.lowlight-installed"
  if [ ! -f "$stamp" ] || ! grep -qx -- "$want" "$stamp"; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    local target="."
    [ -n "$extra" ] && target=".[${extra}]"
    .venv/bin/python -m pip install -q -c requirements/constraints.txt -e "$target"
    echo "$want" > "$stamp"
  fi
}
