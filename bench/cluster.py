"""berth cluster benchmark (issue 5, item 9), driven by bench/cluster.sh.

datapath: iperf3/ping across two namespace hosts: berth overlay, underlay, hand-built VXLAN,
          and the hand-built VXLAN with berth's ruleset loaded for its rounds.
converge: `berth run -d --network cluster` on h1 until a container on h2 gets a reply.
scale:    a controller with RECORDS container records and WATCHERS watch streams.

Only loopback and addresses inside the namespaces cluster.sh made are contacted. Processes
started here are appended to WORK/pids (killed by PID at exit by cluster.sh) and stopped
here when done.
"""
import argparse
import asyncio
import ctypes
import fcntl
import json
import os
import re
import select
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iperf  # noqa: E402
from iperf import IPERF_PORT  # noqa: E402

CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)


class netns:
    """Enter a network namespace (this process is single-threaded) and come back."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        self.home = os.open("/proc/self/ns/net", os.O_RDONLY)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {self.path}")
        finally:
            os.close(fd)

    def __exit__(self, *exc):
        libc.setns(self.home, CLONE_NEWNET)
        os.close(self.home)


def out(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60, **kw).stdout


def rfc3339_epoch(t):
    """Seconds since the epoch of a UTC RFC 3339 time with up to 9 fractional digits
    (datetime takes only 6)."""
    import datetime
    base, _, frac = t.rstrip("Z").partition(".")
    d = datetime.datetime.fromisoformat(base).replace(tzinfo=datetime.timezone.utc)
    return d.timestamp() + (float("0." + frac) if frac else 0.0)


HAND_RULES = "hand-built + berth's rules"


class HandRules:
    """Loads `rules` ({namespace path: nft script}) for the duration of a `with`; flushes
    those namespaces' rulesets after (the hand-built hosts have no other rules)."""

    def __init__(self, rules):
        self.rules = rules

    def __enter__(self):
        for ns, text in self.rules.items():
            subprocess.run(["nsenter", f"--net={ns}", "nft", "-f", "-"], input=text,
                           text=True, check=True, timeout=60)

    def __exit__(self, *exc):
        for ns in self.rules:
            subprocess.run(["nsenter", f"--net={ns}", "nft", "flush", "ruleset"], check=True,
                           timeout=60)


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def load(when):
    try:
        psi = " ".join(open("/proc/pressure/cpu").readline().split()[1:3])
    except OSError:
        psi = "n/a"
    print(f"# load {when}: loadavg {' '.join(open('/proc/loadavg').read().split()[:3])}, cpu pressure {psi}",
          flush=True)


def remember(pid, work):
    with open(os.path.join(work, "pids"), "a") as f:
        f.write(f"{pid}\n")


class Chunked:
    """Incremental decoder of an HTTP/1.1 chunked body into lines."""

    def __init__(self):
        self.buf = b""
        self.body = b""
        self.headers_done = False
        self.status = None

    def feed(self, data):
        self.buf += data
        lines = []
        if not self.headers_done:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return lines
            head = self.buf[:i].decode()
            self.status = int(head.split()[1])
            self.buf = self.buf[i + 4:]
            self.headers_done = True
        while True:
            i = self.buf.find(b"\r\n")
            if i < 0:
                break
            size = int(self.buf[:i].split(b";")[0] or b"0", 16)
            if len(self.buf) < i + 2 + size + 2:
                break
            self.body += self.buf[i + 2:i + 2 + size]
            self.buf = self.buf[i + 2 + size + 2:]
        while b"\n" in self.body:
            line, self.body = self.body.split(b"\n", 1)
            lines.append(line)
        return lines


def tls(ctl_dir, client_cert=True):
    """The controller speaks mutual TLS: trust only the cluster CA, present the admin's
    certificate (or none, for joining)."""
    import ssl
    ctx = ssl.create_default_context(cafile=os.path.join(ctl_dir, "ca.crt"))
    if client_cert:
        ctx.load_cert_chain(os.path.join(ctl_dir, "admin.crt"), os.path.join(ctl_dir, "admin.key"))
    return ctx


