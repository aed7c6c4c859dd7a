#!/usr/bin/env bash
# One entry point for a fresh machine with Python 3.11 and pip:
#   ./run.sh demo    set up .venv if needed, then run the end-to-end demo on synthetic data
#   ./run.sh test    set up .venv if needed, then run the whole test suite
#   ./run.sh setup   only set up .venv
# Setup is idempotent: it re-runs only when pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
VENV="${NPC_VENV:-.venv}"
STAMP="$VENV/.npc-setup-stamp"
want=$(cat pyproject.toml constraints.txt run.sh | sha256sum | cut -d' ' -f1)

setup() {
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then return 0; fi
  echo "== setting up $VENV (once; a few minutes)" >&2
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  local pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
  "${pip[@]}" --upgrade pip setuptools wheel
  # PyRadiomics 3.0.1 has a C extension whose build imports numpy and versioneer: install those first and
  # build it without isolation so it compiles against the numpy that will be used.
  "${pip[@]}" -c constraints.txt numpy versioneer
  "${pip[@]}" -c constraints.txt --no-build-isolation pyradiomics
  # CPU build of torch (a local wheel on the project's machines; from PyPI elsewhere).
  "${pip[@]}" -c constraints.txt torch
  "${pip[@]}" -c constraints.txt -e ".[test,distributed]"
  echo "$want" > "$STAMP"
}

browser() {
  # Headless Chromium prints the patient sheet to PDF and runs the report tests in a real browser: Debian's
  # chromium and chromium-driver, installed here when missing (as root, or through passwordless sudo).
  if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then return 0; fi
  local apt=()
  if [ "$(id -u)" = 0 ]; then apt=(apt-get); elif sudo -n true 2>/dev/null; then apt=(sudo -n apt-get); fi
  if [ ${#apt[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing Debian's chromium and chromium-driver (report PDFs, browser tests)" >&2
    local packages=(install -y -q --no-install-recommends chromium chromium-driver)
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" "${packages[@]}" >/dev/null 2>&1 \
      || { "${apt[@]}" update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive "${apt[@]}" "${packages[@]}" \
           >/dev/null 2>&1; } || true
  fi
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "!! WARNING: Chromium/chromedriver could not be installed: no patient-sheet PDF, and the browser" \
         "tests of the reports will be SKIPPED (install Debian's chromium and chromium-driver)" >&2
  fi
}

cmd="${1:-}"
shift || true
case "$cmd" in
  setup) setup ;;
  demo) setup; browser; exec "$VENV/bin/npc-prognosis" demo "$@" ;;
  test) setup; browser; exec "$VENV/bin/python" -m pytest "$@" ;;
  *) echo "usage: ./run.sh demo|test|setup [args...]" >&2; exit 64 ;;
esac
