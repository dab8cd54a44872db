#!/usr/bin/env bash
# The numbers of docs/results/mvtec-mini/calibration.md: the threshold calibrated on held-out
# images only (`--calibration-folds 0`, the calibration before cross-fitting) against 5-fold
# cross-fitting (the default), on the four mvtec-mini products learned together with the default
# method. Per product: the threshold, the share of good test images flagged (false alarms) and
# of defective ones flagged (recall), from `iuf eval --out`. Usage, from the repository root
# after `cargo build -p iuf-cli` (or a workspace test build):
#   bash xtask/scripts/calibration_folds.sh [WORK]     (WORK defaults to target/calibration-folds)
set -euo pipefail
IUF=${IUF:-target/debug/iuf}
WORK=${1:-target/calibration-folds}
DATA=../shared/datasets/mvtec-mini
CLASSES=bottle,pill,tire,magnetic_tile
W=../shared/weights/efficientnet-lite0/efficientnet-lite0-57934424.pth
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
G=(--weights "$W" --cache-dir "$WORK/cache")
mkdir -p "$WORK"

for k in 0 5; do
  if [ ! -f "$WORK/eval-$k.json" ]; then
    /usr/bin/time -f "folds $k: train %e s wall" \
      "$IUF" "${G[@]}" train --data "$DATA" --classes "$CLASSES" --calibration-folds "$k" \
      --out "$WORK/folds-$k.safetensors" >/dev/null
    "$IUF" "${G[@]}" eval --model "$WORK/folds-$k.safetensors" --data "$DATA" \
      --out "$WORK/eval-$k.json" >/dev/null
  fi
done

python3 - "$WORK" <<'EOF'
import json, sys
work = sys.argv[1]
def classes(d):
    # eval's JSON: {"classes": [ClassMetrics...], ...} (or the list under another key).
    for v in d.values() if isinstance(d, dict) else []:
        if isinstance(v, list) and v and isinstance(v[0], dict) and "good_flagged" in v[0]:
            return v
    raise SystemExit("no per-class metrics in the eval output")
def recall(c):
    n = sum(b["images"] for b in c["by_defect"])
    k = sum(b["images"] * (b.get("recall") or 0.0) for b in c["by_defect"])
    return k / max(n, 1), n
rows = {k: {c["class"]: c for c in classes(json.load(open(f"{work}/eval-{k}.json")))} for k in (0, 5)}
print("| product | good test images | false alarms, held out only | false alarms, 5 folds | recall, held out only | recall, 5 folds |")
print("|---|---:|---:|---:|---:|---:|")
tot = {0: [0, 0, 0, 0], 5: [0, 0, 0, 0]}
for name in rows[0]:
    cells = []
    good = rows[0][name]["images"] - rows[0][name]["anomalous"]
    for k in (0, 5):
        c = rows[k][name]
        fa = c.get("good_flagged")
        r, n = recall(c)
        tot[k][0] += round((fa or 0) * good); tot[k][1] += good
        tot[k][2] += round(r * n); tot[k][3] += n
        cells.append((fa, r, n))
    f = lambda x: "-" if x is None else f"{100 * x:.1f} %"
    print(f"| {name} | {good} | {f(cells[0][0])} | {f(cells[1][0])} | {f(cells[0][1])} | {f(cells[1][1])} |")
a, b = tot[0], tot[5]
print(f"| all | {a[1]} | {a[0]}/{a[1]} = {100*a[0]/a[1]:.1f} % | {b[0]}/{b[1]} = {100*b[0]/b[1]:.1f} % "
      f"| {a[2]}/{a[3]} = {100*a[2]/a[3]:.1f} % | {b[2]}/{b[3]} = {100*b[2]/b[3]:.1f} % |")
EOF
