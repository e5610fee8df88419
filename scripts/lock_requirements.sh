#!/usr/bin/env bash
# Refresh requirements/constraints.txt: the exact versions that `make demo` and `make test`
# install. Installs the project's ranges (pyproject.toml) into a throw-away venv from nothing,
# freezes it, and replaces the file atomically. Then run `make clean test test-slow` and commit
# the file only if the suite passes with it.
#   usage: scripts/lock_requirements.sh [python]        (make lock)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-python3}
TORCH=${TORCH:-torch==2.13.0}
OUT=${OUT:-requirements/constraints.txt}  # OUT=... writes elsewhere (to compare)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PYTHON" -m venv "$TMP/venv"
PIP=("$TMP/venv/bin/python" -m pip install -q)
"${PIP[@]}" --upgrade pip setuptools
"${PIP[@]}" "$TORCH"
"${PIP[@]}" "$(pwd)[test]"
{
  echo "# Exact versions of every dependency that the test suite passed with; the Makefile"
  echo "# installs with -c this file. Refresh: make lock (scripts/lock_requirements.sh), then"
  echo "# make clean test test-slow. torch is left out: the Makefile's TORCH (torch==2.13.0, CPU)"
  echo "# is installed first, and GPU users bring their own build."
  echo "# $("$TMP/venv/bin/python" --version), $(date -u +%Y-%m-%d)"
  "$TMP/venv/bin/python" -m pip freeze --all --exclude-editable \
    | grep -v -i -E '^(torch|hovernet)(==| @)' | grep -v '^#' | LC_ALL=C sort -f
} > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "wrote $OUT ($(grep -vc '^#' "$OUT") packages)"