def new_csr(workdir):
    """A P-256 key and a CSR for it (PEM), as an agent makes at join; one serves every
    simulated host (the controller signs whatever name the join gives)."""
    key, csr = os.path.join(workdir, "sim.key"), os.path.join(workdir, "sim.csr")
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-subj", "/CN=sim", "-keyout", key, "-out", csr],
                   check=True, capture_output=True)
    return open(csr).read()


def http_json(url, method, path, ctx, body=None, timeout=10):
    """One request on a fresh HTTPS connection (in the current namespace)."""
    import http.client
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPSConnection(u.hostname, u.port, timeout=timeout, context=ctx)
    hdr = {}
    data = None
    if body is not None:
        data = json.dumps(body)
        hdr["Content-Type"] = "application/json"
    c.request(method, path, body=data, headers=hdr)
    r = c.getresponse()
    v = json.loads(r.read() or b"null")
    c.close()
    if r.status >= 300:
        raise RuntimeError(f"{method} {path}: {r.status} {v}")
    return v


class Bench:
    def __init__(self, a):
        self.a = a
        self.ns = lambda n: f"/run/netns/{a.tag}{n}"

    def berth(self, host, *args, timeout=60):
        w = self.a.work
        return ["timeout", str(timeout), "nsenter", f"--net={self.ns(host)}", "--", "env",
                f"BERTH_CLUSTER_HOST_FILE={w}/{host}/host.json", f"{self.a.bin}/berth", "--root",
                f"{w}/{host}/lib", "--runroot", f"{w}/{host}/run", *args]

    def container(self, host, name):
        v = json.loads(out(self.berth(host, "inspect", name)))
        ns = f"/proc/{v[0]['State']['Pid']}/ns/net"
        addr = out(["nsenter", f"--net={ns}", "ip", "-4", "-o", "addr", "show", "eth0"]).split()[3].split("/")[0]
        return ns, addr

    # ---- datapath -----------------------------------------------------------------
    # Both hosts share this machine's CPUs. Left to the scheduler, where the client, the
    # server and the softirq work land changes from run to run and moved single rounds
    # by up to 30%; every path gets the same placement: client on CPU 0, server on 1.
    def cpus(self):
        return (0, 1) if (os.cpu_count() or 1) >= 2 else (None, None)

    def iperf_server(self, ns):
        self.servers.append(iperf.server(ns, lambda pid: remember(pid, self.a.work), self.cpus()[1]))

    def iperf(self, ns, addr):
        return iperf.client(ns, addr, IPERF_PORT, self.a.secs, self.cpus()[0])

    def ping(self, ns, addr):
        return iperf.ping(ns, addr, 50)

    @staticmethod
    def tx_csum(ns, dev, on=None):
        """Gets (or sets) a device's TX checksum offload with the legacy ethtool ioctls
        (ETHTOOL_GTXCSUM/STXCSUM; no ethtool binary here)."""
        with netns(ns):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            cmd = 0x16 if on is None else 0x17
            buf = ctypes.create_string_buffer(struct.pack("II", cmd, int(bool(on))), 8)
            ifr = struct.pack("16sP", dev.encode(), ctypes.addressof(buf)).ljust(40, b"\0")
            fcntl.ioctl(s.fileno(), 0x8946, ifr)
            return bool(struct.unpack("II", buf.raw)[1])
        finally:
            s.close()

    def hand_rules(self):
        """berth's ruleset as h1 and h2 have it, rewritten for ha and hb: their bridge,
        blocks, cluster range and peer underlay address; counters cleared."""
        scripts = {}
        for src, dst, block, peer in (("h1", "ha", "10.250.1.0/24", "10.198.78.6"),
                                      ("h2", "hb", "10.250.2.0/24", "10.198.78.5")):
            text = out(["nsenter", f"--net={self.ns(src)}", "nft", "list", "ruleset"])
            text = re.sub(r"counter packets \d+ bytes \d+", "counter", text)
            text = text.replace('"berth-cl0"', '"br0"').replace("10.244.0.0/16", "10.250.0.0/16")
            text = re.sub(r"10\.244\.\d+\.0/24", block, text)
            text = re.sub(r"elements = \{ [0-9.]+ \}", f"elements = {{ {peer} }}", text)
            scripts[self.ns(dst)] = text
        return scripts

    def datapath(self):
        a = self.a
        ns1, ip1 = self.container("h1", "web")
        ns2, ip2 = self.container("h2", "web")
        # Like for like: the hand-built devices get what the agents set on berth.vx.
        want = self.tx_csum(self.ns("h1"), "berth.vx")
        if want and a.offload_off:
            raise RuntimeError("berth.vx has tx checksum offload on; expected off")
        for h in ("ha", "hb"):
            self.tx_csum(self.ns(h), "vx", want)
        offl = {h: self.tx_csum(self.ns(h), dev) for h, dev in
                (("h1", "berth.vx"), ("h2", "berth.vx"), ("ha", "vx"), ("hb", "vx"))}
        paths = {
            "berth overlay": (ns1, ns2, ip2),
            "hand-built vxlan": (self.ns("ca"), self.ns("cb"), "10.250.2.2"),
            "underlay": (self.ns("h1"), self.ns("h2"), "10.198.78.3"),
            # The hand-built overlay again, with berth's ruleset loaded on ha/hb for its
            # rounds only: what the rules alone cost.
            HAND_RULES: (self.ns("ca"), self.ns("cb"), "10.250.2.2"),
        }
        rules = self.hand_rules()
        print(f"\n# datapath, {a.label}: berth {ip1} (h1) -> {ip2} (h2); hand 10.250.1.2 (ha) -> 10.250.2.2 (hb); "
              f"underlay 10.198.78.2 -> .3; container mtu {a.mtu}; tx checksum offload "
              + ", ".join(f"{h} {'on' if v else 'off'}" for h, v in offl.items()), flush=True)
        self.servers = []
        try:
            # One server per namespace: both hand-built paths use cb's.
            for srv in dict.fromkeys(srv for _, srv, _ in paths.values()):
                self.iperf_server(srv)
            tput = {k: [] for k in paths}
            retr = {k: 0 for k in paths}
            rtt = {k: [] for k in paths}
            load("datapath start")
            for r in range(a.rounds):
                order = list(paths) if r % 2 == 0 else list(reversed(paths))
                for k in order:
                    cli, _, addr = paths[k]
                    with HandRules(rules if k == HAND_RULES else {}):
                        g, rt = self.iperf(cli, addr)
                    tput[k].append(g)
                    retr[k] += rt
                for k in order:
                    cli, _, addr = paths[k]
                    with HandRules(rules if k == HAND_RULES else {}):
                        rtt[k] += self.ping(cli, addr)
                print(f"# round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {tput[k][-1]:.2f}" for k in paths)
                      + " Gbit/s", flush=True)
            load("datapath end")
        finally:
            for p in self.servers:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)
        b, h, u, hr = (tput[k] for k in paths)
        print(f"\n## TCP throughput across two hosts, {a.label}; iperf3 1 stream, -t {a.secs} -O 1, "
              f"{a.rounds} rounds, client on CPU {self.cpus()[0]}, server on CPU {self.cpus()[1]}, Gbit/s")
        print(f"{'path':<26} {'median':>8} {'min-max':>13} {'retr':>6}")
        for k in paths:
            v = tput[k]
            print(f"{k:<26} {statistics.median(v):>8.2f} {f'{min(v):.2f}-{max(v):.2f}':>13} {retr[k]:>6}")
        print(f"# berth/hand {statistics.median(b) / statistics.median(h):.3f}x (paired "
              f"{statistics.median(x / y for x, y in zip(b, h)):.3f}x); berth/underlay "
              f"{statistics.median(b) / statistics.median(u):.3f}x; hand/underlay "
              f"{statistics.median(h) / statistics.median(u):.3f}x")
        print(f"# hand+rules/hand {statistics.median(hr) / statistics.median(h):.3f}x (paired "
              f"{statistics.median(x / y for x, y in zip(hr, h)):.3f}x); berth/(hand+rules) "
              f"{statistics.median(b) / statistics.median(hr):.3f}x (paired "
              f"{statistics.median(x / y for x, y in zip(b, hr)):.3f}x)")
        print(f"\n## ICMP round trip, busybox ping -c 50 -i 0.01 per round, ms")
        print(f"{'path':<26} {'median':>8} {'p90':>8} {'received':>9}")
        for k in paths:
            v = rtt[k]
            print(f"{k:<26} {statistics.median(v) if v else float('nan'):>8.3f} "
                  f"{pct(v, 90) if v else float('nan'):>8.3f} {len(v):>5}/{50 * a.rounds}")
        if rtt["berth overlay"] and rtt["hand-built vxlan"]:
            print(f"# berth/hand median RTT {statistics.median(rtt['berth overlay']) / statistics.median(rtt['hand-built vxlan']):.3f}x")
        sys.stdout.flush()

    # ---- convergence --------------------------------------------------------------
    def converge(self):
        a = self.a
        ctx = tls(os.path.join(a.work, "ctl"))
        ns2, ip2 = self.container("h2", "web")
        ctl = self.ns("ctl")
        u = urllib.parse.urlparse(a.ctl)
        with netns(ctl):
            rev = http_json(a.ctl, "GET", "/v1/containers", ctx)["revision"]
            ws = ctx.wrap_socket(socket.create_connection((u.hostname, u.port), timeout=5),
                                 server_hostname=u.hostname)
        ws.sendall(f"GET /v1/watch?from={rev} HTTP/1.1\r\nHost: c\r\n\r\n".encode())
        ws.setblocking(False)
        dec = Chunked()
        with netns(ns2):
            icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        icmp.setblocking(False)
        ident = os.getpid() & 0xFFFF

        def echo(seq):
            hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"berthbench"
            s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
            s = (s >> 16) + (s & 0xFFFF)
            s += s >> 16
            return struct.pack("!BBHHH", 8, 0, ~s & 0xFFFF, ident, seq) + b"berthbench"

        rows = []
        misses = 0
        load(f"converge start (report-ms {a.report_ms})")
        tstart = time.monotonic()
        for i in range(a.n):
            if time.monotonic() - tstart > a.max_secs:
                print(f"# stopped after {i} containers: {a.max_secs} s budget", flush=True)
                break
            name = f"conv{i}"
            w0 = time.time()
            t0 = time.monotonic()
            p = subprocess.Popen(self.berth("h1", "run", "-d", "--name", name, "--network", "cluster", "--dns",
                                            "127.0.0.1", "busybox:cluster", "sleep", "600"),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            t_run = t_rec = t_reply = None
            addr = None
            seq = 0
            next_ping = 0.0
            deadline = t0 + 10
            while time.monotonic() < deadline and t_reply is None:
                if t_run is None and p.poll() is not None:
                    t_run = time.monotonic()
                    if p.returncode != 0:
                        raise RuntimeError(f"berth run {name}: {p.stderr.read().decode()}")
                wait = 0.001 if addr else 0.005
                r, _, _ = select.select([ws, icmp], [], [], wait)
                now = time.monotonic()
                if ws in r:
                    try:
                        data = ws.recv(65536)
                    except (BlockingIOError, ssl.SSLWantReadError):
                        data = b""
                    # TLS may hold more decrypted bytes than select() can see.
                    while ws.pending():
                        data += ws.recv(ws.pending())
                    for line in dec.feed(data):
                        if not line.strip():
                            continue
                        ev = json.loads(line)
                        val = ev.get("value") or {}
                        if ev.get("kind") == "put" and ev["key"].startswith("/containers/") and val.get("name") == name:
                            addr, t_rec = val["addr"], now
                if icmp in r:
                    while True:
                        try:
                            pkt, src = icmp.recvfrom(2048)
                        except BlockingIOError:
                            break
                        ihl = (pkt[0] & 0xF) * 4
                        typ, _, _, pid, _ = struct.unpack("!BBHHH", pkt[ihl:ihl + 8])
                        if typ == 0 and pid == ident and src[0] == addr:
                            t_reply = now
                if addr and t_reply is None and now >= next_ping:
                    seq = (seq + 1) & 0xFFFF
                    try:
                        icmp.sendto(echo(seq), (addr, 0))
                    except OSError:
                        pass
                    next_ping = now + 0.001
            if p.poll() is None:
                p.wait(timeout=60)
                t_run = t_run or time.monotonic()
            if t_reply is None:
                misses += 1
                print(f"# {name}: no reply within 10 s (record {'seen' if addr else 'not seen'})", flush=True)
            else:
                # When the engine recorded the container as started (wall clock), relative
                # to the spawn of `berth run -d`: the second definition's origin.
                started = json.loads(out(self.berth("h1", "inspect", name)))[0]["State"]["StartedAt"]
                t_start = rfc3339_epoch(started) - w0
                rows.append((t_run - t0, t_rec - t0, t_reply - t0, seq, addr, t_start))
            subprocess.run(self.berth("h1", "rm", "-f", name), check=True, capture_output=True)
        icmp.close()
        ws.close()
        load(f"converge end (report-ms {a.report_ms})")
        print(f"\n## convergence, {a.label or 'agents'}' --report-ms {a.report_ms}: berth run -d on h1 -> first ICMP reply "
              f"on h2's container ({len(rows)} containers, {misses} without reply), ms")
        print(f"{'from berth run to':<34} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
        for j, k in enumerate(("engine recorded it started", "berth run -d returned",
                               "record on the controller's watch", "first reply on h2")):
            v = [r[(5, 0, 1, 2)[j]] * 1000 for r in rows]
            if v:
                print(f"{k:<34} {pct(v, 50):>8.1f} {pct(v, 90):>8.1f} {pct(v, 99):>8.1f} {max(v):>8.1f}")
        print(f"{'from the container start to':<34}")
        for j, k in ((1, "record on the controller's watch"), (2, "first reply on h2")):
            v = [(r[j] - r[5]) * 1000 for r in rows]
            if v:
                print(f"{k:<34} {pct(v, 50):>8.1f} {pct(v, 90):>8.1f} {pct(v, 99):>8.1f} {max(v):>8.1f}")
        if rows:
            v = [(r[2] - r[1]) * 1000 for r in rows]
            print(f"# record seen -> first reply: p50 {pct(v, 50):.1f} ms, p99 {pct(v, 99):.1f} ms; "
                  f"echo requests sent before the reply: median {statistics.median(r[3] for r in rows)}; "
                  f"{len(set(r[4] for r in rows))} distinct addresses; replies later than 900 ms after the record "
                  f"(an ARP retry on h1's bridge): {sum(1 for x in v if x > 900)}")
        sys.stdout.flush()

    # ---- scale --------------------------------------------------------------------
    def rss(self):
        for line in open(f"/proc/{self.a.pid}/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1])
        return 0

    async def request(self, conn, method, path, token=None, body=None):
        r, w = conn
        data = json.dumps(body).encode() if body is not None else b""
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        w.write(f"{method} {path} HTTP/1.1\r\nHost: c\r\n{auth}"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        head = await r.readuntil(b"\r\n\r\n")
        status = int(head.split()[1])
        m = re.search(rb"(?i)content-length: *(\d+)", head)
        if m:
            payload = await r.readexactly(int(m.group(1)))
        else:  # chunked
            payload = b""
            while True:
                size = int((await r.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await r.readexactly(size + 2)
                if size == 0:
                    break
                payload += chunk[:-2]
        v = json.loads(payload or b"null")
        if status >= 300:
            raise RuntimeError(f"{method} {path}: {status} {v}")
        return v

    async def scale_main(self):
        a = self.a
        u = urllib.parse.urlparse(a.ctl)
        d = os.path.join(a.work, "sctl")
        admin_tls, anon_tls = tls(d), tls(d, client_cert=False)
        join = open(os.path.join(d, "join.token")).read().strip()
        csr = new_csr(a.work)

        async def connect(ctx=admin_tls):
            for _ in range(100):
                try:
                    return await asyncio.open_connection(u.hostname, u.port, limit=1 << 22, ssl=ctx)
                except OSError:
                    await asyncio.sleep(0.05)
            raise RuntimeError("controller not listening")

        c0 = await connect()
        joiner = await connect(anon_tls)
        await asyncio.sleep(1)
        rss_idle = self.rss()
        print(f"\n# scale: controller pid {a.pid}, RSS idle {rss_idle} KiB", flush=True)
        per_host = 1000
        nhosts = (a.records + per_host - 1) // per_host + 1
        hosts = []
        for h in range(nhosts):
            v = await self.request(joiner, "POST", "/v1/join", join,
                                   {"name": f"sim{h}", "underlay_ip": f"172.31.{h // 250}.{h % 250 + 1}",
                                    "vtep_mac": f"02:cc:00:00:{h // 256:02x}:{h % 256:02x}", "csr": csr})
            hosts.append((f"sim{h}", v["host"]["blocks"][0]))
        # Records: per_host per simulated host, written by K concurrent admin clients.
        jobs = []
        for i in range(a.records):
            name, block = hosts[i // per_host]
            base = int.from_bytes(socket.inet_aton(block.split("/")[0]), "big")
            addr = socket.inet_ntoa((base + 2 + i % per_host).to_bytes(4, "big"))
            jobs.append((f"sim{i:06d}", {"host": name, "addr": addr, "name": f"c{i}"}))
        k = 8
        conns = [await connect() for _ in range(k)]
        t0 = time.monotonic()
        last = [t0]

        async def writer(j):
            for idx in range(j, len(jobs), k):
                cid, body = jobs[idx]
                await self.request(conns[j], "PUT", f"/v1/containers/{cid}", body=body)
                if j == 0 and time.monotonic() - last[0] > 15:
                    last[0] = time.monotonic()
                    print(f"# {idx} records written, {idx / (last[0] - t0):.0f}/s", flush=True)

        await asyncio.gather(*(writer(j) for j in range(k)))
        dt = time.monotonic() - t0
        await asyncio.sleep(1)
        rss_records = self.rss()
        print(f"# {a.records} records ({nhosts} hosts) written in {dt:.1f} s ({a.records / dt:.0f}/s, {k} clients); "
              f"RSS {rss_records} KiB", flush=True)
        rev = (await self.request(c0, "GET", "/v1/containers"))["revision"]

        # The watchers: one connection each, from the current revision.
        arrivals = {}  # revision -> list of arrival times
        ready = 0
        counted = [0]

        async def watcher(idx):
            nonlocal ready
            r, w = await connect()
            w.write(f"GET /v1/watch?from={rev} HTTP/1.1\r\nHost: c\r\n\r\n".encode())
            head = await r.readuntil(b"\r\n\r\n")
            if int(head.split()[1]) != 200:
                raise RuntimeError(f"watch {idx}: {head[:60]!r}")
            ready += 1
            try:
                while True:
                    size = int((await r.readuntil(b"\r\n")).split(b";")[0], 16)
                    chunk = await r.readexactly(size + 2)
                    now = time.monotonic()
                    if size == 0:
                        return
                    for line in chunk[:-2].split(b"\n"):
                        if line.strip():
                            arrivals.setdefault(json.loads(line)["revision"], []).append(now)
                            counted[0] += 1
            except (asyncio.IncompleteReadError, ConnectionError):
                return

        tasks = []
        t0 = time.monotonic()
        for i in range(a.watchers):
            tasks.append(asyncio.create_task(watcher(i)))
            if i % 50 == 49:
                await asyncio.sleep(0.01)
        while ready < a.watchers and time.monotonic() - t0 < 60:
            await asyncio.sleep(0.05)
        print(f"# {ready}/{a.watchers} watchers connected in {time.monotonic() - t0:.1f} s", flush=True)
        await asyncio.sleep(2)
        rss_watch = self.rss()
        # A series of writes, each waited for (all watchers, or 5 s) before the next.
        lat, lat_send, missing = [], [], 0
        nrec = a.records
        name, block = hosts[-1]
        base = int.from_bytes(socket.inet_aton(block.split("/")[0]), "big")
        load("fan-out start")
        for wnum in range(a.writes):
            addr = socket.inet_ntoa((base + 2 + wnum).to_bytes(4, "big"))
            ts = time.monotonic()
            v = await self.request(c0, "PUT", f"/v1/containers/fan{wnum:04d}", None,
                                   {"host": name, "addr": addr, "name": f"fan{wnum}"})
            tr = time.monotonic()
            r = v["revision"]
            end = tr + 5
            while len(arrivals.get(r, [])) < ready and time.monotonic() < end:
                await asyncio.sleep(0.002)
            got = arrivals.get(r, [])
            missing += ready - len(got)
            lat += [max(0.0, t - tr) for t in got]
            lat_send += [t - ts for t in got]
            await asyncio.sleep(0.1)
        load("fan-out end")
        rss_after = self.rss()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        print(f"\n## controller scale: {nrec} container records, {ready} watch streams, {a.writes} writes")
        if lat:
            ms = [x * 1000 for x in lat]
            ms2 = [x * 1000 for x in lat_send]
            print(f"fan-out latency, write response -> line at each watcher: p50 {pct(ms, 50):.1f} ms, "
                  f"p90 {pct(ms, 90):.1f} ms, p99 {pct(ms, 99):.1f} ms, max {max(ms):.1f} ms "
                  f"({len(ms)} deliveries, {missing} missing after 5 s)")
            print(f"fan-out latency, write sent -> line at each watcher: p50 {pct(ms2, 50):.1f} ms, "
                  f"p99 {pct(ms2, 99):.1f} ms")
        print(f"controller RSS: idle {rss_idle} KiB, {nrec} records {rss_records} KiB, "
              f"+{ready} watchers {rss_watch} KiB, after the writes {rss_after} KiB")
        sys.stdout.flush()

    def scale(self):
        asyncio.run(self.scale_main())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--ctl", required=True)
    ap.add_argument("--mtu", type=int, default=0)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("datapath")
    d.add_argument("--label", default="")
    d.add_argument("--rounds", type=int, default=5)
    d.add_argument("--secs", type=int, default=3)
    d.add_argument("--offload-off", action="store_true")
    c = sub.add_parser("converge")
    c.add_argument("--n", type=int, default=100)
    c.add_argument("--report-ms", type=int, default=200)
    c.add_argument("--label", default="")
    c.add_argument("--max-secs", type=int, default=600)
    s = sub.add_parser("scale")
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--records", type=int, default=50000)
    s.add_argument("--watchers", type=int, default=1000)
    s.add_argument("--writes", type=int, default=30)
    a = ap.parse_args()
    b = Bench(a)
    getattr(b, a.cmd)()


if __name__ == "__main__":
    main()
