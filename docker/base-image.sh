#!/usr/bin/env bash
# Build the base image every DLBA image starts FROM, offline from any container registry:
# `debootstrap --variant=minbase` of this host's Debian release from the apt mirror the host
# uses, with the host's extra CA certificates (so `apt-get` and `pip` inside `docker build`
# reach the package registries as the host does), then `docker import`.
#
#   docker/base-image.sh [TAG]        # default dlba-base:<codename>; prints the tag
#
# Cached: the image carries a label with a digest of everything that went into it (release,
# mirrors, apt settings, CA certificates, this script); a second run with the same inputs
# returns at once. Needs root, debootstrap and a running Docker engine.
set -euo pipefail

DOCKER="${DOCKER:-docker}"
. /etc/os-release
CODENAME="${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}"
TAG="${1:-dlba-base:$CODENAME}"
ARCH="$(dpkg --print-architecture)"

# The host's Debian mirrors (deb822 *.sources or one-line *.list), for this release only:
# "URI SUITE" pairs, e.g. "http://deb.debian.org/debian bookworm".
host_mirrors() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] && awk -v c="$CODENAME" '$1=="deb" { u=""; s="";
        for (i=2;i<=NF;i++) { if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; continue }
          if (u=="") u=$i; else if (s=="") s=$i }
        if (s ~ "^"c) print u, s }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] && awk -v c="$CODENAME" '
        function flush() { if (typ ~ /(^| )deb( |$)/) { n=split(suites, S, " ");
            for (i=1;i<=n;i++) if (S[i] ~ "^"c) { m=split(uris, U, " ");
              for (j=1;j<=m;j++) print U[j], S[i] } } typ=""; uris=""; suites="" }
        /^[ \t]*$/ { flush(); next }
        /^Types:/ { typ=$0; sub(/^Types:[ \t]*/, "", typ) }
        /^URIs:/ { uris=$0; sub(/^URIs:[ \t]*/, "", uris) }
        /^Suites:/ { suites=$0; sub(/^Suites:[ \t]*/, "", suites) }
        END { flush() }' "$f"
  done
}

MIRRORS="$(host_mirrors | sort -u)"
MAIN="$(awk -v c="$CODENAME" '$2==c { print $1; exit }' <<<"$MIRRORS")"
[ -n "$MAIN" ] || { echo "base-image: no apt source for $CODENAME on this host" >&2; exit 2; }
# apt settings the host relies on to read its mirror (a frozen mirror's expired Release file)
APT_CONF="$(apt-config dump | grep -E '^Acquire::(Check-Valid-Until|Check-Date) ' || true)"
CA_FILES=(/usr/local/share/ca-certificates/*.crt)
[ -e "${CA_FILES[0]}" ] || CA_FILES=()

KEY="$( { echo "$CODENAME $ARCH"; echo "$MIRRORS"; echo "$APT_CONF";
          cat "${CA_FILES[@]}" "$0" 2>/dev/null; } | sha256sum | cut -c1-16)"
if [ "$("$DOCKER" image inspect -f '{{ index .Config.Labels "dlba.base" }}' "$TAG" 2>/dev/null)" \
     = "$KEY" ]; then
  echo "$TAG"
  exit 0
fi

ROOTFS="$(mktemp -d /var/tmp/dlba-base.XXXXXX)"
cleanup() {
  # debootstrap may leave /proc or /sys mounted in the target when it fails half way
  for m in proc sys dev/pts; do mountpoint -q "$ROOTFS/$m" && umount -l "$ROOTFS/$m"; done
  rm -rf --one-file-system "$ROOTFS"
}
trap cleanup EXIT

echo "base-image: debootstrap $CODENAME from $MAIN" >&2
debootstrap --variant=minbase --arch="$ARCH" --include=ca-certificates \
  "$CODENAME" "$ROOTFS" "$MAIN" >"$ROOTFS.log" 2>&1 \
  || { tail -20 "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"

{
  while read -r uri suite; do
    [ -n "$uri" ] || continue
    printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\n' "$uri" "$suite"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n'
  done <<<"$MIRRORS"
} >"$ROOTFS/etc/apt/sources.list.d/debian.sources"
rm -f "$ROOTFS/etc/apt/sources.list"
[ -z "$APT_CONF" ] || echo "$APT_CONF" >"$ROOTFS/etc/apt/apt.conf.d/90host"
# Images stay small: no docs, no man pages, no recommends.
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
  >"$ROOTFS/etc/apt/apt.conf.d/90norecommends"
if [ "${#CA_FILES[@]}" -gt 0 ]; then
  cp "${CA_FILES[@]}" "$ROOTFS/usr/local/share/ca-certificates/"
fi
chroot "$ROOTFS" update-ca-certificates >/dev/null
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/usr/share/doc/* \
  "$ROOTFS"/usr/share/man/* "$ROOTFS"/var/log/*.log

tar -C "$ROOTFS" --numeric-owner -c . | "$DOCKER" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL dlba.base=$KEY" \
  --change 'CMD ["/bin/bash"]' - "$TAG" >/dev/null
echo "$TAG"
