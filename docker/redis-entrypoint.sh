#!/bin/sh
# The test image's Redis runs as the summit host's does: the packaged settings, and no
# client is answered without a password. Its ACL file comes from the packaged template
# (packaging/redis/ops-db-api.acl, comment lines left out): the service's user with
# OPSDB_REDIS_PASSWORD, and the default user as an administrator with
# OPSDB_REDIS_ADMIN_PASSWORD, for the test harness. The dev kit writes the same file
# (ops_db_service::redis_access::acl_file).
set -eu
: "${OPSDB_REDIS_PASSWORD:?the service user's password is not set}"
: "${OPSDB_REDIS_ADMIN_PASSWORD:?the administrator's password is not set}"
sha256() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
{
  echo "user default on #$(sha256 "$OPSDB_REDIS_ADMIN_PASSWORD") ~* &* +@all"
  grep -v -e '^#' -e '^$' /etc/redis/ops-db-api.acl \
    | sed "s/{password_sha256}/$(sha256 "$OPSDB_REDIS_PASSWORD")/"
} > /data/users.acl
chmod 600 /data/users.acl
# The snippet first (redis-server reads a config file only as its first argument), then
# what is this container's own; `docker run` arguments come last and override these.
exec redis-server /etc/redis/ops-db-api.conf \
  --bind 0.0.0.0 --protected-mode no --dir /data --aclfile /data/users.acl "$@"
