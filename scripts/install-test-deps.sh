#!/usr/bin/env bash
# Installs what the tests need besides Go: Dovecot 2.3 (Debian package
# dovecot-imapd), used by internal/testenv/dovecot to run private IMAP
# servers. Idempotent: does nothing when dovecot and doveconf are present.
# Never starts the system Dovecot service; the tests start their own
# instances with their own configuration.
set -euo pipefail

log() { printf 'install-test-deps: %s\n' "$*"; }

# /usr/sbin is not in every user's PATH.
find_bin() {
	if command -v "$1" 2>/dev/null; then
		return 0
	fi
	for d in /usr/sbin /usr/bin /sbin; do
		if [ -x "$d/$1" ]; then
			echo "$d/$1"
			return 0
		fi
	done
	return 1
}

dovecot_bin=$(find_bin dovecot || true)
doveconf_bin=$(find_bin doveconf || true)
if [ -n "$dovecot_bin" ] && [ -n "$doveconf_bin" ]; then
	log "dovecot already installed: $dovecot_bin version $("$dovecot_bin" --version); nothing to do"
	exit 0
fi
missing=""
[ -n "$dovecot_bin" ] || missing="$missing dovecot"
[ -n "$doveconf_bin" ] || missing="$missing doveconf"
log "missing:$missing; installing dovecot-imapd"

if [ "$(id -u)" -eq 0 ]; then
	SUDO=""
elif command -v sudo >/dev/null 2>&1; then
	SUDO="sudo"
	log "not root: using sudo"
else
	log "ERROR: not root and sudo is not available; as root run: apt-get update && apt-get install -y dovecot-imapd"
	exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
	log "ERROR: apt-get not found; install Dovecot 2.3 (Debian/Ubuntu package dovecot-imapd) with this system's package manager"
	exit 1
fi

# The package's maintainer scripts start the service through invoke-rc.d or
# deb-systemd-invoke, which both honour policy-rc.d: exit 101 forbids it.
policy=/usr/sbin/policy-rc.d
created_policy=no
if [ -e "$policy" ]; then
	log "keeping existing $policy"
else
	printf '#!/bin/sh\n# temporary, from install-test-deps.sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
	$SUDO chmod 755 "$policy"
	created_policy=yes
	log "created $policy (exit 101) so that the dovecot service is not started"
fi
cleanup() {
	if [ "$created_policy" = yes ]; then
		$SUDO rm -f "$policy"
		log "removed $policy"
	fi
}
trap cleanup EXIT

log "running apt-get update"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
log "running apt-get install -y dovecot-imapd"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends dovecot-imapd

dovecot_bin=$(find_bin dovecot || true)
if [ -z "$dovecot_bin" ] || [ -z "$(find_bin doveconf || true)" ]; then
	log "ERROR: dovecot-imapd installed but dovecot/doveconf not found"
	exit 1
fi
version=$("$dovecot_bin" --version)
log "installed $dovecot_bin version $version"
case "$version" in
2.3.*) ;;
*) log "WARNING: internal/testenv/dovecot generates Dovecot 2.3 configuration; version $version will not work" ;;
esac
