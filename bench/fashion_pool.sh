#!/usr/bin/env bash
# One fashion-mini job with the 2,048-photo pool (the default job plus the pool, as bench/results/pools.md ran it), with
# synthesis.pool_views=VIEWS, then its student on the SPLIT photos. Usage: bench/fashion_pool.sh SEED VIEWS SPLIT (the pool: python -m bench.export_images --world fashion --images 2048 --out runs/pools/fashion)
set -eu
mkdir -p runs/fashion-pool
seed=$1; views=$2; split=$3
out=runs/fashion-pool/v$views-s$seed
classes=$(.venv/bin/python -c "from bench.tasks import get_task; print(','.join(get_task('fashion10').class_texts))")
echo "{\"synthesis\": {\"pool_views\": $views}}" > runs/fashion-pool/views-$views.json
began=$(date +%s)
.venv/bin/python -m cli.main customize --teacher fashion-mini --classes "$classes" --seed "$seed" --pool runs/pools/fashion \
  --config runs/fashion-pool/views-$views.json --out "$out" --quiet --bank-dir runs/fashion-pool/banks
ended=$(date +%s)
.venv/bin/python -m cli.main bench student --onnx "$out/student.onnx" --task fashion10 --split "$split" --json > "$out/$split.json"
.venv/bin/python - "$out" "$split" "$views" "$seed" "$((ended - began))" <<'PY'
import json, sys
out, split, views, seed, seconds = sys.argv[1:]
score = json.load(open(f"{out}/{split}.json"))
metrics = json.load(open(f"{out}/metrics.json"))
print(json.dumps({"views": int(views), "seed": int(seed), "split": split, "seconds": int(seconds),
                  "student": score["student_onnx_accuracy"], "teacher": score["teacher_zero_shot_accuracy"],
                  "ratio": score["ratio"], "thin": [n for n, f in metrics["coverage"].items() if f["thin"]], "method": metrics.get("budget"), "agreement": metrics["pool"]["agreement"],
                  "pool_embeddings": metrics["pool_embeddings"]["status"], "stage_seconds": metrics["stage_seconds"]}))
PY
