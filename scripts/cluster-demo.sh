#!/usr/bin/env bash
# The cluster part of the main job: a controller and three hosts, each a network
# namespace on an underlay bridge of its own; an agent per host; a container on each host
# on the cluster network; the containers ping each other by cluster address across the
# VXLAN overlay; then everything is torn down. Only addresses inside these namespaces are
# contacted. Needs root, busybox-static, iproute2, nftables and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/target/release
[ -x "$bin/berth-cluster" ] || cargo build --release --workspace
work=$(mktemp -d /tmp/berth-cluster-demo.XXXXXX)
chmod 755 "$work"
tag=bcd$$
pids=()
cleanup() {
  set +e +o pipefail
  for h in h1 h2 h3; do
    if [ -d "$work/$h" ]; then
      for id in $(nsenter --net=/run/netns/$tag$h -- "$bin/berth" --root "$work/$h/lib" --runroot "$work/$h/run" ps -aq 2>/dev/null); do
        nsenter --net=/run/netns/$tag$h -- "$bin/berth" --root "$work/$h/lib" --runroot "$work/$h/run" rm -f "$id" >/dev/null 2>&1
      done
    fi
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  for n in h1 h2 h3 ctl u; do ip netns del "$tag$n" 2>/dev/null; done
  grep -o " $work[^ ]*" /proc/self/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT

# Underlay: a bridge in its own namespace; ctl=.1, h1..h3=.2-.4 on 10.198.77.0/24.
ip netns add ${tag}u
ip -n ${tag}u link add br0 type bridge
ip -n ${tag}u link set br0 up
i=1
for n in ctl h1 h2 h3; do
  ip netns add $tag$n
  ip -n ${tag}u link add p$i type veth peer name eth0 netns $tag$n
  ip -n ${tag}u link set p$i master br0 up
  ip -n $tag$n addr add 10.198.77.$i/24 dev eth0
  ip -n $tag$n link set eth0 up
  ip -n $tag$n link set lo up
  i=$((i + 1))
done
in_ns() { local ns=$1; shift; nsenter --net=/run/netns/$tag$ns -- "$@"; }

echo "== berth controller init + serve (in namespace ctl, https://10.198.77.1:7480, mutual TLS)"
"$bin/berth" controller init --dir "$work/ctl" --cidr 10.244.0.0/16 --heartbeat-timeout-ms 3000
# nsenter directly (not through a shell function), so $! is the process itself.
nsenter --net=/run/netns/${tag}ctl -- "$bin/berth-cluster" controller serve --dir "$work/ctl" \
  --listen 10.198.77.1:7480 2>"$work/ctl.log" &
pids+=($!)

# A busybox image for the hosts' engines.
mkdir -p "$work/rootfs"/{bin,etc,tmp,proc,sys,dev}
cp /bin/busybox "$work/rootfs/bin/"
for a in sh sleep ping ip hostname; do ln -s busybox "$work/rootfs/bin/$a"; done
echo 'root:x:0:0:root:/:/bin/sh' > "$work/rootfs/etc/passwd"
tar -C "$work/rootfs" -cf "$work/busybox.tar" .

echo "== berth agent join on h1, h2, h3"
i=2
for h in h1 h2 h3; do
  mkdir -p "$work/$h"
  nsenter --net=/run/netns/$tag$h -- "$bin/berth-cluster" agent join --controller https://10.198.77.1:7480 \
    --ca-cert "$work/ctl/ca.crt" --token-file "$work/ctl/join.token" --underlay-ip 10.198.77.$i --name $h \
    --host-file "$work/$h/host.json" --engine-root "$work/$h/lib" --engine-runroot "$work/$h/run" \
    --heartbeat-ms 500 2>"$work/$h.log" &
  pids+=($!)
  i=$((i + 1))
done
# The CLI uses the admin certificate that `controller init` wrote into the directory.
export BERTH_CLUSTER_DIR="$work/ctl"
ctl=https://10.198.77.1:7480
for _ in $(seq 100); do
  [ "$(in_ns ctl "$bin/berth" cluster hosts --controller $ctl --format json 2>/dev/null | wc -l)" = 3 ] && break
  sleep 0.1
done
in_ns ctl "$bin/berth" cluster hosts --controller $ctl

echo "== a container on each host: berth run -d --network cluster"
for h in h1 h2 h3; do
  for _ in $(seq 100); do [ -f "$work/$h/host.json" ] && break; sleep 0.1; done
  b() { in_ns $h env BERTH_CLUSTER_HOST_FILE="$work/$h/host.json" "$bin/berth" --root "$work/$h/lib" --runroot "$work/$h/run" "$@"; }
  b import "$work/busybox.tar" busybox:cluster >/dev/null
  b run -d --name web-$h --network cluster --dns 127.0.0.1 busybox:cluster sleep 300 >/dev/null
done
for _ in $(seq 100); do
  [ "$(in_ns ctl "$bin/berth" cluster containers --controller $ctl --format json 2>/dev/null | wc -l)" = 3 ] && break
  sleep 0.1
done
in_ns ctl "$bin/berth" cluster containers --controller $ctl

echo "== containers talk across hosts by cluster address (VXLAN between the hosts)"
addrs=$(in_ns ctl "$bin/berth" cluster containers --controller $ctl --format json | sed -n 's/.*"addr":"\([0-9.]*\)".*"host":"\([a-z0-9]*\)".*/\2 \1/p; s/.*"host":"\([a-z0-9]*\)".*"addr":"\([0-9.]*\)".*/\1 \2/p' | sort -u)
for h in h1 h2 h3; do
  for target in $(echo "$addrs" | awk -v me=$h '$1 != me {print $2}'); do
    out=$(in_ns $h "$bin/berth" --root "$work/$h/lib" --runroot "$work/$h/run" exec web-$h ping -c1 -W2 "$target" | grep -o 'seq=0 ttl=[0-9]* time=[0-9.]* ms' || true)
    echo "web-$h -> $target: ${out:-no reply}"
  done
done
# Each agent reports what it applied with its next heartbeat (every second): wait (5 s at
# most) until every host has applied the map's latest change.
for _ in $(seq 50); do
  in_ns ctl "$bin/berth" cluster status --controller $ctl --format json 2>/dev/null |
    python3 -c 'import json,sys; h=json.load(sys.stdin)["hosts"]; sys.exit(not h or any(x["behind"] for x in h))' && break
  sleep 0.1
done
in_ns ctl "$bin/berth" cluster status --controller $ctl
echo "== tearing down (containers, agents, controller, namespaces)"
