#!/usr/bin/env bash
# Cluster benchmark (issue 5, item 9), side by side in one run:
#  1. container<->container TCP throughput (iperf3) and ICMP round trip (busybox ping)
#     across two namespace hosts on berth's overlay (`--network cluster`, agents with their
#     default --checksum-offload auto), vs the underlay between the same two hosts, vs the
#     same VXLAN overlay built by hand with `ip` (flannel-style static fdb/neigh/route)
#     with the same TX checksum offload setting, and vs that hand-built overlay with
#     berth's ruleset loaded for its rounds (what the rules alone cost); then again with
#     offload off on both;
#  2. convergence: from `berth run -d --network cluster` on host A until a container on
#     host B gets its first ICMP reply from the new container (address learnt from the
#     controller's watch stream), N containers (N=100 default), with the engine's
#     notification to the agent (default), then with the agent's 200 ms polling alone;
#  3. controller scale: its own controller (embedded store) in a namespace of its own
#     (loopback only), 50,000 container records, 1,000 concurrent GET /v1/watch clients,
#     fan-out latency of a series of writes, and the controller's RSS along the way.
# Needs root, busybox(-static), iperf3, iproute2 (ip, bridge), nftables, nsenter, python3
# and a release build (SKIP_BUILD=1 uses the one there).
# Knobs: ROUNDS (iperf3 rounds, default 5) of SECS (3); N (convergence containers, 100);
# RECORDS (50000), WATCHERS (1000), WRITES (fan-out writes, 30); SKIP_DATAPATH=1,
# SKIP_CONVERGE=1, SKIP_SCALE=1, SKIP_OFFLOAD_OFF=1.
#
# Only loopback and addresses inside the namespaces made here are contacted. Everything
# made here has a private tag (namespaces bcb<PID>*) and is removed at exit, also on
# failure: containers (`berth rm -f` inside each host namespace), agents, controllers and
# iperf3 servers (killed by PID), namespaces, mounts under the work directory, the work
# directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
bin=${CARGO_TARGET_DIR:-$top/target}/release
for t in iperf3 nsenter busybox python3 ip bridge nft openssl; do
  command -v "$t" >/dev/null || { echo "cluster.sh: needs $t" >&2; exit 1; }
done
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --workspace --manifest-path "$top/Cargo.toml" >&2

