#!/usr/bin/env bash
# galda's GPU session: ONE command on one H100 (or H200), inside a hard wall-time budget.
#
# Phases, most important numbers first, each under its own timeout and all under BUDGET_S:
#   setup        install the carried wheels (.whl) + GalSim (.gpusite); print GPU / versions
#   sim_paper    simulate the `paper` preset (2 x 15,426 images) with 16 workers
#   paper_dm     Table 1, DeepMerge x {baseline, MMD, DANN} x seeds 1-10, packed JPG_DM jobs per GPU
#   report       Table 1 / Figure 1 (galda.report) of what exists so far
#   paper_r18    Table 1, ResNet18 x {baseline, MMD, DANN} x seeds 1-3, JPG_R18 jobs at once
#   report       again, with both networks
#   small        simulate `small`, then DeepMerge x METHODS_SMALL x 5 seeds, 30 epochs (the lead's runs)
#   bench        benchmarks/run.py --device cuda (package vs plain loop), called tolerantly
#   packing      benchmarks/packing.py: aggregate throughput of 1..12 processes on the GPU
# After every phase the per-run results.json, CSV logs, configs, predictions, phase logs and
# reports are packed into $OUT/session.tar.gz (checkpoints left out), and $OUT/summary.json is
# rewritten, so a cut-off session still returns what it finished. Files back in $OUT (<= 8):
# session.log, session.tar.gz, summary.json, table1.md, figure1.png, bench_gpu.json, packing.json.
#
# Epoch budget: a fixed number of epochs per run, shorter than the package default (60; the schedules
# are sized to whatever trainer.max_epochs is): 60 epochs x 39 paper-sized runs does not fit minutes. Sizing from the H200 runs (experiments/gpu_h200/): one paper-sized DeepMerge
# run alone took ~1.0 (baseline), 1.5 (DANN) and 1.8 (MMD) s/epoch (85 steps of 128 + 128 images,
# plus validation) and ~10 s of start-up; the package ran 59-108 DeepMerge and 42-62 ResNet18
# steps/s (bench_gpu.json); 4 DANN jobs at once on the small set ran ~128 steps/s together, 2.2x one
# job (dann_sweep.json). Assuming 8 packed DeepMerge jobs reach ~160 steps/s together (not measured
# yet: packing.py measures it), an epoch of all 30 runs costs 30 x 93 step-equivalents / 160 = ~17 s,
# so E = 8 epochs (680 optimiser steps, 1.4x a 30-epoch small-set run) -> ~140 s + start-up.
# ResNet18 (GPU ~15 % busy alone: ~0.3 TFLOP a step in 24 ms): 9 jobs at once at ~3x one job
# (~130 steps/s) -> 9 x 10 x 93 / 130 = ~65 s + start-up. The H100 should match the H200 here:
# both steps are bound by kernel launches and Python (16 cores each), not by memory bandwidth.
#
# Measured on one H100 (session 3, experiments/table1_paper_h100/): setup 30 s, sim_paper 94 s,
# paper_dm 23 of 30 runs in 192 s (47-53 s each, 8 packed, 1.1 epochs/s together: packing 8
# processes on one GPU gains little over one job, ~93 vs 72-124 steps/s), ResNet18 baselines 91 s
# each with 9 packed. Hence the limits of 240 s and 170 s above: the Table 1 grid alone then needs
# ~560 s, so run it alone (T_SIM_SMALL=0 T_SMALL=0 T_HPO=0 T_BENCH=0 T_PACK=0 BUDGET_S=585) and
# the bench, study and packing in a second call.
# Earlier estimates (session 2), kept for the record:
#   setup ~15 s | sim_paper ~80 s (79 s on the H200 machine) | paper_dm ~130-160 s |
#   report ~8 s | paper_r18 ~65-80 s | report ~8 s | small ~75 s (sim ~10 s + 15 runs in 2 waves) |
#   bench ~70 s (68 s on the H200) | packing ~45 s | archive ~5 s          => ~500-540 s
# If a phase runs long, later ones get less time or are skipped: BUDGET_S is never exceeded, and
# the timeouts are ~1.3-1.5x the estimates. Runs are ordered seed by seed, so a cut grid loses
# the last seeds, not a method.
#
# Run on the GPU machine, from the repository root, carrying .whl and .gpusite:
#   bash benchmarks/gpu_session.sh
# Dry run on a CPU (tiny data, 1 epoch, small budgets, an import blocker for the packages the GPU
# machine lacks), to check the logic end to end before spending GPU time:
#   DRY=1 PY=.venv/bin/python WHL_DIR=.whl bash benchmarks/gpu_session.sh
# Every knob below can be set from the environment, e.g. EPOCHS_DM=12 METHODS_SMALL=mmd,dann.
set -u

