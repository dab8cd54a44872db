# 500 images through `iuf watch --mqtt`; the broker (mosquitto) is stopped in the middle of the
# run and started again 7 s later; a subscriber with a persistent session counts the results.
import glob, json, os, shutil, signal, socket, subprocess, sys, threading, time
import sys as _sys, pathlib as _pathlib
_sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent))
from common import IUF, SHARED, W, workdir_with_model  # noqa: E402

base = workdir_with_model()
N = int(sys.argv[1]) if len(sys.argv) > 1 else 500
srcs = sorted(glob.glob(f"{SHARED}/datasets/mvtec-mini/bottle/test/*/*.png")) + \
       sorted(glob.glob(f"{SHARED}/datasets/mvtec-mini/tire/test/*/*.png"))
cam, out, bdir = f"{base}/m-cam", f"{base}/m-out", f"{base}/m-broker"
for d in (cam, out, bdir): shutil.rmtree(d, ignore_errors=True)
os.makedirs(cam); os.makedirs(bdir)
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
open(f"{bdir}/m.conf", "w").write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                                  f"persistence_location {bdir}/\nuser {os.environ.get('USER', 'root')}\n")
def broker():
    b = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", f"{bdir}/m.conf"], stderr=subprocess.DEVNULL)
    while True:
        try: socket.create_connection(("127.0.0.1", port)).close(); return b
        except OSError: time.sleep(0.05)
b = broker()
sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-c", "-i", "sub500",
                        "-t", "line/#"], stdout=open(f"{base}/m-sub.log", "w"))
time.sleep(1)
g = ["--weights", W, "--cache-dir", f"{base}/cache", "--threads", "2"]
w = subprocess.Popen([IUF, *g, "--json", "watch", "--model", f"{base}/m.safetensors", "--in", cam, "--out", out,
                      "--mqtt", f"mqtt://127.0.0.1:{port}", "--mqtt-topic", "line"],
                     stdout=subprocess.DEVNULL, stderr=open(f"{base}/m-stderr.log", "w"))
time.sleep(3)
def drop():
    for i in range(N):
        with open(f"{cam}/{i:03d}.png", "wb") as f: f.write(open(srcs[i % len(srcs)], "rb").read())
        time.sleep(0.03)
t0 = time.time()
th = threading.Thread(target=drop); th.start()
def results():
    try: return sum(1 for _ in open(f"{out}/results.jsonl"))
    except FileNotFoundError: return 0
time.sleep(5); n = results()
b.send_signal(signal.SIGTERM); b.wait()
print(f"t={time.time()-t0:.1f}s: broker stopped with {n} results written", flush=True)
time.sleep(7)
b = broker()
print(f"t={time.time()-t0:.1f}s: broker started again with {results()} results written", flush=True)
th.join()
def ids():
    out_ = []
    for l in open(f"{base}/m-sub.log"):
        try: out_.append(json.loads(l)["id"])
        except Exception: pass
    return out_
while (results() < N or len(set(ids())) < N) and time.time() - t0 < 600:
    time.sleep(0.3)
got = ids()
print(f"t={time.time()-t0:.1f}s: {results()} results, subscriber got {len(got)} messages, "
      f"{len(set(got))} distinct ids, missing {sorted(set(f'watch:{i}' for i in range(N)) - set(got))[:10]}, "
      f"duplicates {len(got) - len(set(got))}", flush=True)
w.send_signal(signal.SIGTERM); w.wait(); sub.kill(); b.send_signal(signal.SIGTERM); b.wait()
print(open(f"{base}/m-stderr.log").read()[-600:])
for d in (cam, out, bdir): shutil.rmtree(d, ignore_errors=True)
