#!/usr/bin/env bash
# Sets up a fresh machine: system tools (ffmpeg, espeak-ng; with --test also chromium, for the
# report pages' browser test) via apt when missing, then the Python venv in .venv from the
# pinned requirements, and the project installed in it (editable: the `avl` command). Re-runs
# reuse the venv and skip installs whose requirement files and pyproject.toml have not changed.
# Usage: bash setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")"

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

# --- system tools ------------------------------------------------------------------------
missing=()
tools=(ffmpeg ffprobe espeak-ng git)
[ $want_test -eq 1 ] && tools+=(chromium)       # tests/test_pages_browser.py renders pages
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages for: ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: ${missing[*]} missing and no apt-get here; install them with your package" \
         "manager (Debian/Ubuntu packages: ffmpeg espeak-ng git; for --test chromium)" >&2
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
# pyproject.toml too: a changed entry point or package list re-installs the project
stamp=".venv/.setup-stamp-$(cat "${files[@]}" pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ ! -x .venv/bin/avl ]; then
  echo "setup: installing Python packages (first run: a few minutes, ~5 GB for torch)" >&2
  args=()
  for f in "${files[@]}"; do args+=(-r "$f"); done
  pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
  "${pip[@]}" "${args[@]}"
  # the project itself, editable (the code stays here; `avl` goes on the venv's PATH).
  # --no-deps: its dependencies are the pins above; --no-build-isolation: built with the
  # pinned setuptools just installed, nothing else fetched
  "${pip[@]}" --no-deps --no-build-isolation -e .
  .venv/bin/python -c 'import torch, torchvision, torchaudio, yt_dlp, h5py, pyarrow, dask, dvc, av'
  .venv/bin/avl --help >/dev/null
  touch "$stamp"
fi
echo "setup: ready (.venv, $(ffmpeg -version | head -n1 | cut -d' ' -f1-3))" >&2
