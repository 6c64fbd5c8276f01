#!/usr/bin/env bash
# Run docker-compose.yml for real and check it from its client container (`make test-compose`).
#
# Installs Debian's docker.io, docker-compose and debootstrap when missing, starts dockerd when
# none runs (and stops only that one, by PID), builds the base image offline
# (docker/base-image.sh, cached), builds the compose file's images FROM it, runs the cluster and
# checks: HTTP and HTTPS through the VIP; a logged-in session sticking; the scheduler's node
# process killed inside its container and the VIP serving again within 3 s from a new
# scheduler; the crashed container restarted by its restart policy and back as a server; a
# config pushed over redis reaching every node; `down -v` leaving nothing of the project.
#
# The host is left as it was found: the dockerd started here runs with --iptables=false
# --ip-forward=false --bridge=none (no FORWARD policy change, no br_netfilter, no ip_forward,
# no docker0; the compose networks are internal bridges and images build with the host's
# network), and on exit ip_forward, the FORWARD policies and bridge-nf-call-* are put back if
# anything changed them anyway. Needs root.
#
# Environment: DLBA_COMPOSE_PROJECT (default dlbacompose), DLBA_COMPOSE_KEEP=1 leaves the
# cluster and dockerd running (debugging only: the host is then not restored).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PROJECT="${DLBA_COMPOSE_PROJECT:-dlbacompose}"
WORK="/var/tmp/dlba-compose"
FAILOVER_LIMIT_MS=3000
T0=$SECONDS
mkdir -p "$WORK"

log() { echo "test-compose: $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (apt-get, dockerd, debootstrap)"

# --- packages ------------------------------------------------------------------------------
install_missing() {
  local missing=() p
  for p in "$@"; do  # not `dpkg -s`: it succeeds for a removed package's config files
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] \
      || missing+=("$p")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  log "apt: installing ${missing[*]}"
  # A package's maintainer script must not start a dockerd with its defaults (iptables on).
  local policy_made=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    policy_made=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log" >&2; exit 1; }
  [ "$policy_made" = 0 ] || rm -f /usr/sbin/policy-rc.d
}
pkgs=(debootstrap)
command -v dockerd >/dev/null || pkgs+=(docker.io)
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
  pkgs+=(docker-compose)
fi
install_missing "${pkgs[@]}"
# Debian's client matches Debian's engine (another `docker` earlier on PATH may be newer).
DOCKER=docker
[ -x /usr/bin/docker ] && DOCKER=/usr/bin/docker
export DOCKER
if "$DOCKER" compose version >/dev/null 2>&1; then
  COMPOSE=("$DOCKER" compose)
else
  COMPOSE=(docker-compose)
fi
COMPOSE+=(-p "$PROJECT" -f "$ROOT/docker-compose.yml")
# The classic builder (what Docker 20.10 and Compose v1 use): `build.network: host` needs no
# BuildKit entitlement there.
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0

# --- the host's state, put back on exit ------------------------------------------------------
SYSCTLS=(/proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv6/conf/all/forwarding
         /proc/sys/net/bridge/bridge-nf-call-iptables /proc/sys/net/bridge/bridge-nf-call-ip6tables
         /proc/sys/net/bridge/bridge-nf-call-arptables)
declare -A SAVED=()
for f in "${SYSCTLS[@]}"; do [ -r "$f" ] && SAVED[$f]="$(cat "$f")"; done
forward_policy() { "$1" -S FORWARD 2>/dev/null | awk '$1=="-P" { print $3; exit }'; }
POLICY4=""; POLICY6=""
command -v iptables >/dev/null && POLICY4="$(forward_policy iptables)"
command -v ip6tables >/dev/null && POLICY6="$(forward_policy ip6tables)"

restore_host() {
  local f now
  for f in "${SYSCTLS[@]}"; do
    [ -r "$f" ] || continue
    now="$(cat "$f")"
    if [ -z "${SAVED[$f]+x}" ]; then
      # br_netfilter was loaded while this ran: stop it filtering bridged frames
      [ "$now" = 0 ] || { echo 0 >"$f" && log "restored $f: 0 (was absent)"; }
    elif [ "$now" != "${SAVED[$f]}" ]; then
      echo "${SAVED[$f]}" >"$f" && log "restored $f: ${SAVED[$f]} (was $now)"
    fi
  done
  restore_policy iptables "$POLICY4"
  restore_policy ip6tables "$POLICY6"
}
restore_policy() {
  local now
  command -v "$1" >/dev/null || return 0
  now="$(forward_policy "$1")"
  [ -n "$now" ] && [ "$now" != "${2:-ACCEPT}" ] || return 0
  "$1" -P FORWARD "${2:-ACCEPT}" && log "restored $1 FORWARD policy: ${2:-ACCEPT} (was $now)"
}

