"""iperf3 and ping inside network namespaces, shared by net.py and cluster.py."""
import json
import re
import subprocess
import time

IPERF_PORT = 5201


def in_ns(ns, cmd, cpu=None):
    """`cmd` run inside the network namespace at path `ns` (None: this one), on CPU
    `cpu` if given."""
    cmd = ["nsenter", f"--net={ns}"] + cmd if ns else cmd
    return ["taskset", "-c", str(cpu)] + cmd if cpu is not None else cmd


def server(ns, remember, cpu=None):
    """Starts an iperf3 server in `ns` (on CPU `cpu` if given) and waits (up to ~10 s)
    until it listens; `remember(pid)` records it for the cleanup. Returns the process."""
    p = subprocess.Popen(in_ns(ns, ["iperf3", "-s", "-p", str(IPERF_PORT)], cpu),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    remember(p.pid)
    want = f":{IPERF_PORT:04X} "
    for _ in range(200):
        for tcp in ("tcp", "tcp6"):
            try:
                with open(f"/proc/{p.pid}/net/{tcp}") as f:
                    if any(want in line and line.split()[3] == "0A" for line in f):
                        return p
            except OSError:
                pass
        if p.poll() is not None:
            raise RuntimeError(f"iperf3 server in {ns} exited with {p.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"iperf3 server in {ns} not listening")


def client(ns, addr, port, secs, cpu=None):
    """One stream of `secs` seconds (after 1 s omitted), on CPU `cpu` if given:
    (Gbit/s received, retransmits)."""
    cmd = in_ns(ns, ["iperf3", "-c", addr, "-p", str(port), "-t", str(secs), "-O", "1", "-J",
                     "--connect-timeout", "3000"], cpu)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 30)
    v = json.loads(r.stdout)
    if "error" in v:
        raise RuntimeError(f"iperf3 {addr}:{port} from {ns or 'host'}: {v['error']}")
    end = v["end"]
    return end["sum_received"]["bits_per_second"] / 1e9, end["sum_sent"].get("retransmits", 0)


def ping(ns, addr, count):
    """busybox ping -i 0.01 from `ns`: the round trips in ms."""
    r = subprocess.run(in_ns(ns, ["busybox", "ping", "-c", str(count), "-i", "0.01", "-W", "2", addr]),
                       capture_output=True, text=True, timeout=60)
    return [float(t) for t in re.findall(r"time=([0-9.]+) ms", r.stdout)]
