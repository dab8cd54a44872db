# From a file being closed to its result line on `iuf watch`'s stdout, over N images dropped
# one at a time, against `iuf predict`'s per-image time on the same images; alternated A/B.
import glob, json, os, re, shutil, subprocess, sys, time, statistics
import sys as _sys, pathlib as _pathlib
_sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent))
from common import IUF, SHARED, W, workdir_with_model  # noqa: E402

base = workdir_with_model()
model = f"{base}/m.safetensors"
N = int(sys.argv[1]) if len(sys.argv) > 1 else 200
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
srcs = sorted(glob.glob(f"{SHARED}/datasets/mvtec-mini/bottle/test/*/*.png")) + \
       sorted(glob.glob(f"{SHARED}/datasets/mvtec-mini/tire/test/*/*.png"))
srcs = (srcs * 3)[:N]
g = ["--weights", W, "--cache-dir", f"{base}/cache", "--threads", "2"]
imgs = f"{base}/images"
shutil.rmtree(imgs, ignore_errors=True); os.makedirs(imgs)
for i, s in enumerate(srcs):
    shutil.copy(s, f"{imgs}/{i:03d}.png")

def predict():
    out = f"{base}/pred-out"; shutil.rmtree(out, ignore_errors=True)
    r = subprocess.run([IUF, *g, "predict", "--model", model, imgs, "--out", out],
                       capture_output=True, text=True)
    m = re.search(r"per image: ([0-9.]+) ms", r.stderr)
    return float(m.group(1)), r.stderr.strip().splitlines()[-1]

def watch():
    cam, out = f"{base}/cam", f"{base}/watch-out"
    for d in (cam, out): shutil.rmtree(d, ignore_errors=True)
    os.makedirs(cam)
    p = subprocess.Popen([IUF, *g, "--json", "watch", "--model", model, "--in", cam, "--out", out],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    while "watching" not in p.stderr.readline():
        pass
    lat = []
    for i, s in enumerate(srcs):
        data = open(s, "rb").read()
        with open(f"{cam}/{i:03d}.png", "wb") as f:
            f.write(data)
        t0 = time.perf_counter()            # closed
        line = p.stdout.readline()
        t1 = time.perf_counter()
        assert json.loads(line)["path"].endswith(f"{i:03d}.png"), line
        lat.append(1e3 * (t1 - t0))
        time.sleep(0.02)
    p.terminate(); p.wait()
    lat.sort()
    q = lambda x: lat[min(len(lat) - 1, int(x * len(lat)))]
    return statistics.median(lat), q(0.95), lat[0], lat[-1]

for r in range(rounds):
    pm, line = predict()
    print(f"round {r}: predict per image {pm:.1f} ms ({line})", flush=True)
    p50, p95, lo, hi = watch()
    print(f"round {r}: watch close->line p50 {p50:.1f} ms, p95 {p95:.1f} ms (min {lo:.1f}, max {hi:.1f}); load {os.getloadavg()[0]:.1f}", flush=True)
