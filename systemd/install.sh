#!/bin/sh
# Installs webhook-worker on a systemd host:
#   - the package and its dependencies into /opt/webhook-worker (npm),
#   - `webhook-worker` into /usr/local/bin and `webhook-worker-admin` into /usr/local/sbin,
#   - the units into /etc/systemd/system (plus the restart back-off drop-in on systemd >= 254),
#   - the settings template as /etc/webhook-worker/webhook-worker.env, unless that file exists.
#
# Usage, from a checkout (npm pack builds dist/ and writes webhook-worker-<version>.tgz):
#   npm ci && npm pack
#   sudo sh systemd/install.sh ./webhook-worker-0.1.0.tgz
# Any npm package spec works in place of the tarball. Running it again upgrades in place;
# it never overwrites the env file, nor a webhook-worker.target edited since it was installed.
# Then: DEPLOYMENT.md, "Environment Configuration".
#
# The paths can be changed for packaging or a dry run into a scratch directory:
#   PREFIX CONF_DIR UNIT_DIR BIN_DIR SBIN_DIR SERVICE_USER NPM
set -eu

PACKAGE=${1:?usage: install.sh PACKAGE   (a tarball from npm pack, or any npm package spec)}
PREFIX=${PREFIX:-/opt/webhook-worker}
CONF_DIR=${CONF_DIR:-/etc/webhook-worker}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
BIN_DIR=${BIN_DIR:-/usr/local/bin}
SBIN_DIR=${SBIN_DIR:-/usr/local/sbin}
SERVICE_USER=${SERVICE_USER:-www-data}
NPM=${NPM:-npm}

say() { printf '%s\n' "install.sh: $*"; }
fail() { printf '%s\n' "install.sh: $*" >&2; exit 1; }
as_root() { [ "$(id -u)" = 0 ]; }

command -v node >/dev/null 2>&1 || fail "Node.js >= 20.19 is required (node not found on PATH)"
node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' \
  || fail "Node.js >= 20.19 is required, found $(node --version)"
if as_root && ! id "$SERVICE_USER" >/dev/null 2>&1; then
  fail "user $SERVICE_USER does not exist (set SERVICE_USER, and User= in webhook-worker@.service)"
fi

# A local tarball or directory is resolved before npm changes directory to the prefix.
case "$PACKAGE" in
  ./* | ../* | /*) [ -e "$PACKAGE" ] || fail "$PACKAGE does not exist"; PACKAGE=$(cd "$(dirname "$PACKAGE")" && pwd)/$(basename "$PACKAGE") ;;
esac

say "installing $PACKAGE into $PREFIX"
mkdir -p "$PREFIX"
"$NPM" install --prefix "$PREFIX" --omit=dev --no-audit --no-fund "$PACKAGE"
PKG_DIR=$PREFIX/node_modules/webhook-worker
[ -f "$PKG_DIR/systemd/webhook-worker@.service" ] || fail "$PKG_DIR does not look like webhook-worker (no systemd/ folder)"

# The service user reads its configuration but cannot rewrite it.
mkdir -p "$CONF_DIR"
chmod 750 "$CONF_DIR"
if as_root; then chown "root:$SERVICE_USER" "$CONF_DIR"; fi
if [ -e "$CONF_DIR/webhook-worker.env" ]; then
  say "keeping $CONF_DIR/webhook-worker.env"
else
  cp "$PKG_DIR/systemd/webhook-worker.env.example" "$CONF_DIR/webhook-worker.env"
  chmod 640 "$CONF_DIR/webhook-worker.env"
  if as_root; then chown "root:$SERVICE_USER" "$CONF_DIR/webhook-worker.env"; fi
  say "wrote $CONF_DIR/webhook-worker.env: set DATABASE_URL and WEBHOOK_SECRET_ENCRYPTION_KEY"
fi

mkdir -p "$UNIT_DIR"
cp "$PKG_DIR/systemd/webhook-worker@.service" "$UNIT_DIR/"
chmod 644 "$UNIT_DIR/webhook-worker@.service"
# The target is the operator's to edit (DEPLOYMENT.md "Scaling" adds instances to its Wants=):
# an upgrade replaces it only while it is still the copy this script installed, as recorded.
TARGET=$UNIT_DIR/webhook-worker.target
TARGET_RECORD=$PREFIX/.installed-target.sha256
checksum() { sha256sum "$1" | cut -d ' ' -f 1; }
if [ -e "$TARGET" ] && ! cmp -s "$TARGET" "$PKG_DIR/systemd/webhook-worker.target" \
  && { [ ! -e "$TARGET_RECORD" ] || [ "$(checksum "$TARGET")" != "$(cat "$TARGET_RECORD")" ]; }; then
  say "keeping $TARGET (edited here; the packaged one is $PKG_DIR/systemd/webhook-worker.target)"
else
  cp "$PKG_DIR/systemd/webhook-worker.target" "$TARGET"
  chmod 644 "$TARGET"
  checksum "$TARGET" > "$TARGET_RECORD"
fi
SYSTEMD_VERSION=$(systemctl --version 2>/dev/null | awk 'NR == 1 { print $2 + 0 }')
if [ "${SYSTEMD_VERSION:-0}" -ge 254 ]; then
  mkdir -p "$UNIT_DIR/webhook-worker@.service.d"
  cp "$PKG_DIR/systemd/restart-backoff.conf" "$UNIT_DIR/webhook-worker@.service.d/"
  chmod 644 "$UNIT_DIR/webhook-worker@.service.d/restart-backoff.conf"
fi

mkdir -p "$BIN_DIR" "$SBIN_DIR"
ln -sf "$PREFIX/node_modules/.bin/webhook-worker" "$BIN_DIR/webhook-worker"
sed -e "s#/etc/webhook-worker#$CONF_DIR#g" -e "s#/opt/webhook-worker#$PREFIX#g" \
  "$PKG_DIR/systemd/webhook-worker-admin" > "$SBIN_DIR/webhook-worker-admin"
chmod 755 "$SBIN_DIR/webhook-worker-admin"

if [ -d /run/systemd/system ] && as_root; then
  systemctl daemon-reload
  say "units installed; systemd reloaded"
else
  say "units installed into $UNIT_DIR (systemd not running here: run systemctl daemon-reload on the host)"
fi
say "next: DEPLOYMENT.md, \"Environment Configuration\" and \"Database Setup\""