tag=bcb$$
work=$(mktemp -d /tmp/berth-bench-cluster.XXXXXX)
chmod 755 "$work"
hosts=(h1 h2)
allns=(u ctl h1 h2 ha hb ca cb s)
: >"$work/pids"
cleanup() {
  set +e +o pipefail
  for h in "${hosts[@]}"; do
    if [ -d "$work/$h" ] && [ -e "/run/netns/$tag$h" ]; then
      for id in $(nsenter --net=/run/netns/$tag$h -- "$bin/berth" --root "$work/$h/lib" --runroot "$work/$h/run" ps -aq 2>/dev/null); do
        timeout 20 nsenter --net=/run/netns/$tag$h -- "$bin/berth" --root "$work/$h/lib" --runroot "$work/$h/run" rm -f "$id" >/dev/null 2>&1
      done
    fi
  done
  while read -r p; do
    [ -n "$p" ] || continue
    kill "$p" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
  done <"$work/pids"
  for n in "${allns[@]}"; do ip netns del "$tag$n" 2>/dev/null; done
  grep -o " $work[^ ]*" /proc/self/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

load() {
  echo "# load $1: loadavg $(cut -d' ' -f1-3 /proc/loadavg), cpu pressure $(head -1 /proc/pressure/cpu 2>/dev/null | cut -d' ' -f2-3)"
}
echo "# $(nproc) cpus, kernel $(uname -r), $(iperf3 --version | head -1)"
load "at start"

# ---- namespaces --------------------------------------------------------------------
# Underlay: a bridge in namespace u; ctl=.1, h1=.2, h2=.3 (berth), ha=.5, hb=.6 (by hand).
U=10.198.78
ip netns add ${tag}u
ip -n ${tag}u link add br0 type bridge
ip -n ${tag}u link set br0 up
ip -n ${tag}u link set lo up
declare -A uaddr=([ctl]=1 [h1]=2 [h2]=3 [ha]=5 [hb]=6)
i=1
for n in ctl h1 h2 ha hb; do
  ip netns add $tag$n
  ip -n ${tag}u link add p$i type veth peer name eth0 netns $tag$n
  ip -n ${tag}u link set p$i master br0 up
  ip -n $tag$n addr add $U.${uaddr[$n]}/24 dev eth0
  ip -n $tag$n link set eth0 up
  ip -n $tag$n link set lo up
  i=$((i + 1))
done
ip netns add ${tag}s
ip -n ${tag}s link set lo up

# ---- berth: controller, agents, one container per host -----------------------------
"$bin/berth" controller init --dir "$work/ctl" --cidr 10.244.0.0/16 --heartbeat-timeout-ms 3000 >/dev/null
nsenter --net=/run/netns/${tag}ctl -- "$bin/berth-cluster" controller serve --dir "$work/ctl" \
  --listen $U.1:7480 2>"$work/ctl.log" &
echo $! >>"$work/pids"
ctl=https://$U.1:7480
# The CLI's admin certificate and the CA, from the controller's directory (mutual TLS).
export BERTH_CLUSTER_DIR="$work/ctl"

mkdir -p "$work/rootfs"/{bin,etc,tmp,proc,sys,dev}
cp "$(command -v busybox)" "$work/rootfs/bin/"
for a in sh sleep ping ip hostname; do ln -s busybox "$work/rootfs/bin/$a"; done
echo 'root:x:0:0:root:/:/bin/sh' >"$work/rootfs/etc/passwd"
tar -C "$work/rootfs" -cf "$work/busybox.tar" .

# start_agent HOST EXTRA-ARGS...: (re)starts the agent of HOST; its PID in work/agent-HOST.
start_agent() {
  local h=$1; shift
  if [ -f "$work/agent-$h" ]; then
    local old; old=$(cat "$work/agent-$h")
    kill "$old" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
  fi
  mkdir -p "$work/$h"
  nsenter --net=/run/netns/$tag$h -- "$bin/berth-cluster" agent join --controller $ctl \
    --ca-cert "$work/ctl/ca.crt" --token-file "$work/ctl/join.token" --underlay-ip $U.${uaddr[$h]} --name $h \
    --host-file "$work/$h/host.json" --engine-root "$work/$h/lib" --engine-runroot "$work/$h/run" \
    --heartbeat-ms 500 "$@" 2>>"$work/$h.log" &
  echo $! >>"$work/pids"
  echo $! >"$work/agent-$h"
}
for h in "${hosts[@]}"; do start_agent $h; done
for _ in $(seq 100); do
  [ "$(nsenter --net=/run/netns/${tag}ctl -- "$bin/berth" cluster hosts --controller $ctl --format json 2>/dev/null | wc -l)" = 2 ] && break
  sleep 0.1
done
for h in "${hosts[@]}"; do
  for _ in $(seq 100); do [ -f "$work/$h/host.json" ] && break; sleep 0.1; done
  nsenter --net=/run/netns/$tag$h -- env BERTH_CLUSTER_HOST_FILE="$work/$h/host.json" \
    "$bin/berth" --root "$work/$h/lib" --runroot "$work/$h/run" import "$work/busybox.tar" busybox:cluster >/dev/null
  nsenter --net=/run/netns/$tag$h -- env BERTH_CLUSTER_HOST_FILE="$work/$h/host.json" \
    "$bin/berth" --root "$work/$h/lib" --runroot "$work/$h/run" \
    run -d --name web --network cluster --dns 127.0.0.1 busybox:cluster sleep 3600 >/dev/null
done

# ---- the same overlay by hand: ha, hb with a vxlan device each, a bridge, a container ns
# MTU as berth's: the container's eth0 on h1.
pid1=$(nsenter --net=/run/netns/${tag}h1 -- "$bin/berth" --root "$work/h1/lib" --runroot "$work/h1/run" inspect web |
  python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["State"]["Pid"])')
# (ip, not /sys/class/net: sysfs shows the namespace that mounted it, not nsenter's.)
mtu=$(nsenter --net=/proc/$pid1/ns/net ip -o link show eth0 | sed -n 's/.* mtu \([0-9]*\) .*/\1/p')
[ -n "$mtu" ] || { echo "cluster.sh: no mtu for the container's eth0" >&2; exit 1; }
declare -A blk=([ha]=1 [hb]=2) mac=([ha]=02:bb:00:00:00:05 [hb]=02:bb:00:00:00:06) cns=([ha]=ca [hb]=cb)
for h in ha hb; do
  n=$tag$h b=${blk[$h]}
  ip netns exec $n sysctl -qw net.ipv4.ip_forward=1
  ip -n $n link add vx type vxlan id 42 local $U.${uaddr[$h]} dstport 4789 nolearning dev eth0
  ip -n $n link set vx address ${mac[$h]} mtu "$mtu" up
  ip -n $n addr add 10.250.$b.0/32 dev vx
  ip -n $n link add br0 type bridge
  ip -n $n link set br0 mtu "$mtu" up
  ip -n $n addr add 10.250.$b.1/24 dev br0
  c=$tag${cns[$h]}
  ip netns add $c
  ip -n $n link add v0 mtu "$mtu" type veth peer name eth0 mtu "$mtu" netns $c
  ip -n $n link set v0 master br0 up
  ip -n $c addr add 10.250.$b.2/24 dev eth0
  ip -n $c link set lo up
  ip -n $c link set eth0 up
  ip -n $c route add default via 10.250.$b.1
done
for pair in "ha hb" "hb ha"; do
  read -r me peer <<<"$pair"
  ip netns exec $tag$me bridge fdb append ${mac[$peer]} dev vx dst $U.${uaddr[$peer]}
  ip -n $tag$me neigh add 10.250.${blk[$peer]}.0 lladdr ${mac[$peer]} dev vx nud permanent
  ip -n $tag$me route add 10.250.${blk[$peer]}.0/24 via 10.250.${blk[$peer]}.0 dev vx onlink
done

py() {
  python3 "$here/cluster.py" --bin "$bin" --work "$work" --tag "$tag" --ctl "$ctl" --mtu "$mtu" "$@"
}
offl=$(sed -n 's/^berth agent: tx checksum offload //p' "$work/h1.log" | head -1)
echo "# agents: tx checksum offload $offl"
if [ "${SKIP_DATAPATH:-0}" != 1 ]; then
  # The agents' default (--checksum-offload auto); the hand-built devices are set to what
  # the agents chose (cluster.py reads berth.vx), so both sides compare like for like.
  py datapath --label "agents' default, tx checksum offload $offl; hand-built set the same" \
    --rounds "${ROUNDS:-5}" --secs "${SECS:-3}"
fi
if [ "${SKIP_CONVERGE:-0}" != 1 ]; then
  # The agents' default: reports on the engine's notification, and every 200 ms.
  py converge --label "notified" --n "${N:-100}"
  # The same without notifications (the host files lose their socket, so the engine has
  # nobody to tell): what the agent's polling alone gives, for comparison.
  for h in "${hosts[@]}"; do
    python3 -c 'import json,sys; p=sys.argv[1]; h=json.load(open(p)); h.pop("notify",None); json.dump(h,open(p,"w"))' "$work/$h/host.json"
  done
  py converge --label "polling only" --n "${N:-100}"
fi
if [ "${SKIP_DATAPATH:-0}" != 1 ] && [ "${SKIP_OFFLOAD_OFF:-0}" != 1 ]; then
  # Offload off on both sides (what auto picks on kernels before 5.7, and --checksum-offload off).
  for h in "${hosts[@]}"; do start_agent $h --checksum-offload off; done
  sleep 2
  py datapath --offload-off --label "checksum offload off (--checksum-offload off; hand-built switched off too)" \
    --rounds "${ROUNDS:-5}" --secs "${SECS:-3}"
fi

# ---- controller scale, in namespace s (loopback only) --------------------------------
if [ "${SKIP_SCALE:-0}" != 1 ]; then
  w=${WATCHERS:-1000}
  ulimit -n $(( w + 2048 > $(ulimit -Hn) ? $(ulimit -Hn) : w + 2048 ))
  "$bin/berth" controller init --dir "$work/sctl" --cidr 10.0.0.0/8 --block-prefix 16 \
    --heartbeat-timeout-ms 86400000 >/dev/null
  nsenter --net=/run/netns/${tag}s -- "$bin/berth-cluster" controller serve --dir "$work/sctl" \
    --listen 127.0.0.1:7480 2>"$work/sctl.log" &
  spid=$!
  echo $spid >>"$work/pids"
  nsenter --net=/run/netns/${tag}s -- python3 "$here/cluster.py" --bin "$bin" --work "$work" --tag "$tag" \
    --ctl https://127.0.0.1:7480 scale --pid $spid --records "${RECORDS:-50000}" --watchers "$w" \
    --writes "${WRITES:-30}"
fi
load "at end"