# Mounts an engine leaves behind when it stops (its netns handle, a container's overlay whose
# shim died first): the ones that were not there before are unmounted after our dockerd stops.
engine_mounts() { awk '$2 ~ "^(/run/docker|/var/run/docker|/var/lib/docker|/run/containerd)/" \
  { print $2 }' /proc/self/mounts | sort -u; }
MOUNTS_BEFORE="$(engine_mounts)"

DOCKERD_PID=""
UP=0
cleanup() {
  local rc=$?
  set +e
  if [ "${DLBA_COMPOSE_KEEP:-0}" = 1 ]; then
    log "DLBA_COMPOSE_KEEP=1: cluster and dockerd left running, host not restored"
    exit "$rc"
  fi
  if [ "$UP" = 1 ]; then
    [ "$rc" = 0 ] || { "${COMPOSE[@]}" ps; "${COMPOSE[@]}" logs --tail 30; } >"$WORK/failed.log" 2>&1
    [ "$rc" = 0 ] || log "container logs: $WORK/failed.log"
    "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1
  fi
  if [ -n "$DOCKERD_PID" ]; then
    kill -TERM "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$DOCKERD_PID" 2>/dev/null && { log "dockerd $DOCKERD_PID hangs: SIGKILL"; \
      kill -KILL "$DOCKERD_PID"; }
    comm -13 <(echo "$MOUNTS_BEFORE") <(engine_mounts) | sort -r | while read -r m; do
      umount -l "$m" && log "unmounted $m (left by the engine)"
    done
  fi
  restore_host
  log "total $((SECONDS - T0)) s, $([ "$rc" = 0 ] && echo passed || echo "FAILED (exit $rc)")"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- dockerd ------------------------------------------------------------------------------------
if ! "$DOCKER" info >/dev/null 2>&1; then
  flags=(--iptables=false --ip-forward=false --ip-masq=false --bridge=none)
  dockerd --help 2>&1 | grep -q -- '--ip6tables' && flags+=(--ip6tables=false)
  log "starting dockerd ${flags[*]}"
  dockerd "${flags[@]}" >"$WORK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 120); do
    "$DOCKER" info >/dev/null 2>&1 && break
    kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -20 "$WORK/dockerd.log" >&2; fail "dockerd exited"; }
    sleep 0.5
  done
  "$DOCKER" info >/dev/null 2>&1 || fail "dockerd did not answer in 60 s ($WORK/dockerd.log)"
fi

# --- images ---------------------------------------------------------------------------------------
t=$SECONDS
DLBA_BASE_IMAGE="$("$ROOT/docker/base-image.sh")"
export DLBA_BASE_IMAGE
log "base image $DLBA_BASE_IMAGE ($((SECONDS - t)) s)"
t=$SECONDS
"${COMPOSE[@]}" build >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; fail "build"; }
log "images built ($((SECONDS - t)) s): $("$DOCKER" image ls --format '{{.Repository}} {{.Size}}' \
  | grep -E '^dlba' | tr '\n' ' ')"

# --- the cluster ----------------------------------------------------------------------------------
cid() { "${COMPOSE[@]}" ps -q "$1"; }
probe() { "$DOCKER" exec "$(cid client)" python3 /opt/dlba/docker/probe.py "$@"; }
# `jq`-free field access: probe.py prints JSON, python3 on the host reads it
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {'d': d}))" "$1"; }
scheduler_of() { probe status | field "sorted({v['scheduler'] for v in d.values()} - {None})"; }

t=$SECONDS
UP=1
"${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true  # what a killed run left
"${COMPOSE[@]}" up -d >"$WORK/up.log" 2>&1 || { tail -30 "$WORK/up.log" >&2; fail "up"; }
deadline=$((SECONDS + 90))
until probe serve >/dev/null 2>&1 || [ "$SECONDS" -ge "$deadline" ]; do sleep 1; done
out="$(probe serve)" || fail "the VIP does not serve HTTP and HTTPS"
log "up in $((SECONDS - t)) s; HTTP and HTTPS through the VIP: $out"
# what the nodes run on: the compiled request path, the data plane the scheduler got
"${COMPOSE[@]}" logs --no-color n1 n2 n3 2>/dev/null \
  | grep -o -E 'event=(node_started|scheduler_started|dataplane_not_prepared) .*' | sort -u \
  | while read -r line; do log "  $line"; done

out="$(probe sticky)" || fail "sessions do not stick"
log "logged-in sessions stick: $out"
out="$(probe arp)" || fail "ARP for the VIP"
log "one MAC answers ARP for the VIP: $out"

# --- the scheduler's process killed inside its container ------------------------------------
sched=""
for _ in $(seq 30); do
  st="$(probe status)"
  sched="$(echo "$st" | field "sorted({v['scheduler'] for v in d.values()})")"
  [ "$sched" = "['n1']" ] || [ "$sched" = "['n2']" ] || [ "$sched" = "['n3']" ] && break
  sleep 1