DRY=${DRY:-0}
PY=${PY:-python3}
WORK=${WORK:-/tmp/galda_gpu}
OUT=${OUT:-$WORK/out}
WHL_DIR=${WHL_DIR:-.whl}
GPUSITE=${GPUSITE:-.gpusite}

# ---- time budget (seconds) -------------------------------------------------------------------
BUDGET_S=${BUDGET_S:-540}        # hard wall time of the whole script
RESERVE_S=${RESERVE_S:-25}       # kept back for the final report + archive
MIN_PHASE_S=${MIN_PHASE_S:-20}   # a phase with less time than this left is skipped
T_SETUP=${T_SETUP:-60}
T_SIM_PAPER=${T_SIM_PAPER:-130}
T_PAPER_DM=${T_PAPER_DM:-240}
T_PAPER_R18=${T_PAPER_R18:-170}
T_SIM_SMALL=${T_SIM_SMALL:-40}
T_SMALL=${T_SMALL:-90}
T_BENCH=${T_BENCH:-90}
T_PACK=${T_PACK:-60}
T_REPORT=${T_REPORT:-30}
T_HPO=${T_HPO:-150}
T_BEST=${T_BEST:-75}

# ---- the runs ---------------------------------------------------------------------------------
METHODS=${METHODS:-baseline,mmd,dann}
METHODS_SMALL=${METHODS_SMALL:-baseline,mmd,dann}
SMALL_EXTRA=${SMALL_EXTRA:-}                     # extra overrides for the small-set runs
SEEDS_DM=${SEEDS_DM:-range(1,11)}
SEEDS_R18=${SEEDS_R18:-range(1,4)}
SEEDS_SMALL=${SEEDS_SMALL:-range(1,6)}
EPOCHS_DM=${EPOCHS_DM:-8}
EPOCHS_R18=${EPOCHS_R18:-10}
EPOCHS_SMALL=${EPOCHS_SMALL:-30}
JPG_DM=${JPG_DM:-8}        # jobs per GPU: 30 DeepMerge runs in ~4 waves
JPG_R18=${JPG_R18:-9}      # all 9 ResNet18 runs at once (~5 GB of GPU memory each)
JPG_SMALL=${JPG_SMALL:-5}
SIM_WORKERS=${SIM_WORKERS:-16}
BENCH_REPEATS=${BENCH_REPEATS:-2}
PACK_COUNTS=${PACK_COUNTS:-1,2,4,6,8,12}
PACK_SECONDS=${PACK_SECONDS:-4}
HPO_TRIALS=${HPO_TRIALS:-20}     # the label-free DANN study (experiment=hpo_dann, objective IM)
HPO_JOBS=${HPO_JOBS:-10}         # trials launched together: 2 waves (TPE's 10 random start-up trials first)
BEST_METHODS=${BEST_METHODS:-mmd}  # run with the defaults beside DANN-with-the-study's-best, 5 seeds

