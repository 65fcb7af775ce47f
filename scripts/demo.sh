#!/usr/bin/env bash
# berth's main job on a fresh machine: build, import a busybox image, and run containers
# with `berth run` — each in its own user, pid, mount, network, uts, ipc and cgroup
# namespaces, container root mapped to an unprivileged host range — then clean up.
# Needs root and busybox-static. Uses a private --root/--runroot, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
bin=$PWD/target/release
work=$(mktemp -d /tmp/berth-demo.XXXXXX)
chmod 755 "$work"
# The demo's own default bridge, subnet and nftables table, so it never disturbs a berth0
# already on this host; all three are removed at the end.
export BERTH_BRIDGE=bdemo0 BERTH_BRIDGE_SUBNET=10.87.0.0/24 BERTH_NFT_TABLE=berth_demo
berth() { "$bin/berth" --root "$work/lib" --runroot "$work/run" "$@"; }
cleanup() {
  # Best effort and complete: a step that finds nothing must not stop the rest.
  set +e +o pipefail
  for id in $(berth ps -aq 2>/dev/null); do berth rm -f "$id" >/dev/null 2>&1 || true; done
  berth network rm demo-net >/dev/null 2>&1 || true
  ip link del bdemo0 2>/dev/null || true
  nft delete table inet berth_demo 2>/dev/null || true
  grep -o " $work[^ ]*" /proc/self/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# An image from Debian's busybox-static: a rootfs tarball, imported.
rootfs=$work/rootfs
mkdir -p "$rootfs"/{bin,etc,tmp,root,proc,sys,dev}
cp /bin/busybox "$rootfs/bin/busybox"
for applet in $("$rootfs/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' > "$rootfs/etc/group"
tar -C "$rootfs" -cf "$work/busybox.tar" .
echo "== berth import busybox.tar busybox:demo"
berth import "$work/busybox.tar" busybox:demo
berth images

echo "== berth run --rm busybox:demo (a container that looks at itself)"
berth run --rm --hostname demo --memory 128m --pids-limit 64 busybox:demo sh -c '
echo "hello from $(hostname): pid $$, uid $(id -u)"
echo "uid_map (container host size): $(cat /proc/self/uid_map)"
echo "memory limit: $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)"
grep -E "CapEff|NoNewPrivs|Seccomp:" /proc/self/status'

echo "== a detached container: logs, exec, stop, rm"
berth run -d --name web busybox:demo sh -c 'echo serving; trap "echo bye; exit 0" TERM; while true; do sleep 1; done' >/dev/null
berth ps
berth exec web sh -c 'echo "exec sees: $(cat /proc/1/cmdline | tr "\0" " ")"'
berth stop -t 5 web >/dev/null
berth logs --timestamps web
berth ps -a
berth rm web >/dev/null

echo "== networking: a user network, a published port, names"
berth network create --subnet 10.86.0.0/24 demo-net >/dev/null
berth network ls
mkdir -p "$work/www" && echo "hello from a container's web server" > "$work/www/index.html"
chmod -R a+rX "$work/www"
berth run -d --name site --network demo-net --dns 127.0.0.1 -p 127.0.0.1:18080:80 \
  -v "$work/www:/www:ro" busybox:demo httpd -f -p 80 -h /www >/dev/null
berth port site
for _ in $(seq 50); do
  berth exec site sh -c 'netstat -ltn | grep -q ":80 "' && break
  sleep 0.1
done
echo "from the host, through the port mapping (127.0.0.1:18080 -> site:80):"
"$rootfs/bin/busybox" wget -qO- http://127.0.0.1:18080/
echo "from another container on demo-net, by name:"
berth run --rm --network demo-net --dns 127.0.0.1 busybox:demo sh -c 'ip -4 -o addr show eth0 | sed "s/^/  /"; wget -qO- http://site/'
berth rm -f site >/dev/null
berth network rm demo-net >/dev/null

echo "== refused: a sensitive host path"
berth run --rm -v /etc:/host-etc busybox:demo true || echo "(exit $?, as expected)"

echo "== the cluster: a controller and three hosts (network namespaces), containers talking by cluster address"
bash scripts/cluster-demo.sh
