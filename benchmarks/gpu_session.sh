#!/usr/bin/env bash
# One prepared GPU session: GPU benchmark, paper-sized simulation, one full-data DeepMerge DANN
# training, and a small DANN sensitivity sweep on the small set. Results land in $OUT.
# Carried: .whl (pure-Python/abi3 wheels for Python 3.12) and .gpusite (GalSim, debug symbols stripped).
set -u
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.gpusite:$PWD/src
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, galsim, hydra, pytorch_lightning as pl, galda; print('torch', torch.__version__, 'pl', pl.__version__, 'galsim', galsim.__version__)" | tee -a "$OUT/gpu.txt"
{ time timeout 200 python3 benchmarks/run.py --device cuda --on-device --no-sim --out "$OUT/bench_gpu.json" ; } > "$OUT/bench.log" 2>&1
tail -30 "$OUT/bench.log"
{ time timeout 120 python3 -m galda.simulate preset=paper seed=1 workers=16 out=/tmp/data/simulated/paper-seed1 progress=false ; } > "$OUT/sim.log" 2>&1
tail -8 "$OUT/sim.log"
{ time timeout 300 python3 -m galda.run data=paper paths.data_dir=/tmp/data method=dann trainer=gpu \
    data.on_device=true callbacks.progress_bar=null logger=csv hydra.run.dir=/tmp/run_dann_paper ; } > "$OUT/dann_paper.log" 2>&1
tail -25 "$OUT/dann_paper.log"
cp /tmp/run_dann_paper/results.json "$OUT/dann_paper_results.json" 2>/dev/null
cp /tmp/run_dann_paper/csv/metrics.csv "$OUT/dann_paper_metrics.csv" 2>/dev/null
echo done
# DANN sensitivity on the small set: schedule × discriminator learning rate, 2 seeds, 4 jobs at once
{ time timeout 150 python3 -m galda.simulate preset=small seed=1 workers=16 out=/tmp/data/simulated/small-seed1 progress=false ; } > "$OUT/sim_small.log" 2>&1
{ time timeout 240 python3 -m galda.run -m hydra/launcher=gpus hydra.launcher.n_jobs=4 paths.data_dir=/tmp/data \
    method=dann trainer=gpu data.on_device=true trainer.max_epochs=30 callbacks.progress_bar=null \
    method.module.schedule=ganin,constant method.module.discriminator_lr_mult=0.1,1.0 seed=1,2 \
    task_name=dann_sweep paths.log_dir=/tmp/sweep ; } > "$OUT/dann_sweep.log" 2>&1
tail -5 "$OUT/dann_sweep.log"
python3 - "$OUT" <<'PY'
import glob, json, sys
rows = []
for f in sorted(glob.glob("/tmp/sweep/multirun/dann_sweep/*/results.json")):
    r = json.load(open(f))
    rows.append({k: r.get(k) for k in ("status", "overrides", "seed", "best_epoch", "test/source/acc", "test/target/acc", "wall_time_s")})
json.dump(rows, open(sys.argv[1] + "/dann_sweep.json", "w"), indent=1)
for r in rows: print(r)
PY