PRESET_PAPER=paper; PRESET_SMALL=small; MODEL_DM=deepmerge; MODEL_R18=resnet18
COMMON=(trainer=gpu data.on_device=true callbacks.progress_bar=null)
BENCH_DEVICE=cuda; PACK_ARGS=(--device cuda)
if [ "$DRY" = 1 ]; then
  WORK=${WORK_DRY:-/tmp/galda_gpu_dry}; OUT=${OUT_DRY:-$WORK/out}
  PRESET_PAPER=tiny; PRESET_SMALL=tiny; SIM_WORKERS=2
  SEEDS_DM=range\(1,3\); SEEDS_R18=range\(1,2\); SEEDS_SMALL=range\(1,3\)
  EPOCHS_DM=1; EPOCHS_R18=1; EPOCHS_SMALL=1
  COMMON=(trainer=cpu callbacks.progress_bar=null)
  BENCH_DEVICE=cpu; PACK_ARGS=(--device cpu --batch 16 --images 64 --warmup 2)
  PACK_COUNTS=1,2; PACK_SECONDS=1; HPO_TRIALS=2; HPO_JOBS=2
fi
DATA=$WORK/data; LOGS=$WORK/outputs; LOGDIR=$WORK/logs; REPORTS=$WORK/reports; BENCHDIR=$WORK/bench
DATA_PAPER=$PRESET_PAPER; DATA_SMALL=$PRESET_SMALL   # data config names equal the presets
rm -rf "$LOGS" "$LOGDIR" "$REPORTS" "$BENCHDIR"   # data is kept: a rerun reuses the simulation
mkdir -p "$OUT" "$DATA" "$LOGS" "$LOGDIR" "$REPORTS" "$BENCHDIR"
for f in session.log session.tar.gz summary.json table1.md figure1.png bench_gpu.json packing.json; do
  rm -f "${OUT:?}/$f"
done
command -v setsid > /dev/null || setsid() { "$@"; }   # without it only the timeout's child is cut
exec > >(tee -a "$OUT/session.log") 2>&1
TEE_PID=$!
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HYDRA_FULL_ERROR=1 OMP_WAIT_POLICY=PASSIVE
START=$(date +%s); DEADLINE=$((START + BUDGET_S))
PHASES=$WORK/phases.jsonl; : > "$PHASES"
FAILED=0

now() { date +%s; }
left() { echo $((DEADLINE - $(now))); }
record() {  # record NAME RC SECONDS BUDGET
  printf '{"phase": "%s", "rc": %s, "seconds": %s, "budget_s": %s, "at_s": %s}\n' \
    "$1" "$2" "$3" "$4" "$(($(now) - START))" >> "$PHASES"
}

PG=""   # process group of the phase running now
kill_group() {
  if [ -n "$PG" ]; then
    kill -TERM -- "-$PG" 2>/dev/null && sleep 2
    kill -KILL -- "-$PG" 2>/dev/null
    PG=""
  fi
}
trap 'kill_group; exit 143' TERM INT

# phase NAME BUDGET CMD...: run CMD in its own process group (so Hydra's joblib workers go too)
# under timeout min(BUDGET, time left - RESERVE_S); output in $LOGDIR/NAME.log.
phase() {
  local name=$1 budget=$2 reserve=${RESERVE:-$RESERVE_S} min=${MIN:-$MIN_PHASE_S}; shift 2
  local avail=$(( $(left) - reserve ))
  (( budget > avail )) && budget=$avail
  if (( budget < min )); then
    echo "=== $name: skipped, $(left)s left"; record "$name" '"skipped"' 0 "$budget"; FAILED=1
    return 125
  fi
  echo "=== $name: budget ${budget}s, $(left)s left, $(date -u +%H:%M:%S)"
  local t0; t0=$(now)
  setsid timeout -k 5 "$budget" "$@" > "$LOGDIR/$name.log" 2>&1 &
  PG=$!
  wait "$PG"; local rc=$?
  kill_group
  tail -n "${TAIL:-12}" "$LOGDIR/$name.log" | cut -c1-240
  echo "=== $name: rc=$rc in $(( $(now) - t0 ))s"
  record "$name" "$rc" "$(( $(now) - t0 ))" "$budget"
  (( rc != 0 )) && FAILED=1
  return $rc
}

