#!/usr/bin/env bash
# The numbers of docs/results/line/README.md: false alarms fixed with `iuf learn --more`, and the
# drift watch of `iuf serve`, on a two-lighting copy of mvtec-mini's bottle
# (xtask/scripts/lighting_more.py). Usage, from the repository root after
# `cargo build -p iuf-cli`:
#   bash xtask/scripts/lighting_more.sh [WORK]      (WORK defaults to target/lighting-more; deleted
#                                                   at the end unless KEEP=1)
set -euo pipefail
ROOT=$(pwd)
IUF=${IUF:-$ROOT/target/debug/iuf}
WORK=${1:-target/lighting-more}
W=../shared/weights/efficientnet-lite0/efficientnet-lite0-57934424.pth
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
G=(--weights "$W" --cache-dir "$WORK/cache")
[ -d "$WORK/L1" ] || python3 xtask/scripts/lighting_more.py ../shared/datasets/mvtec-mini "$WORK"

# Share of `predict --json` lines called defects, and their count.
fa() { python3 -c '
import json,sys
d=[json.loads(l) for l in open(sys.argv[1])]
k=sum(1 for x in d if x.get("decision")=="defect")
print(f"{100*k/len(d):.1f} % ({k}/{len(d)})")' "$1"; }
auroc() { python3 -c '
import json,sys
d=json.load(open(sys.argv[1]))
def find(o):
    if isinstance(o,dict):
        for k,v in o.items():
            if k in ("image_auroc","auroc_image") and isinstance(v,(int,float)): return v
            r=find(v)
            if r is not None: return r
    if isinstance(o,list):
        for v in o:
            r=find(v)
            if r is not None: return r
print(f"{100*find(d):.2f}")' "$1"; }

if [ "${DRIFT_ONLY:-0}" != 1 ]; then
echo "== learn lighting 1 (memory)"
"$IUF" "${G[@]}" train --data "$WORK/L1" --classes bottle --method memory --out "$WORK/m1.safetensors" >/dev/null
"$IUF" "${G[@]}" eval --model "$WORK/m1.safetensors" --data "$WORK/L1" --out "$WORK/eval1.json" >/dev/null
"$IUF" "${G[@]}" --no-feature-cache predict --model "$WORK/m1.safetensors" "$WORK/L2rest" --out "$WORK/p1-l2" >/dev/null 2>&1 || true
"$IUF" "${G[@]}" --no-feature-cache predict --model "$WORK/m1.safetensors" "$WORK/L1/bottle/test/good" --out "$WORK/p1-l1" >/dev/null 2>&1 || true
echo "== add 20 good images of lighting 2 (--more)"
/usr/bin/time -f "learn --more: %e s wall, %M KB peak" "$IUF" "${G[@]}" learn --model "$WORK/m1.safetensors" --data "$WORK/L2more" --classes bottle --more --out "$WORK/m2.safetensors"
"$IUF" "${G[@]}" eval --model "$WORK/m2.safetensors" --data "$WORK/L1" --out "$WORK/eval2.json" >/dev/null
"$IUF" "${G[@]}" --no-feature-cache predict --model "$WORK/m2.safetensors" "$WORK/L2rest" --out "$WORK/p2-l2" >/dev/null 2>&1 || true
"$IUF" "${G[@]}" --no-feature-cache predict --model "$WORK/m2.safetensors" "$WORK/L1/bottle/test/good" --out "$WORK/p2-l1" >/dev/null 2>&1 || true
echo "false alarms, lighting 2 (209 good not added): before $(fa "$WORK/p1-l2/predictions.jsonl"), after $(fa "$WORK/p2-l2/predictions.jsonl")"
echo "false alarms, lighting 1 test/good (20):       before $(fa "$WORK/p1-l1/predictions.jsonl"), after $(fa "$WORK/p2-l1/predictions.jsonl")"
echo "image AUROC, bottle test set (lighting 1):     before $(auroc "$WORK/eval1.json"), after $(auroc "$WORK/eval2.json")"
ls -l "$WORK/m1.safetensors" "$WORK/m2.safetensors" | awk '{print $5, $9}'

fi
echo "== drift: serve m1, 1000 lighting-1 images, then the lighting-2 stream"
"$IUF" "${G[@]}" serve --model "$WORK/m1.safetensors" --bind 127.0.0.1:0 2>"$WORK/serve.log" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 120); do grep -q "listening on" "$WORK/serve.log" 2>/dev/null && break; sleep 1; done
URL=$(grep -o "http://[0-9.:]*" "$WORK/serve.log" | head -1)
events() { curl -s "$URL/metrics" | awk '/^iuf_drift_events_total\{.*kind="drift"/ {s+=$2} END {print s+0}'; }
i=0
for f in "$WORK"/orig1000/*.png; do
  curl -s --data-binary @"$f" "$URL/v1/inspect" >/dev/null; i=$((i+1))
done
echo "lighting 1: $i images, drift warnings: $(events)"
curl -s "$URL/metrics" | grep -E "^iuf_drift_(score|rate|state)" || true
j=0; first=""
for f in "$WORK"/L2rest/*.png; do
  curl -s --data-binary @"$f" "$URL/v1/inspect" >/dev/null; j=$((j+1))
  if [ -z "$first" ] && [ "$(events)" -gt 0 ]; then first=$j; fi
  [ $j -ge 100 ] && break
done
echo "lighting 2: first drift warning at image ${first:-none} of the stream"
grep "drift:" "$WORK/serve.log" | head -3 || true
kill $PID; wait $PID 2>/dev/null || true
[ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
