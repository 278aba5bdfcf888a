#!/usr/bin/env bash
# Build the test images without any container registry:
#   opsdb-base:bookworm   - Debian rootfs made by debootstrap, imported with `docker import`
#   opsdb-redis:test      - docker/Dockerfile target "redis"
#   opsdb-postgres:test   - docker/Dockerfile target "postgres"
# Re-runs are fast: the base is rebuilt only when its recipe hash changes, and
# `docker build` reuses its layer cache.
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
INCLUDE=redis-server,postgresql-15,postgresql-client-15
# Bump RECIPE when the rootfs post-processing below changes.
RECIPE=1
BASE=opsdb-base:$SUITE
HASH=$(printf '%s\n' "$SUITE" "$MIRROR" "$INCLUDE" "$RECIPE" | sha256sum | cut -c1-16)

current=$(docker image inspect -f '{{index .Config.Labels "opsdb.base.hash"}}' "$BASE" 2>/dev/null || true)
if [ "$current" = "$HASH" ]; then
  echo "build-images: $BASE up to date ($HASH)"
else
  echo "build-images: building $BASE ($HASH) with debootstrap"
  ROOTFS=$(mktemp -d /var/tmp/opsdb-rootfs.XXXXXX)
  cleanup() {
    # debootstrap mounts proc/sys inside the target; never rm -rf through a mount.
    grep -o " $ROOTFS/[^ ]*" /proc/mounts | sort -r | xargs -r umount -l || true
    rm -rf --one-file-system "$ROOTFS"
  }
  trap cleanup EXIT

  debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOTFS" "$MIRROR" \
    > /var/tmp/opsdb-debootstrap.log 2>&1 \
    || { tail -n 30 /var/tmp/opsdb-debootstrap.log; echo "build-images: debootstrap failed" >&2; exit 1; }

  # The postgresql-common postinst creates a "main" cluster; the image makes
  # its own data dir at first start, so drop it. Also drop apt caches, docs
  # and message translations (not needed, ~60 MB).
  rm -rf "$ROOTFS"/var/lib/postgresql/15 "$ROOTFS"/etc/postgresql/15 \
         "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin \
         "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/log/*.log \
         "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
         "$ROOTFS"/usr/share/locale/*

  tar --numeric-owner -C "$ROOTFS" -c . \
    | docker import \
        --change "LABEL opsdb.base.hash=$HASH" \
        --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' \
        - "$BASE" >/dev/null
  echo "build-images: imported $BASE"
fi

# The build context: only the files the Dockerfile copies, with their paths in the
# repository (the Redis image takes packaging/redis/ops-db-api.conf and .acl, the snippet
# and the ACL user the summit host's Redis and the dev kit's use), sent as a tar on stdin: never target/.
CONTEXT=(docker/Dockerfile docker/postgres-entrypoint.sh docker/redis-entrypoint.sh
         packaging/redis/ops-db-api.conf packaging/redis/ops-db-api.acl)

# Legacy builder: FROM a local-only image never triggers a registry lookup, and
# it needs no buildx plugin.
for target in redis postgres; do
  log=/var/tmp/opsdb-build-$target.log
  tar -c "${CONTEXT[@]}" \
    | DOCKER_BUILDKIT=0 docker build -f docker/Dockerfile --target "$target" -t "opsdb-$target:test" - > "$log" 2>&1 \
    || { tail -n 30 "$log"; echo "build-images: docker build $target failed" >&2; exit 1; }
  echo "build-images: built opsdb-$target:test"
done