archive() {  # results, logs and reports of everything so far -> $OUT/session.tar.gz (< 16 MiB)
  local excl=(--exclude='*.ckpt' --exclude='.submitit')
  tar czf "$OUT/.session.tar.gz" "${excl[@]}" -C "$WORK" outputs logs reports bench \
    phases.jsonl versions.json 2>/dev/null
  if [ "$(stat -c %s "$OUT/.session.tar.gz")" -gt 15000000 ]; then
    tar czf "$OUT/.session.tar.gz" "${excl[@]}" --exclude='predictions.npz' -C "$WORK" outputs \
      logs reports bench phases.jsonl versions.json 2>/dev/null
  fi
  mv -f "$OUT/.session.tar.gz" "$OUT/session.tar.gz"
}

summary() {  # phase times + per-grid counts, accuracies, and achieved concurrency -> summary.json
  timeout 30 "$PY" - "$WORK" "$OUT/summary.json" "$BUDGET_S" "$(($(now) - START))" "${1:-}" <<'PY'
import glob, json, os, statistics, sys
work, out, budget, elapsed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
final = sys.argv[5] == "final"
phases = [json.loads(l) for l in open(os.path.join(work, "phases.jsonl")) if l.strip()]
try:
    versions = json.load(open(os.path.join(work, "versions.json")))
except (OSError, ValueError):
    versions = None
grids = {}
for task in sorted(glob.glob(os.path.join(work, "outputs", "multirun", "*"))):
    by_model = {}
    for f in glob.glob(os.path.join(task, "*", "results.json")):
        try:
            r = json.load(open(f))
        except ValueError:
            continue
        by_model.setdefault(str(r.get("model")), []).append(r)
    for model, runs in sorted(by_model.items()):  # one grid per network: its own phase
        done = [r for r in runs if r.get("status") == "complete"]
        rows = {}
        for r in done:
            rows.setdefault(str(r.get("method")), []).append(r)
        table = {}
        for method, rs in sorted(rows.items()):
            tgt = [r["test/target/acc"] for r in rs if r.get("test/target/acc") is not None]
            src = [r["test/source/acc"] for r in rs if r.get("test/source/acc") is not None]
            table[method] = {
                "n": len(rs), "seeds": sorted(r.get("seed") for r in rs),
                "target_acc_mean": round(statistics.mean(tgt), 4) if tgt else None,
                "source_acc_mean": round(statistics.mean(src), 4) if src else None,
                "epochs_run": sorted({r.get("epochs_run") for r in rs}),
                "wall_s_mean": round(statistics.mean(r.get("wall_time_s") or 0 for r in rs), 1)}
        timed = [r for r in done if r.get("started_at") and r.get("finished_at")]
        span = None
        if timed:
            span = max(r["finished_at"] for r in timed) - min(r["started_at"] for r in timed)
        busy = sum(r.get("wall_time_s") or 0 for r in timed)
        epochs = sum(r.get("epochs_run") or 0 for r in timed)
        grids[f"{os.path.basename(task)}/{model}"] = {
            "results": len(runs), "complete": len(done),
            "status": sorted({str(r.get("status")) for r in runs}),
            "errors": sorted({str(r.get("error"))[:200] for r in runs if r.get("error")}),
            "devices": sorted({str(r.get("device")) for r in done}),
            "span_s": round(span, 1) if span else None,
            "mean_concurrency": round(busy / span, 2) if span else None,  # jobs running, on average
            "epochs_per_s": round(epochs / span, 3) if span else None,    # all jobs together
            "rows": table}
summary = {"budget_s": budget, "elapsed_s": elapsed, "commit": os.environ.get("GALDA_COMMIT"),
           "versions": versions, "phases": phases, "grids": grids}
tmp = out + ".tmp"
json.dump(summary, open(tmp, "w"), indent=1)
os.replace(tmp, out)
if not final:
    sys.exit(0)
print("phase            rc       seconds  budget")
for p in phases:
    print(f"{p['phase']:16s} {str(p['rc']):8s} {p['seconds']:7d}  {p['budget_s']}")
for name, g in grids.items():
    print(f"{name}: {g['complete']}/{g['results']} complete, span {g['span_s']} s, "
          f"concurrency {g['mean_concurrency']}, {g['epochs_per_s']} epochs/s")
    for err in g["errors"][:3]:
        print(f"  error: {err}")
    for key, row in g["rows"].items():
        print(f"  {key:10s} n={row['n']:2d} target {row['target_acc_mean']} "
              f"source {row['source_acc_mean']} epochs {row['epochs_run']} {row['wall_s_mean']} s")
PY
}

