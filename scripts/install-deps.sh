#!/usr/bin/env bash
# Install the Debian packages needed to build and run the test containers (and the
# browser of the dashboard test).
# Idempotent: apt is not touched at all when everything is already installed.
set -euo pipefail

PACKAGES=(
  docker.io debootstrap iptables
  redis-server redis-tools
  postgresql-15 postgresql-client-15
  procps  # kill(1): the local PostgreSQL backend signals its servers with it
  ca-certificates curl
  # The dashboard test drives a real headless Chromium through chromedriver; the fonts
  # (only recommended by chromium) make its screenshot legible.
  chromium chromium-driver fonts-liberation
  # The OpenAPI test runs schemathesis (scripts/install-schemathesis.sh) in a venv.
  python3 python3-venv
  # systemd-analyze: the packaging test has systemd verify the unit.
  systemd
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

echo "install-deps: installing ${missing[*]}"

# Keep package postinst scripts from starting redis/postgres/dockerd on the
# host: only the containers are used, and dockerd is started by start-docker.sh.
# (policy-rc.d exit code 101 = "action forbidden".)
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod +x "$POLICY"
  trap '$SUDO rm -f "$POLICY"' EXIT
fi

# env: sudo would otherwise drop DEBIAN_FRONTEND.
APT=(env DEBIAN_FRONTEND=noninteractive apt-get -qq)
[ -z "$SUDO" ] || APT=("$SUDO" "${APT[@]}")
"${APT[@]}" update
"${APT[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
