#!/usr/bin/env bash
# Sets up a fresh machine: system tools (ffmpeg, espeak-ng) via apt when missing, then the
# Python venv in .venv from the pinned requirements. Re-runs reuse the venv and skip installs
# whose requirement files have not changed. Usage: bash setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")"

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

# --- system tools ------------------------------------------------------------------------
missing=()
for tool in ffmpeg ffprobe espeak-ng git; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages for: ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: ${missing[*]} missing and no apt-get here; install them with your package" \
         "manager (Debian/Ubuntu packages: ffmpeg espeak-ng git)" >&2
    exit 1
  fi
  pkgs=()
  for tool in "${missing[@]}"; do
    case "$tool" in ffmpeg|ffprobe) pkgs+=(ffmpeg) ;; *) pkgs+=("$tool") ;; esac
  done
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${pkgs[@]}" | sort -u) >/dev/null
fi

# --- python venv -------------------------------------------------------------------------
py="${PYTHON:-python3}"
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "setup: need Python >= 3.10 (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$py" -m venv .venv

files=(requirements.txt)
[ $want_test -eq 1 ] && files+=(requirements-test.txt)
stamp=".venv/.setup-stamp-$(cat "${files[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python packages (first run: a few minutes, ~5 GB for torch)" >&2
  args=()
  for f in "${files[@]}"; do args+=(-r "$f"); done
  .venv/bin/python -m pip install -q --disable-pip-version-check "${args[@]}"
  .venv/bin/python -c 'import torch, torchvision, torchaudio, yt_dlp, h5py, pyarrow, dask, dvc, av'
  touch "$stamp"
fi
echo "setup: ready (.venv, $(ffmpeg -version | head -n1 | cut -d' ' -f1-3))" >&2
