#!/usr/bin/env bash
# Network benchmark (issue 4, item 8), side by side in one run:
#  1. `berth run --rm busybox true` on the default bridge network vs `podman run --rm` on
#     podman's default network (netavark bridge, runc), alternating; berth --network none
#     for reference;
#  2. container<->container TCP throughput (iperf3) and round trip (ping) on berth's bridge
#     vs the same path built by hand with `ip` (bridge + veth pairs + netns, same MTU);
#  3. throughput through a published port (from a client namespace and from 127.0.0.1) vs
#     the same DNAT written by hand, and vs the container's address reached directly.
# iperf3 and ping run from the host's binaries inside the containers' network namespaces
# (nsenter --net), so both sides of each comparison run the same programs the same way.
# Needs root, busybox(-static), podman, runc, iperf3, nft, iptables, nsenter, python3.
# RUNS=N rounds of run --rm (default 20); ROUNDS=N rounds of iperf3 (default 7) of SECS
# seconds each (default 3); SKIP_BUILD=1 uses the berth already built; DRIVER=vfs|overlay
# for podman (default vfs, as bench/engine.sh).
#
# Only loopback and addresses inside namespaces made here are contacted. Everything has a
# private name, checked to be unused at the start and removed at the end: berth's bridge,
# subnet and nftables table (BERTH_BRIDGE/BERTH_BRIDGE_SUBNET/BERTH_NFT_TABLE), podman's
# network (its own network_config_dir, bridge pbench0, 10.232.0.0/24; podman's real
# podman0/10.88.0.0/16 is not used), the hand-built bridge, namespaces and nft table, and
# netavark's iptables chains if there were none before.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
target=${CARGO_TARGET_DIR:-$top/target}
for t in podman runc iperf3 nft iptables iptables-save nsenter busybox python3 ip; do
  command -v "$t" >/dev/null || { echo "net.sh: needs $t" >&2; exit 1; }
done
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --workspace --manifest-path "$top/Cargo.toml" >&2

export BERTH_BRIDGE=bbench0 BERTH_BRIDGE_SUBNET=10.231.0.0/24 BERTH_NFT_TABLE=berth_bench
unset BERTH_DEFAULT_NETWORK
links=(bbench0 pbench0 bbhand0 bbh-s bbh-c bbcl-h)
netns=(bbench-hs bbench-hc bbench-cl)
tables=("inet berth_bench" "inet bbench_hand")
for l in "${links[@]}"; do
  ! ip link show "$l" >/dev/null 2>&1 || { echo "net.sh: interface $l exists (another run?)" >&2; exit 1; }
done
for n in "${netns[@]}"; do
  ! [ -e "/run/netns/$n" ] || { echo "net.sh: namespace $n exists (another run?)" >&2; exit 1; }
done
for t in "${tables[@]}"; do
  ! nft list table $t >/dev/null 2>&1 || { echo "net.sh: nft table $t exists (another run?)" >&2; exit 1; }
done
# netavark (1.4, iptables driver) leaves NETAVARK* chains and their jumps in the
# iptables-nft tables ip filter / ip nat (which it creates if absent). Remove them at the
# end only if none existed before (else they may belong to another podman user).
netavark_before=$(iptables-save 2>/dev/null | grep -c NETAVARK || true)
ipt_tables_before=$(nft list tables 2>/dev/null | grep -E '^table ip (nat|filter)$' || true)

work=$(mktemp -d /tmp/berth-bench-net.XXXXXX)
chmod 755 "$work"
cat >"$work/containers.conf" <<EOF
[network]
default_network = "pbench"
network_config_dir = "$work/podman-net"
EOF
export CONTAINERS_CONF="$work/containers.conf"
berth=("$target/release/berth" --root "$work/berth" --runroot "$work/berth-run")
podman=(podman --root "$work/podman" --runroot "$work/podman-run" --storage-driver "${DRIVER:-vfs}"
  --cgroup-manager cgroupfs --events-backend file)

cleanup() {
  # Best effort and complete: a failing step must not skip the rest.
  set +e +o pipefail
  if [ -f "$work/pids" ]; then
    while read -r pid; do kill "$pid" 2>/dev/null; done <"$work/pids"
  fi
  "${berth[@]}" ps -aq 2>/dev/null | while read -r id; do "${berth[@]}" rm -f "$id" >/dev/null 2>&1; done
  "${podman[@]}" rm -af -t 0 >/dev/null 2>&1
  "${podman[@]}" network rm -f pbench >/dev/null 2>&1
  for l in "${links[@]}"; do ip link del "$l" 2>/dev/null; done
  for n in "${netns[@]}"; do ip netns del "$n" 2>/dev/null; done
  for t in "${tables[@]}"; do nft delete table $t 2>/dev/null; done
  if [ "$netavark_before" = 0 ]; then
    for t in nat filter; do
      iptables-save -t $t 2>/dev/null | grep -E '^-A [A-Za-z_-]+ .*-j NETAVARK' | sed 's/^-A/-D/' |
        while read -r r; do eval iptables -t $t "$r"; done
      chains=$(iptables-save -t $t 2>/dev/null | sed -n 's/^:\(NETAVARK[^ ]*\) .*/\1/p')
      for c in $chains; do iptables -t $t -F "$c"; done
      for c in $chains; do iptables -t $t -X "$c"; done
      # The table itself, if netavark made it and no rule of anyone is left in it.
      if ! grep -qx "table ip $t" <<<"$ipt_tables_before" && nft list table ip $t >/dev/null 2>&1 &&
        [ "$(nft list table ip $t | grep -cvE '^\s*(table|chain|type|\}|$)')" = 0 ]; then
        nft delete table ip $t
      fi
    done
  fi
  grep -o " $work[^ ]*" /proc/self/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT

# Two host ports that were free a moment ago (below the ephemeral range).
ports=$(python3 -c '
import socket
got = []
for p in range(25201, 25301):
    s = socket.socket()
    try:
        s.bind(("0.0.0.0", p)); got.append(p)
    except OSError:
        pass
    finally:
        s.close()
    if len(got) == 2:
        break
print(*got)')
read -r port hand_port <<<"$ports"

python3 "$here/net.py" --berth "$target/release/berth" --work "$work" --driver "${DRIVER:-vfs}" \
  --runs "${RUNS:-20}" --rounds "${ROUNDS:-7}" --secs "${SECS:-3}" --port "$port" --hand-port "$hand_port" \
  ${NET_ARGS:-}