done
case "$sched" in "['n"?"']") sched="${sched:2:2}" ;; *) fail "nodes disagree on the scheduler: $st" ;; esac
probe serve >/dev/null
old_mac="$(probe vip-mac | field "d['mac']")"
[ -n "$old_mac" ] || fail "the client has no ARP entry for the VIP"
victim="$(cid "$sched")"
restarts="$("$DOCKER" inspect -f '{{.RestartCount}}' "$victim")"
# init: true makes PID 1 docker-init; the node process is its child
pid="$("$DOCKER" exec "$victim" pgrep -P 1 -f 'bin/dlba node ')" || true
[ -n "$pid" ] || fail "no dlba node process in $sched"
probe failover "$old_mac" >"$WORK/failover.json" &  # polling before the kill
probe_pid=$!
sleep 1
# the time of the kill, taken in the container right before it (containers share the clock)
killed_ns="$("$DOCKER" exec "$victim" sh -c "date +%s%N; kill -9 $pid" | head -1)" || true
case "$killed_ns" in ""|*[!0-9]*) fail "kill -9 $pid in $sched: '$killed_ns'" ;; esac
wait "$probe_pid" || fail "no failover"
out="$(cat "$WORK/failover.json")"
gap="$(echo "$out" | field "(d['served_ns'] - $killed_ns) // 1000000")"
new="$(scheduler_of)"
log "kill -9 of $sched's node process (pid $pid): VIP served again after $gap ms by $new ($out)"
[ "$gap" -le "$FAILOVER_LIMIT_MS" ] || fail "failover took $gap ms (limit $FAILOVER_LIMIT_MS)"
case "$new" in *"'$sched'"*|"[]") fail "no new scheduler: $new" ;; esac

# --- the crashed container restarted by its policy, back as a server ------------------------
for _ in $(seq 60); do
  now="$("$DOCKER" inspect -f '{{.RestartCount}} {{.State.Running}}' "$victim")"
  role="$(probe status | field "d['$sched']['role']")"
  [ "$now" = "$((restarts + 1)) true" ] && [ "$role" = server ] && break
  sleep 1
done
[ "$now" = "$((restarts + 1)) true" ] || fail "$sched not restarted by its policy: $now"
[ "$role" = server ] || fail "$sched is back as '$role', not as a server"
sleep 5  # it must not take the role back
st="$(probe status)"
[ "$(echo "$st" | field "d['$sched']['role']")" = server ] || fail "$sched took the role back: $st"
[ "$(echo "$st" | field "sorted({v['scheduler'] for v in d.values()})")" = "$new" ] \
  || fail "the scheduler changed after $sched came back: $st"
probe serve >/dev/null || fail "the VIP does not serve after $sched came back"
answer="$(probe arp | field "d['mac']")" || fail "ARP for the VIP after $sched came back"
[ "$answer" = "$(echo "$out" | field "d['mac']")" ] \
  || fail "ARP for the VIP answered by $answer, not by the new scheduler"
log "$sched restarted by its policy (restart count $((restarts + 1))), a server under $new"

# --- a config pushed over redis reaches every node ----------------------------------------------
before="$(probe status | field "max(v['config_version'] for v in d.values())")"
pusher="$(cid n1)"
"$DOCKER" exec "$pusher" sh -c 'sed "s/^policy = .*/policy = \"weighted_rr\"/" \
  /etc/dlba/cluster.toml >/tmp/pushed.toml && dlba config push /tmp/pushed.toml' \
  >"$WORK/push.log" 2>&1 || { cat "$WORK/push.log" >&2; fail "dlba config push"; }
for _ in $(seq 20); do
  versions="$(probe status | field "sorted({v['config_version'] for v in d.values()})")"
  [ "$versions" = "[$((before + 1))]" ] && break
  sleep 0.5
done
[ "$versions" = "[$((before + 1))]" ] || fail "config_version on the nodes: $versions, want $((before + 1))"
bus="$("$DOCKER" exec "$(cid redis)" redis-cli get dlba:config:version)"
[ "$bus" = "$((before + 1))" ] || fail "redis holds config version '$bus', not $((before + 1))"
log "config pushed over redis: config_version $((before + 1)) on every node"

# --- down -v leaves nothing ----------------------------------------------------------------------
"${COMPOSE[@]}" down -v --remove-orphans >"$WORK/down.log" 2>&1 || fail "down -v"
UP=0
left=""
for kind in container network volume; do
  all=(); [ "$kind" = container ] && all=(-a)
  ids="$("$DOCKER" "$kind" ls -q "${all[@]}" --filter "label=com.docker.compose.project=$PROJECT")"
  [ -z "$ids" ] || left="$left $kind:$(echo $ids)"
done
[ -z "$left" ] || fail "down -v left:$left"
log "down -v left no container, network or volume of project $PROJECT"
log "all checks passed in $((SECONDS - T0)) s"