checkpoint() { archive; summary "${1:-}"; }

have_data() { [ -f "$DATA/simulated/$1-seed1/source.h5" ] && [ -f "$DATA/simulated/$1-seed1/target.h5" ]; }

# ---- setup --------------------------------------------------------------------------------------
echo "=== setup: $(date -u +%FT%TZ), DRY=$DRY, budget ${BUDGET_S}s, work $WORK"
SITE=$WORK/site
if compgen -G "$WHL_DIR/*.whl" > /dev/null; then
  rm -rf "$SITE"
  timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHL_DIR"/*.whl || { echo "wheel install failed"; FAILED=1; }
else
  echo "no wheels in $WHL_DIR: using the packages already installed"
fi
if [ "$DRY" = 1 ]; then
  # emulate the GPU machine: these packages are not there (and not carried)
  mkdir -p "$WORK/block"
  cat > "$WORK/block/sitecustomize.py" <<'PY'
import sys
_ABSENT = {"wandb", "submitit", "skada"}  # optuna is carried in .whl
class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r} (absent on the GPU machine)")
        return None
sys.meta_path.insert(0, _Absent())
PY
  export PYTHONPATH=$WORK/block:$SITE:$PWD/src
else
  export PYTHONPATH=$SITE:$PWD/$GPUSITE:$PWD/src
fi
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
timeout "$T_SETUP" "$PY" - "$WORK/versions.json" <<'PY' || { echo "galda is not importable: stopping"; FAILED=1; }
import json, os, platform, sys
from importlib import metadata
import torch
import galsim, hydra, omegaconf, pytorch_lightning, torchmetrics  # noqa: F401  (all must import)
import galda.run, galda.train, galda.report, galda.simulate  # noqa: F401
v = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
     "cores": len(os.sched_getaffinity(0)), "gpus": torch.cuda.device_count(),
     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
     "wandb_loaded": "wandb" in sys.modules}
