#!/usr/bin/env python3
"""Start-up, memory and latency of `iuf serve` replicas on one host (issue 26).

    python3 docs/results/scale/measure.py --iuf target/debug/iuf --weights W \
        --images ../shared/datasets/mvtec-mini/tire/test/good --replicas 3 MODEL.safetensors ...

For each model (in turn, alternating over --rounds): starts --replicas `iuf serve` processes at
once, times each until GET /readyz answers 200, reads Rss / Pss / Shared / Private from
/proc/PID/smaps_rollup once all are ready and have inspected images, sends every image of
--images one at a time to the first replica and reports the median and range of the
round-trip latency, then stops them (SIGTERM). Standard library only.
"""
import argparse, os, re, signal, statistics, subprocess, sys, time, urllib.request, glob

def rollup(pid):
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[-1] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) / 1024.0
    return {
        "rss": out.get("Rss", 0),
        "pss": out.get("Pss", 0),
        "shared": out.get("Shared_Clean", 0) + out.get("Shared_Dirty", 0),
        "private": out.get("Private_Clean", 0) + out.get("Private_Dirty", 0),
    }

def cpu_s(pid):
    """User + system CPU seconds of `pid` so far (robust to other processes' load)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def get(url, timeout=1.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except Exception:
        return None

def post(url, body):
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()

def run(a, model, port0):
    procs, t0 = [], time.monotonic()
    for i in range(a.replicas):
        cmd = [a.iuf, "--weights", a.weights, "--cache-dir", a.cache, "--threads", str(a.threads),
               "serve", "--model", model, "--bind", f"127.0.0.1:{port0 + i}"]
        log = open(os.path.join(a.logs, f"serve-{port0 + i}.log"), "w")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
    ready = [None] * a.replicas
    while any(r is None for r in ready):
        for i, p in enumerate(procs):
            if ready[i] is None and get(f"http://127.0.0.1:{port0 + i}/readyz", 0.2) == 200:
                ready[i] = time.monotonic() - t0
        if time.monotonic() - t0 > 600:
            raise SystemExit("not ready after 600 s")
        time.sleep(0.01)
    cpu_ready = [cpu_s(p.pid) for p in procs]
    images = sorted(glob.glob(os.path.join(a.images, "*.png")))[: a.count]
    bodies = [open(p, "rb").read() for p in images]
    lat = []
    cpu0 = cpu_s(procs[0].pid)
    for b in bodies:
        t = time.monotonic()
        post(f"http://127.0.0.1:{port0}/v1/inspect", b)
        lat.append((time.monotonic() - t) * 1000)
    cpu_image = (cpu_s(procs[0].pid) - cpu0) * 1000 / len(bodies)
    for i in range(1, a.replicas):  # every replica has scored an image
        post(f"http://127.0.0.1:{port0 + i}/v1/inspect", bodies[0])
    mem = [rollup(p.pid) for p in procs]
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(timeout=60)
    loads = []
    for i in range(a.replicas):  # serve's own "model ... loaded in X s" (file to model)
        text = open(os.path.join(a.logs, f"serve-{port0 + i}.log")).read()
        m = re.search(r"loaded in ([0-9.]+) s", text)
        loads.append(float(m.group(1)) if m else float("nan"))
    return ready, loads, cpu_ready, mem, lat, cpu_image

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--iuf", default="target/debug/iuf")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--cache", default="target/iuf-measure-cache")
    ap.add_argument("--images", required=True)
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--port", type=int, default=18400)
    ap.add_argument("--logs", default="/tmp")
    a = ap.parse_args()
    for r in range(a.rounds):
        for m in a.models:
            ready, loads, cpu_ready, mem, lat, cpu_image = run(a, m, a.port)
            size = os.path.getsize(m) / 1048576
            print(f"round {r} {os.path.basename(m)} ({size:.0f} MiB) x{a.replicas}: ready "
                  + " ".join(f"{x:.2f}" for x in ready) + " s (model load "
                  + " ".join(f"{x:.2f}" for x in loads) + " s, CPU at ready "
                  + " ".join(f"{x:.2f}" for x in cpu_ready) + " s); "
                  + "; ".join(f"rss {x['rss']:.0f} pss {x['pss']:.0f} shared {x['shared']:.0f} "
                              f"private {x['private']:.0f} MiB" for x in mem)
                  + f"; latency median {statistics.median(lat):.1f} ms "
                  f"(range {min(lat):.1f}-{max(lat):.1f}, {len(lat)} images), CPU {cpu_image:.0f} ms/image",
                  flush=True)

if __name__ == "__main__":
    main()
