#!/bin/sh
# DLBA container entry point: config from the environment, the VIP on lo, then `dlba node`.
# DLBA_DRY_RUN=1 prints the steps instead of changing the network (tests run it that way).
set -eu

CONFIG="${DLBA_CONFIG:-/etc/dlba/cluster.toml}"
NAME="${DLBA_NODE_NAME:?DLBA_NODE_NAME is not set}"
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${DLBA_PYTHON:-python3}"

run() {
  if [ "${DLBA_DRY_RUN:-0}" = 1 ]; then echo "would run: $*"; else "$@"; fi
}

"$PY" "$HERE/gen_config.py" --out "$CONFIG"

# Every node holds the VIP on lo but its kernel must not answer ARP for it: the scheduler's
# process does. Compose sets the sysctls (a container's /proc/sys is read-only); tried here too
# for `docker run` without them, then checked: a kernel that could answer is fatal, since
# two answerers for the VIP split the clients between nodes.
PROC_SYS="${DLBA_PROC_SYS:-/proc/sys}"
for key in all default; do
  run sysctl -q -w "net.ipv4.conf.$key.arp_ignore=1" "net.ipv4.conf.$key.arp_announce=2" \
    2>/dev/null || true
done

# arp_ignore/arp_announce in effect on an interface: the larger of `all` and its own.
effective() {
  a="$(cat "$PROC_SYS/net/ipv4/conf/all/$2" 2>/dev/null || echo 0)"
  b="$(cat "$PROC_SYS/net/ipv4/conf/$1/$2" 2>/dev/null || echo 0)"
  [ "$a" -gt "$b" ] && echo "$a" || echo "$b"
}
bad=""
for dir in "$PROC_SYS"/net/ipv4/conf/*; do
  dev="${dir##*/}"
  case "$dev" in all|default|lo) continue ;; esac
  [ "$(effective "$dev" arp_ignore)" -ge 1 ] || bad="$bad $dev:arp_ignore=$(effective "$dev" arp_ignore)"
  [ "$(effective "$dev" arp_announce)" -ge 2 ] \
    || bad="$bad $dev:arp_announce=$(effective "$dev" arp_announce)"
done
if [ -n "$bad" ] && [ -n "${DLBA_VIP:-}" ]; then
  echo "entrypoint: refusing to start: this node's kernel could answer ARP for the VIP" \
    "$DLBA_VIP as well as the scheduler ($bad); set net.ipv4.conf.all.arp_ignore=1 and" \
    "arp_announce=2 (compose: sysctls; docker run: --sysctl)" >&2
  exit 2
fi
if [ -n "${DLBA_VIP:-}" ]; then
  run ip addr replace "$DLBA_VIP/32" dev lo
fi

if [ "${DLBA_DRY_RUN:-0}" = 1 ]; then
  echo "would exec: dlba node --config $CONFIG --name $NAME"
  exit 0
fi
exec dlba node --config "$CONFIG" --name "$NAME"
