#!/usr/bin/env bash
# tve-suite: provision the environment, then run every notebook (default) or the tests.
#   ./run_all.sh [--profile smoke|cpu|paper] [--dry-run] [--only NN ...] [--keep-going] [--force] [--figures-only]
#                [--precision auto|native|fp32|bf16] [--compile BACKEND]
#   ./run_all.sh --tests [pytest args]      # the test suite (what CI runs; -m browser: the JupyterLab browser test)
#   ./run_all.sh --lab [--port N]           # JupyterLab on notebooks/ with the suite's kernel (prints the URL)
# Environment: TVE_VENV (default .venv), TVE_VENV_NEEDS_GB (default 7), DATA_DIR, WEIGHTS_DIR, DEVICE (auto|cpu|cuda).
set -euo pipefail
cd "$(dirname "$0")"
VENV="${TVE_VENV:-.venv}"

# the x86_64 venv (a CUDA build of torch) takes about 6.3 GB: say so before pip fails half-way with ENOSPC
VENV_NEEDS_GB="${TVE_VENV_NEEDS_GB:-7}"
check_disk() {
  local parent free_kb
  parent="$(dirname "$(realpath -m "$VENV")")"
  mkdir -p "$parent"
  free_kb="$(df -Pk "$parent" | awk 'NR == 2 {print $4}')"
  if [ -n "$free_kb" ] && [ "$free_kb" -lt $((VENV_NEEDS_GB * 1024 * 1024)) ]; then
    echo "[setup] error: creating $VENV needs about $VENV_NEEDS_GB GB free on the disk of $parent;" \
         "only $((free_kb / 1024)) MB is free. Free some space, or set TVE_VENV to a folder on a larger disk." >&2
    exit 1
  fi
}

provision() {
  local py="$VENV/bin/python"
  if ! "$py" -c "import torch, torchvision, timm, papermill, captum, seaborn, sklearn, ipykernel, ipywidgets, playwright, tve_lib" 2>/dev/null; then
    check_disk
    echo "[setup] creating $VENV (first run takes a few minutes)"
    python3 -m venv "$VENV"
    case "$(uname -m)" in
      x86_64) torch_pins="torch==2.14.1 torchvision==0.29.1" ;;
      aarch64|arm64) torch_pins="torch==2.9.1 torchvision==0.24.1" ;;
      *) torch_pins="torch torchvision" ;;
    esac
    # --no-cache-dir: the wheels (torch and its CUDA libraries, several GB) would otherwise sit on disk twice
    "$VENV/bin/pip" install -q --no-cache-dir --upgrade pip
    # shellcheck disable=SC2086
    "$VENV/bin/pip" install -q --no-cache-dir $torch_pins
    "$VENV/bin/pip" install -q --no-cache-dir -r requirements.txt
    "$VENV/bin/pip" install -q --no-deps -e .
  fi
  # the kernel papermill runs (-k python3) is this venv's interpreter
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (tve-suite)" >/dev/null
  if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ "$(id -u)" = 0 ] \
     && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian's dataset-fashion-mnist"
    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1) || \
      (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1) || \
      echo "[setup] warning: could not install dataset-fashion-mnist; set DATA_DIR to a folder with fashion-mnist/"
  fi
}

# the browser test drives Debian's Chromium (no browser download); without it that test is skipped
provision_browser() {
  if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian's chromium for the JupyterLab browser test"
    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1) || \
      (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1) || \
      echo "[setup] warning: could not install chromium; the browser test will be skipped"
  fi
}

if [ "${1:-}" = "--tests" ]; then
  shift
  provision
  provision_browser
  exec "$VENV/bin/python" -m pytest -q "$@"
fi
if [ "${1:-}" = "--setup-only" ]; then provision; exit 0; fi
if [ "${1:-}" = "--lab" ]; then
  shift
  provision
  exec "$VENV/bin/python" -m tve_lib.lab "$@"
fi

provision
export PYTHONUNBUFFERED=1
exec "$VENV/bin/python" -m tve_lib.runner --data-dir "${DATA_DIR:-}" --weights-dir "${WEIGHTS_DIR:-}" \
  --device "${DEVICE:-auto}" "$@"
