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

# Every node holds the VIP on lo but must not answer ARP for it: only the scheduler does,
# with gratuitous ARP when it takes the role (compose also sets these as container sysctls;
# repeated here for `docker run` without them, and not fatal where /proc/sys is read-only).
for key in all lo eth0 eth1; do
  [ -e "/proc/sys/net/ipv4/conf/$key" ] || [ "${DLBA_DRY_RUN:-0}" = 1 ] || continue
  run sysctl -q -w "net.ipv4.conf.$key.arp_ignore=1" "net.ipv4.conf.$key.arp_announce=2" \
    || echo "entrypoint: cannot set arp sysctls on $key (read-only /proc/sys?)" >&2
done
if [ -n "${DLBA_VIP:-}" ]; then
  run ip addr replace "$DLBA_VIP/32" dev lo
fi

if [ "${DLBA_DRY_RUN:-0}" = 1 ]; then
  echo "would exec: dlba node --config $CONFIG --name $NAME"
  exit 0
fi
exec dlba node --config "$CONFIG" --name "$NAME"
