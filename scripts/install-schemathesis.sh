#!/usr/bin/env bash
# schemathesis (an OpenAPI-driven test generator, from PyPI) in a virtual environment of its
# own under target/, for tests/it/openapi.rs. Pinned, so every run checks with the same
# checks. Idempotent: nothing is fetched when that version is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=4.32.5
VENV=target/schemathesis
if [ -x "$VENV/bin/st" ] && "$VENV/bin/python" -c "import schemathesis, sys; sys.exit(schemathesis.__version__ != '$VERSION')" 2>/dev/null; then
  echo "install-schemathesis: schemathesis $VERSION present"
  exit 0
fi
command -v python3 >/dev/null \
  || { echo "install-schemathesis: python3 is missing: scripts/install-deps.sh installs it" >&2; exit 1; }
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION"
echo "install-schemathesis: schemathesis $VERSION in $VENV"
