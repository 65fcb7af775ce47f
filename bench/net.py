"""berth networking benchmark (issue 4, item 8), driven by bench/net.sh.

1. `berth run --rm IMAGE true` on the default bridge network vs `podman run --rm` on
   podman's default network (netavark bridge), alternating; berth --network none too.
2. container<->container TCP throughput (iperf3) and ICMP round trip (busybox ping) on
   berth's bridge vs the same path built by hand with `ip` (bridge, veth pairs, netns).
3. TCP throughput through a published port, from a client namespace (DNAT in prerouting)
   and from the host's 127.0.0.1 (DNAT in output + masquerade), vs the same DNAT built by
   hand in a table of our own, and vs the container's address reached directly.

Only loopback and addresses inside namespaces made here are contacted. Every resource has
a fixed name (listed in net.sh, which checks them unused at the start and removes them at exit); processes started
here are listed in WORK/pids and killed by PID.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine import ULIMITS, make_image_tar  # noqa: E402
import iperf  # noqa: E402
from iperf import IPERF_PORT  # noqa: E402

IMAGE = "localhost/busybox:bench"
# Podman's network: a copy of its default network's configuration (bridge driver,
# host-local IPAM, no DNS), but on a bridge name and subnet of this benchmark's own, so
# that podman0/10.88.0.0/16 on the host are never touched.
PODMAN_NET, PODMAN_IF, PODMAN_SUBNET = "pbench", "pbench0", "10.232.0.0/24"
# The hand-built path: bridge, two namespaces (server, client) with veth pairs.
HAND_BR, HAND_PREFIX = "bbhand0", "10.233.0"
HAND_NS = {"srv": ("bbench-hs", "bbh-s", f"{HAND_PREFIX}.2"), "cli": ("bbench-hc", "bbh-c", f"{HAND_PREFIX}.3")}
HAND_TABLE = "bbench_hand"
# A client namespace standing for another host, linked to this one by a veth /30.
CL_NS, CL_IF, CL_HOST, CL_INNER = "bbench-cl", "bbcl-h", "10.234.0.1", "10.234.0.2"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, shell=isinstance(cmd, str), **kw)


def out(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def timed(cmd):
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=60)
    return time.perf_counter() - t0


def med_ms(v):
    return statistics.median(v) * 1000


def p90(v):
    return sorted(v)[int(0.9 * (len(v) - 1))]


class Bench:
    def __init__(self, a):
        self.a = a
        self.work = a.work
        self.berth = [a.berth, "--root", os.path.join(a.work, "berth"), "--runroot", os.path.join(a.work, "berth-run")]
        self.podman = ["podman", "--root", os.path.join(a.work, "podman"), "--runroot",
                       os.path.join(a.work, "podman-run"), "--storage-driver", a.driver,
                       "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                       "--runtime", shutil.which("runc")]
        self.pidfile = os.path.join(a.work, "pids")

    # ---- podman's network -------------------------------------------------------------
    def podman_network(self):
        """Writes pbench.json into the private network_config_dir (named in the
        containers.conf that net.sh points CONTAINERS_CONF at, which also makes it the
        default network): podman 4.3's `network create` cannot name the bridge."""
        d = os.path.join(self.work, "podman-net")
        os.makedirs(d, exist_ok=True)
        gw = PODMAN_SUBNET.replace(".0/24", ".1")
        cfg = {
            "name": PODMAN_NET,
            "id": hashlib.sha256(PODMAN_NET.encode()).hexdigest(),
            "driver": "bridge",
            "network_interface": PODMAN_IF,
            "created": "2026-11-29T00:00:00Z",
            "subnets": [{"subnet": PODMAN_SUBNET, "gateway": gw}],
            "ipv6_enabled": False,
            "internal": False,
            "dns_enabled": False,
            "ipam_options": {"driver": "host-local"},
        }
        with open(os.path.join(d, PODMAN_NET + ".json"), "w") as f:
            json.dump(cfg, f, indent=1)

    # ---- 1. run --rm ------------------------------------------------------------------
    def prepare(self):
        tar = make_image_tar(self.work)
        sh(self.berth + ["import", tar, IMAGE], stdout=subprocess.DEVNULL)
        sh(self.podman + ["import", tar, IMAGE], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.podman_network()

    def startup(self):
        a = self.a
        # Each engine really uses the network we think it does.
        show = ["/bin/busybox", "ip", "-4", "-o", "addr", "show", "eth0"]
        b = out(self.berth + ["run", "--rm", IMAGE] + show)
        p = out(self.podman + ["run", "--rm"] + ULIMITS + [IMAGE] + show)
        bnet = os.environ["BERTH_BRIDGE_SUBNET"].rsplit(".", 1)[0] + "."
        assert f"inet {bnet}" in b, f"berth's container is not on {bnet}0: {b}"
        assert f"inet {PODMAN_SUBNET.rsplit('.', 1)[0]}." in p, f"podman's container is not on {PODMAN_SUBNET}: {p}"
        print(f"# berth container: {b.split()[3]} on {os.environ['BERTH_BRIDGE']}; "
              f"podman container: {p.split()[3]} on {PODMAN_IF}", flush=True)
        runs = {
            "berth (bridge)": self.berth + ["run", "--rm", IMAGE, "true"],
            "podman+runc (bridge)": self.podman + ["run", "--rm"] + ULIMITS + [IMAGE, "true"],
            "berth --network none": self.berth + ["run", "--rm", "--network", "none", IMAGE, "true"],
        }
        for cmd in runs.values():  # warm-up
            timed(cmd)
        times = {k: [] for k in runs}
        for _ in range(a.runs):
            for k, cmd in runs.items():
                times[k].append(timed(cmd))
        anchor = med_ms(times["podman+runc (bridge)"])
        print(f"\n## run --rm of `true`, {a.runs} alternating rounds")
        print(f"{'engine':<22} {'median ms':>10} {'p90 ms':>8} {'min ms':>8} {'speed-up':>9}")
        for k, v in times.items():
            print(f"{k:<22} {med_ms(v):>10.1f} {p90(v) * 1000:>8.1f} {min(v) * 1000:>8.1f} "
                  f"{anchor / med_ms(v):>8.2f}x")
        for k, v in times.items():
            print(f"# {k} ms, sorted: " + " ".join(f"{x * 1000:.0f}" for x in sorted(v)))
        sys.stdout.flush()
        self.results["startup"] = {k: v for k, v in times.items()}

    # ---- 2/3. data path ---------------------------------------------------------------
    def remember_pid(self, pid):
        with open(self.pidfile, "a") as f:
            f.write(f"{pid}\n")

    def berth_container(self, name, *extra):
        sh(self.berth + ["run", "-d", "--name", name, *extra, IMAGE, "sleep", "3600"], stdout=subprocess.DEVNULL)
        v = json.loads(out(self.berth + ["inspect", name]))
        pid = v[0]["State"]["Pid"]
        ns = f"/proc/{pid}/ns/net"
        addr = out(["nsenter", f"--net={ns}", "ip", "-4", "-o", "addr", "show", "eth0"]).split()[3].split("/")[0]
        return ns, addr

    def hand_build(self, mtu):
        sh(["ip", "link", "add", HAND_BR, "type", "bridge"])
        sh(["ip", "link", "set", HAND_BR, "mtu", str(mtu), "up"])
        sh(["ip", "addr", "add", f"{HAND_PREFIX}.1/24", "dev", HAND_BR])
        for ns, host_if, addr in HAND_NS.values():
            sh(["ip", "netns", "add", ns])
            sh(["ip", "link", "add", host_if, "mtu", str(mtu), "type", "veth", "peer", "name", "eth0",
                "mtu", str(mtu), "netns", ns])
            sh(["ip", "link", "set", host_if, "master", HAND_BR, "up"])
            sh(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0"])
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
            sh(["ip", "-n", ns, "route", "add", "default", "via", f"{HAND_PREFIX}.1"])
        # The client "host": a namespace behind a veth /30, routed by this host.
        sh(["ip", "netns", "add", CL_NS])
        sh(["ip", "link", "add", CL_IF, "type", "veth", "peer", "name", "eth0", "netns", CL_NS])
        sh(["ip", "addr", "add", f"{CL_HOST}/30", "dev", CL_IF])
        sh(["ip", "link", "set", CL_IF, "up"])
        sh(["ip", "-n", CL_NS, "addr", "add", f"{CL_INNER}/30", "dev", "eth0"])
        sh(["ip", "-n", CL_NS, "link", "set", "lo", "up"])
        sh(["ip", "-n", CL_NS, "link", "set", "eth0", "up"])
        sh(["ip", "-n", CL_NS, "route", "add", "default", "via", CL_HOST])

    def hand_dnat(self, host_port):
        """The same port mapping as berth's, by hand, in a table of our own: DNAT of local
        destinations (prerouting and output, through a regular chain), masquerade of
        127.0.0.0/8 sources leaving on the bridge, route_localnet on the bridge."""
        srv = HAND_NS["srv"][2]
        t = f"inet {HAND_TABLE}"
        script = (
            f"add table {t}\n"
            f"add chain {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n"
            f"add chain {t} output {{ type nat hook output priority -100; policy accept; }}\n"
            f"add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n"
            f"add chain {t} ports\n"
            f"add rule {t} prerouting fib daddr type local jump ports\n"
            f"add rule {t} output fib daddr type local jump ports\n"
            f"add rule {t} ports tcp dport {host_port} dnat ip to {srv}:{IPERF_PORT}\n"
            f"add rule {t} postrouting oifname \"{HAND_BR}\" ip saddr 127.0.0.0/8 masquerade\n"
        )
        subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)
        with open(f"/proc/sys/net/ipv4/conf/{HAND_BR}/route_localnet", "w") as f:
            f.write("1")

    def iperf_server(self, ns):
        self.servers.append(iperf.server(ns, self.remember_pid))

    def iperf(self, ns, addr, port):
        return iperf.client(ns, addr, port, self.a.secs)

    def ping(self, ns, addr):
        return iperf.ping(ns, addr, self.a.pings)

    def datapath(self):
        a = self.a
        srv_ns, srv_ip = self.berth_container("ipsrv", "-p", f"{a.port}:{IPERF_PORT}")
        cli_ns, cli_ip = self.berth_container("ipcli")
        mtu = int(open(f"/sys/class/net/{os.environ['BERTH_BRIDGE']}/mtu").read())
        self.hand_build(mtu)
        self.hand_dnat(a.hand_port)
        hsrv_ns, hsrv_ip = f"/run/netns/{HAND_NS['srv'][0]}", HAND_NS["srv"][2]
        hcli_ns = f"/run/netns/{HAND_NS['cli'][0]}"
        cl_ns = f"/run/netns/{CL_NS}"
        self.iperf_server(srv_ns)
        self.iperf_server(hsrv_ns)
        print(f"\n# data path: berth {cli_ip} -> {srv_ip} on {os.environ['BERTH_BRIDGE']}, "
              f"hand-built {HAND_NS['cli'][2]} -> {hsrv_ip} on {HAND_BR}, mtu {mtu}; "
              f"client namespace {CL_INNER} -> host {CL_HOST}; published ports {a.port} (berth), "
              f"{a.hand_port} (hand)", flush=True)

        # (label, berth (ns, addr, port), hand (ns, addr, port))
        paths = [
            ("container -> container", (cli_ns, srv_ip, IPERF_PORT), (hcli_ns, hsrv_ip, IPERF_PORT)),
            ("client ns -> host port (DNAT)", (cl_ns, CL_HOST, a.port), (cl_ns, CL_HOST, a.hand_port)),
            ("host 127.0.0.1 -> host port", (None, "127.0.0.1", a.port), (None, "127.0.0.1", a.hand_port)),
            ("host -> container address", (None, srv_ip, IPERF_PORT), (None, hsrv_ip, IPERF_PORT)),
        ]
        tput = {p[0]: {"berth": [], "hand": []} for p in paths}
        retr = {p[0]: {"berth": 0, "hand": 0} for p in paths}
        rtt = {"berth": [], "hand": []}
        for r in range(a.rounds):
            for label, b, h in paths:
                # Alternate which side goes first from round to round.
                order = [("berth", b), ("hand", h)] if r % 2 == 0 else [("hand", h), ("berth", b)]
                for side, (ns, addr, port) in order:
                    g, rt = self.iperf(ns, addr, port)
                    tput[label][side].append(g)
                    retr[label][side] += rt
            for side, (ns, addr) in ([("berth", (cli_ns, srv_ip)), ("hand", (hcli_ns, hsrv_ip))]
                                     if r % 2 == 0 else [("hand", (hcli_ns, hsrv_ip)), ("berth", (cli_ns, srv_ip))]):
                rtt[side] += self.ping(ns, addr)
            print(f"# round {r + 1}/{a.rounds}: " + ", ".join(
                f"{lab}: {tput[lab]['berth'][-1]:.1f}/{tput[lab]['hand'][-1]:.1f}" for lab, _, _ in paths)
                + " Gbit/s (berth/hand)",
                flush=True)

        print(f"\n## TCP throughput (iperf3, 1 stream, {a.secs} s after 1 s omitted), "
              f"{a.rounds} alternating rounds, Gbit/s")
        # berth/hand is the ratio of the medians; "paired" is the median of the rounds' own
        # ratios (each round measures both sides back to back, so slow drifts in the
        # machine's load cancel out).
        print(f"{'path':<32} {'berth median':>12} {'(min-max)':>13} {'hand median':>12} {'(min-max)':>13} "
              f"{'berth/hand':>10} {'paired':>8} {'retr b/h':>11}")
        for label, _, _ in paths:
            b, h = tput[label]["berth"], tput[label]["hand"]
            paired = statistics.median(x / y for x, y in zip(b, h))
            print(f"{label:<32} {statistics.median(b):>12.2f} {f'({min(b):.1f}-{max(b):.1f})':>13} "
                  f"{statistics.median(h):>12.2f} {f'({min(h):.1f}-{max(h):.1f})':>13} "
                  f"{statistics.median(b) / statistics.median(h):>9.3f}x {paired:>7.3f}x "
                  f"{retr[label]['berth']:>5}/{retr[label]['hand']}")
        for side in ("berth", "hand"):
            direct = statistics.median(tput["host -> container address"][side])
            print(f"# {side}: published port / container address from the host: "
                  f"client ns {statistics.median(tput['client ns -> host port (DNAT)'][side]) / direct:.3f}x, "
                  f"127.0.0.1 {statistics.median(tput['host 127.0.0.1 -> host port'][side]) / direct:.3f}x")
        print(f"\n## container -> container ICMP round trip (busybox ping -i 0.01), "
              f"{a.rounds} x {a.pings} pings each, ms")
        print(f"{'path':<12} {'median':>8} {'mean':>8} {'p90':>8} {'received':>9}")
        for side, v in rtt.items():
            if v:
                print(f"{side:<12} {statistics.median(v):>8.3f} {statistics.mean(v):>8.3f} {p90(v):>8.3f} "
                      f"{len(v):>5}/{a.rounds * a.pings}")
            else:
                print(f"{side:<12} no replies")
        if rtt["berth"] and rtt["hand"]:
            print(f"# berth/hand median RTT: {statistics.median(rtt['berth']) / statistics.median(rtt['hand']):.3f}x")
        self.results["throughput_gbps"] = tput
        self.results["rtt_ms"] = rtt

    def stop_servers(self):
        for p in self.servers:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)

    @staticmethod
    def load(when):
        """The machine's load: other work on this shared machine moves every figure."""
        try:
            psi = open("/proc/pressure/cpu").readline().split()[1:3]
        except OSError:
            psi = ["n/a"]
        print(f"# load {when}: loadavg {' '.join(open('/proc/loadavg').read().split()[:3])}, "
              f"cpu pressure {' '.join(psi)}", flush=True)

    def main(self):
        self.results, self.servers = {}, []
        print(f"# {os.cpu_count()} cpus, kernel {os.uname().release}, "
              f"{out(['podman', '--version']).strip()}, {out(['runc', '--version']).splitlines()[0]}, "
              f"{out(['iperf3', '--version']).splitlines()[0]}")
        self.load("at start")
        try:
            self.prepare()
            if not self.a.skip_startup:
                self.startup()
            if not self.a.skip_datapath:
                self.datapath()
        finally:
            self.load("at end")
            self.stop_servers()
            with open(os.path.join(self.work, "results.json"), "w") as f:
                json.dump(self.results, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--berth", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--driver", default="vfs")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--secs", type=int, default=3)
    ap.add_argument("--pings", type=int, default=50)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--hand-port", type=int, required=True)
    ap.add_argument("--skip-startup", action="store_true")
    ap.add_argument("--skip-datapath", action="store_true")
    Bench(ap.parse_args()).main()


if __name__ == "__main__":
    main()