for name in ("pytorch-lightning", "torchmetrics", "hydra-core", "omegaconf", "galsim", "astropy",
             "numpy", "h5py", "joblib", "hydra-joblib-launcher"):
    try:
        v[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        v[name] = None
json.dump(v, open(sys.argv[1], "w"), indent=1)
print(" ".join(f"{k}={val}" for k, val in v.items()))
PY
if [ ! -s "$WORK/versions.json" ]; then checkpoint; exec 1>&- 2>&-; wait "$TEE_PID"; exit 3; fi
record setup 0 "$(($(now) - START))" "$T_SETUP"

# ---- paper-sized Table 1 ------------------------------------------------------------------------
phase sim_paper "$T_SIM_PAPER" "$PY" -m galda.simulate --preset "$PRESET_PAPER" --seed 1 \
  --workers "$SIM_WORKERS" --out "$DATA/simulated/$PRESET_PAPER-seed1" --no-progress
GRID=(-m galda.run -m hydra/launcher=gpus "paths.data_dir=$DATA" "paths.log_dir=$LOGS")
if have_data "$PRESET_PAPER"; then
  phase paper_dm "$T_PAPER_DM" "$PY" "${GRID[@]}" "jobs_per_gpu=$JPG_DM" task_name=table1_gpu \
    "data=$DATA_PAPER" "model=$MODEL_DM" "seed=$SEEDS_DM" "method=$METHODS" \
    "trainer.max_epochs=$EPOCHS_DM" "${COMMON[@]}"
  checkpoint
  # the reports only where a grid phase ran (a bench-only call skips both)
  [ -d "$LOGS/multirun/table1_gpu" ] && MIN=8 RESERVE=5 phase report_dm "$T_REPORT" "$PY" \
    -m galda.report "$LOGS/multirun/table1_gpu" --out "$REPORTS/table1_gpu" --paper
  phase paper_r18 "$T_PAPER_R18" "$PY" "${GRID[@]}" "jobs_per_gpu=$JPG_R18" task_name=table1_gpu \
    "data=$DATA_PAPER" "model=$MODEL_R18" "seed=$SEEDS_R18" "method=$METHODS" \
    "trainer.max_epochs=$EPOCHS_R18" "${COMMON[@]}"
  [ -d "$LOGS/multirun/table1_gpu" ] && MIN=8 RESERVE=5 phase report_table1 "$T_REPORT" "$PY" \
    -m galda.report "$LOGS/multirun/table1_gpu" --out "$REPORTS/table1_gpu" --paper
  cp -f "$REPORTS/table1_gpu/table1.md" "$REPORTS/table1_gpu/figure1.png" "$OUT/" 2>/dev/null
  checkpoint
else
  echo "=== no paper-sized data: Table 1 phases skipped"; FAILED=1
fi

# ---- small set (the lead's experiments) -------------------------------------------------------
phase sim_small "$T_SIM_SMALL" "$PY" -m galda.simulate --preset "$PRESET_SMALL" --seed 1 \
  --workers "$SIM_WORKERS" --out "$DATA/simulated/$PRESET_SMALL-seed1" --no-progress
if have_data "$PRESET_SMALL"; then
  # shellcheck disable=SC2086  # SMALL_EXTRA is a list of overrides
  phase small "$T_SMALL" "$PY" "${GRID[@]}" "jobs_per_gpu=$JPG_SMALL" task_name=small_gpu \
    "data=$DATA_SMALL" "model=$MODEL_DM" "seed=$SEEDS_SMALL" "method=$METHODS_SMALL" \
    "trainer.max_epochs=$EPOCHS_SMALL" "${COMMON[@]}" $SMALL_EXTRA
  [ -d "$LOGS/multirun/small_gpu" ] && MIN=8 RESERVE=5 phase report_small "$T_REPORT" "$PY" \
    -m galda.report "$LOGS/multirun/small_gpu" --out "$REPORTS/small_gpu" --paper
fi
checkpoint

# ---- the label-free DANN study (issue 13) and its choice at 5 seeds (issue 12) -------------------
if [ "$T_HPO" -gt 0 ]; then
  if ! have_data "$PRESET_SMALL"; then
    phase sim_small2 "$T_SIM_SMALL" "$PY" -m galda.simulate --preset "$PRESET_SMALL" --seed 1 \
      --workers "$SIM_WORKERS" --out "$DATA/simulated/$PRESET_SMALL-seed1" --no-progress
  fi
  phase hpo "$T_HPO" "$PY" "${GRID[@]}" experiment=hpo_dann "jobs_per_gpu=$HPO_JOBS" \
    "hydra.sweeper.n_trials=$HPO_TRIALS" "hydra.sweeper.n_jobs=$HPO_JOBS" "data=$DATA_SMALL" \
    "model=$MODEL_DM" "trainer.max_epochs=$EPOCHS_SMALL" "${COMMON[@]}"
  MIN=8 RESERVE=5 phase report_hpo "$T_REPORT" "$PY" -m galda.report --validators \
    "$LOGS/multirun/hpo_dann" --out "$REPORTS/hpo_dann"
  BEST=$("$PY" - "$LOGS/multirun/hpo_dann/optimization_results.yaml" <<'PY'
import sys
import yaml
try:
    best = yaml.safe_load(open(sys.argv[1]))["best_trial"]["params"]
except (OSError, KeyError, TypeError):
    sys.exit(0)
# three significant digits: a default to write down, and job folder names of sane length
print(" ".join(f"{k}={float(f'{v:.3g}') if isinstance(v, float) else v}" for k, v in best.items()))
PY
)
  echo "=== study's best (objective IM, chosen without target labels): ${BEST:-none}"
  # DANN with the study's choice and BEST_METHODS with their defaults, 5 seeds each, side by side
  # (two sweeps at once, JPG_SMALL jobs each)
  B5=$WORK/best5.sh; : > "$B5"   # phase runs a command under timeout: the two sweeps go in a script
  if [ -n "$BEST" ]; then
    # shellcheck disable=SC2086  # BEST is a list of overrides
    printf '%q ' "$PY" "${GRID[@]}" "jobs_per_gpu=$JPG_SMALL" task_name=dann_hpo_best \
      "data=$DATA_SMALL" "model=$MODEL_DM" "seed=$SEEDS_SMALL" method=dann \
      "trainer.max_epochs=$EPOCHS_SMALL" "${COMMON[@]}" 'hydra.sweep.subdir=seed${seed}' $BEST >> "$B5"
    echo '&' >> "$B5"
  fi
  if [ -n "$BEST_METHODS" ]; then
    printf '%q ' "$PY" "${GRID[@]}" "jobs_per_gpu=$JPG_SMALL" task_name=defaults_small \
      "data=$DATA_SMALL" "model=$MODEL_DM" "seed=$SEEDS_SMALL" "method=$BEST_METHODS" \
      "trainer.max_epochs=$EPOCHS_SMALL" "${COMMON[@]}" >> "$B5"
    echo '&' >> "$B5"
  fi
  echo 'rc=0; for p in $(jobs -p); do wait "$p" || rc=$?; done; exit $rc' >> "$B5"
  phase best5 "$T_BEST" bash "$B5"
  checkpoint
fi

# ---- benchmarks -------------------------------------------------------------------------------
# benchmarks/run.py is being restructured: pass only the options it still has.
BENCH=(benchmarks/run.py --device "$BENCH_DEVICE" --out "$WORK/bench/bench_gpu.json")
has_opt() { grep -q -- "\"$1\"" benchmarks/run.py; }
if [ "$DRY" = 1 ]; then has_opt --quick && BENCH+=(--quick); BENCH+=(--models deepmerge); fi
has_opt --on-device && [ "$DRY" != 1 ] && BENCH+=(--on-device)
has_opt --no-sim && BENCH+=(--no-sim)
has_opt --skip && BENCH+=(--skip peers,out_of_core)   # CPU peer row and disk loader: minutes, not GPU work
has_opt --repeats && [ "$DRY" != 1 ] && BENCH+=(--repeats "$BENCH_REPEATS")
TAIL=40 phase bench "$T_BENCH" "$PY" "${BENCH[@]}"
cp -f "$WORK/bench/bench_gpu.json" "$OUT/" 2>/dev/null
checkpoint
TAIL=12 phase packing "$T_PACK" "$PY" benchmarks/packing.py "${PACK_ARGS[@]}" \
  --counts "$PACK_COUNTS" --seconds "$PACK_SECONDS" --out "$WORK/bench/packing.json"
cp -f "$WORK/bench/packing.json" "$OUT/" 2>/dev/null

checkpoint final
echo "=== done in $(($(now) - START))s (budget ${BUDGET_S}s); files in $OUT:"
ls -la "$OUT"
exec 1>&- 2>&-
wait "$TEE_PID" 2>/dev/null
exit "$FAILED"
