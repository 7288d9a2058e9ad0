#!/usr/bin/env bash
# Creates .venv (Python 3.11+) with semissl and its dependencies, and installs
# Debian's Fashion-MNIST package when apt is available. Idempotent.
# Usage: source scripts/setup_env.sh [extras]   (extras e.g. "test")
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-}"

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo"
  echo "== installing dataset-fashion-mnist (apt)"
  $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || {
    $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } ||
    echo "   (could not apt-get install dataset-fashion-mnist; set data.data_dir or use tfds)"
fi

python="${PYTHON:-python3}"
"$python" -c 'import sys; assert sys.version_info >= (3, 11), "semissl needs Python 3.11+"'
if [ ! -x "$root/.venv/bin/python" ]; then
  echo "== creating $root/.venv"
  "$python" -m venv "$root/.venv"
fi
spec="$root"; [ -n "$extras" ] && spec="$root[$extras]"
echo "== pip install -e $spec"
"$root/.venv/bin/python" -m pip install -q --upgrade pip
"$root/.venv/bin/python" -m pip install -q -e "$spec"
