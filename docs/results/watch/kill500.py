# 500 images dropped one at a time (half written in place, half renamed into place) while
# `iuf watch --sort move` is killed with SIGKILL three times and restarted; then every image
# must have exactly one result and be in exactly one sort folder.
import collections, glob, json, os, shutil, signal, subprocess, sys, threading, time
import sys as _sys, pathlib as _pathlib
_sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent))
from common import IUF, SHARED, W, workdir_with_model  # noqa: E402

base = workdir_with_model()
N = int(sys.argv[1]) if len(sys.argv) > 1 else 500
kills = [float(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "4,9,14").split(",")]
srcs = sorted(glob.glob(f"{SHARED}/datasets/mvtec-mini/bottle/test/*/*.png")) + \
       sorted(glob.glob(f"{SHARED}/datasets/mvtec-mini/tire/test/*/*.png"))
cam, out = f"{base}/k-cam", f"{base}/k-out"
for d in (cam, out): shutil.rmtree(d, ignore_errors=True)
os.makedirs(cam)
g = ["--weights", W, "--cache-dir", f"{base}/cache", "--threads", "2"]
def start():
    p = subprocess.Popen([IUF, *g, "--json", "watch", "--model", f"{base}/m.safetensors", "--in", cam,
                          "--out", out, "--sort", "move"], stdout=subprocess.DEVNULL,
                         stderr=open(f"{base}/k-stderr.log", "a"))
    return p
def drop():
    for i in range(N):
        data = open(srcs[i % len(srcs)], "rb").read()
        p = f"{cam}/{i:03d}.png"
        if i % 2:
            with open(p, "wb") as f: f.write(data)
        else:
            with open(f"{cam}/.{i:03d}.part", "wb") as f: f.write(data)
            os.rename(f"{cam}/.{i:03d}.part", p)
        time.sleep(0.03)
def lines():
    try: return open(f"{out}/results.jsonl").read().splitlines()
    except FileNotFoundError: return []
t0 = time.time()
p = start()
th = threading.Thread(target=drop); th.start()
for k in kills:
    time.sleep(max(0, t0 + k - time.time()))
    n = len(lines())
    p.send_signal(signal.SIGKILL); p.wait()
    print(f"t={time.time()-t0:.1f}s: kill -9 with {n} results written", flush=True)
    p = start()
th.join()
print(f"t={time.time()-t0:.1f}s: drop done", flush=True)
while len(lines()) < N and time.time() - t0 < 600:
    time.sleep(0.2)
time.sleep(1)
p.send_signal(signal.SIGTERM); p.wait()
res = [json.loads(l) for l in lines()]
names = collections.Counter(os.path.basename(r["path"]) for r in res)
twice = [n for n, c in names.items() if c > 1]
missing = [f"{i:03d}.png" for i in range(N) if f"{i:03d}.png" not in names]
sorted_ = sorted(os.listdir(f"{out}/ok") if os.path.isdir(f"{out}/ok") else []) + \
          sorted(os.listdir(f"{out}/defect") if os.path.isdir(f"{out}/defect") else [])
left = [f for f in os.listdir(cam) if not f.startswith(".")]
starts = sum(1 for l in open(f"{out}/watch-journal.jsonl") if l.startswith('{"start"'))
failed = sum(1 for r in res if "score" not in r)
print(f"t={time.time()-t0:.1f}s: {len(res)} results, {len(names)} distinct images, twice {twice}, "
      f"missing {missing}, failed {failed}; sorted {len(sorted_)} (distinct {len(set(sorted_))}), "
      f"left in --in {left}; journal start lines {starts} (inspections begun)")
shutil.rmtree(cam); shutil.rmtree(out)
