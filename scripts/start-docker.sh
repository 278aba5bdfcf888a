#!/usr/bin/env bash
# Start dockerd in the background (there is no systemd) unless a daemon is
# already answering, and wait until `docker info` works.
#
# Default flags are enough on a Debian 12 VM: overlay2 on ext4, cgroupfs
# driver on cgroup v1, iptables (nft backend) with the default bridge, and
# published ports on 127.0.0.1 served by docker-proxy. If dockerd dies at
# startup (typically no usable iptables/nf_tables in the kernel), retry with
# --iptables=false: published ports, container-to-container traffic and DNS
# on user-defined networks still work; only container egress NAT is lost,
# which the tests do not need. Extra flags can be passed in DOCKERD_FLAGS.
set -euo pipefail

LOG=${DOCKERD_LOG:-/var/log/opsdb-dockerd.log}
TIMEOUT=${DOCKERD_TIMEOUT:-60}

if docker info >/dev/null 2>&1; then
  echo "start-docker: dockerd already running"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "start-docker: must run as root" >&2; exit 1; }

# Returns 0 once docker answers, 1 if dockerd exited, 2 on timeout.
start_dockerd() {
  # shellcheck disable=SC2206  # DOCKERD_FLAGS is word-split on purpose
  local args=(${DOCKERD_FLAGS:-} "$@")
  echo "start-docker: starting: dockerd ${args[*]} (log: $LOG)"
  echo "=== $(date -u +%FT%TZ) dockerd ${args[*]}" >>"$LOG"
  # setsid + redirected stdio: detach from the caller so CI does not wait on it.
  setsid dockerd "${args[@]}" >>"$LOG" 2>&1 </dev/null &
  local pid=$! deadline=$((SECONDS + TIMEOUT))
  while [ "$SECONDS" -lt "$deadline" ]; do
    docker info >/dev/null 2>&1 && { echo "start-docker: ready (pid $pid)"; return 0; }
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.5
  done
  return 2
}

rc=0
start_dockerd || rc=$?
if [ "$rc" -eq 1 ]; then
  echo "start-docker: dockerd exited; retrying with --iptables=false" >&2
  rc=0
  start_dockerd --iptables=false || rc=$?
fi
if [ "$rc" -ne 0 ]; then
  tail -n 20 "$LOG" >&2
  echo "start-docker: dockerd did not become ready within ${TIMEOUT}s; see $LOG" >&2
  exit 1
fi
