#!/usr/bin/env bash
# One prepared GPU run: install unsam, run the CUDA tests and the GPU benchmarks, write
# benchmarks-gpu.md (GPU name, commit, every figure beside its goal) into --out, and for a full
# CUDA run also to docs/benchmarks-gpu.md. Made to finish in
# <= 8 minutes on one H200; every step has its own time limit, a failed step is recorded and the
# run goes on, and --only reruns chosen steps (the report merges old and new results).
#
#   bash benchmarks/gpu.sh                         # on a CUDA machine: everything
#   bash benchmarks/gpu.sh --device cpu --quick    # the dry run on a CPU machine (CUDA tests skip)
#   bash benchmarks/gpu.sh --only train,report     # rerun some steps
#
# Options:
#   --device cuda|cpu   where the benchmarks run (default: cuda)
#   --quick             small inputs and one repeat (a dry run; the figures are not the goals')
#   --only A,B          steps to run (default: all): install tests cutler pipeline segment prompt
#                       train eval report
#   --python PY         the interpreter (default: python3; a venv's python works too)
#   --wheels DIR        wheels to install first, offline, --no-deps (pycocotools, faster-coco-eval
#                       and orjson where the machine's Python lacks them)
#   --data DIR          the shared data folder (default: $UNSAM_SHARED_DATA or ../shared/data)
#   --limit-scale N     multiply every step's time limit by N (default 1 on CUDA, 8 on the CPU,
#                       where the dry run's networks are 10-100x slower than on an H200)
#   --out DIR           where logs and results go (default: benchmarks/gpu-run; kept across
#                       runs so that --only merges). Where $OUT is set (the device tool), the run
#                       also packs them into $OUT/gpu-run.tgz beside $OUT/benchmarks-gpu.md.
#
# Environment: UNSAM_COMMIT names the commit when the tree has no .git (a copied working tree).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

DEVICE=cuda
QUICK=0
ONLY=""
PY=python3
WHEELS=""
DATA="${UNSAM_SHARED_DATA:-$REPO/../shared/data}"
OUTDIR="$REPO/benchmarks/gpu-run"
LIMIT_SCALE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --only) ONLY="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --out) OUTDIR="$2"; shift 2 ;;
    --limit-scale) LIMIT_SCALE="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/{/^#/p}' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cuda:*|cpu) ;; *) echo "gpu.sh: --device cuda|cpu, got $DEVICE" >&2; exit 2 ;; esac
if [ -z "$LIMIT_SCALE" ]; then
  if [ "$DEVICE" = cpu ]; then LIMIT_SCALE=8; else LIMIT_SCALE=1; fi
fi
PIPE=()  # the CPU dry run times bf16 only (fp32 at 512 px costs minutes on 2 cores)
[ "$DEVICE" = cpu ] && [ "$QUICK" = 1 ] && PIPE=(--variants bf16)

mkdir -p "$OUTDIR/logs" "$OUTDIR/results"
OUTDIR=$(cd "$OUTDIR" && pwd)
STEPS="$OUTDIR/logs/steps.tsv"
[ -f "$STEPS" ] || printf 'step\tstatus\tseconds\n' > "$STEPS"
export UNSAM_BENCH_RESULTS="$OUTDIR/results"
export UNSAM_SHARED_DATA="$DATA"
export PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false
if [ -z "${UNSAM_COMMIT:-}" ]; then
  UNSAM_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
fi
export UNSAM_COMMIT
Q=()
[ "$QUICK" = 1 ] && Q=(--quick)

want() {  # is step $1 selected?
  [ -z "$ONLY" ] && return 0
  case ",$ONLY," in *",$1,"*) return 0 ;; esac
  return 1
}

step() {  # step NAME LIMIT_SECONDS COMMAND...: run, log, record status and time
  local name=$1 limit=$(( $2 * LIMIT_SCALE ))
  shift 2
  want "$name" || return 0
  echo "== $name (limit ${limit}s): $*"
  local t0 rc
  t0=$(date +%s.%N)
  # bash -c: a step may be one of this script's functions (exported below)
  timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" > "$OUTDIR/logs/$name.log" 2>&1
  rc=$?
  local secs
  secs=$(python3 -c "import time; print(round(time.time() - $t0, 1))" 2>/dev/null || echo "?")
  local status=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    status="timeout after ${limit}s"
  elif [ $rc -ne 0 ]; then
    status="failed (exit $rc)"
  fi
  [ "$status" = ok ] || FAILED="$FAILED $name"
  printf '%s\t%s\t%s\n' "$name" "$status" "$secs" >> "$STEPS"
  echo "   $status in ${secs}s; last lines:"
  tail -n 4 "$OUTDIR/logs/$name.log" | sed 's/^/   | /'
}

install() {
  if [ -n "$WHEELS" ] && ls "$WHEELS"/*.whl > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/unsam-site "$WHEELS"/*.whl || return 1
  fi
  # unsam itself without its pins: the GPU machine's own CUDA torch and transformers stay
  "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
    || echo "pip install -e . failed; using PYTHONPATH=src"
  "$PY" -m pip list 2>/dev/null > "$OUTDIR/logs/pip-list.txt"
  "$PY" - <<'EOF'
import importlib, torch
import unsam
for name in ("transformers", "pycocotools", "faster_coco_eval", "scipy", "skimage", "cv2"):
    mod = importlib.import_module(name)
    print(name, getattr(mod, "__version__", "?"))
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
print("unsam", unsam.__version__, unsam.__file__)
EOF
}

# unsam eval on the stored 130k masks (felzenszwalb_coco.json[.gz] in --data or the results
# folder; without them eval_speed makes them with the baseline, which takes minutes)
eval_step() {
  local pred="$OUTDIR/felzenszwalb_coco.json"
  if [ ! -f "$pred" ]; then
    if [ -f "$DATA/felzenszwalb_coco.json.gz" ]; then
      gunzip -c "$DATA/felzenszwalb_coco.json.gz" > "$pred.tmp" && mv "$pred.tmp" "$pred"
    elif [ -f "$DATA/felzenszwalb_coco.json" ]; then
      pred="$DATA/felzenszwalb_coco.json"
    fi
  fi
  "$PY" benchmarks/eval_speed.py --gt "$DATA/coco/instances.json" --pred "$pred" --repeats 1
}
export PYTHONPATH="/tmp/unsam-site:$REPO/src:$REPO${PYTHONPATH:+:$PYTHONPATH}"
T_ALL=$(date +%s)
FAILED=""
echo "unsam gpu.sh: device $DEVICE, quick $QUICK, commit $UNSAM_COMMIT, out $OUTDIR, data $DATA"

# Time limits (seconds) sum to 470: the whole run fits the 8 minutes of the GPU issue, with the
# machine's start outside them. A step that runs over is killed, recorded, and the run goes on.
export PY WHEELS DATA OUTDIR
export -f install eval_step
TIMEOUT=()  # pytest-timeout, where the machine's Python has it (the GPU machine may not)
"$PY" -c "import pytest_timeout" 2>/dev/null && TIMEOUT=(--timeout 60)
step install 60 install
# The CUDA tests: every test marked gpu (each network on CUDA against the CPU, bf16 on CUDA,
# one step of each trainer, torchrun with NCCL); they skip with a reason where CUDA is absent.
step tests 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider -o addopts="" -rs \
  "${TIMEOUT[@]}" --junitxml "$OUTDIR/logs/tests.xml" tests
step cutler 30 "$PY" benchmarks/cutler_speed.py --device "$DEVICE" "${Q[@]}"
step pipeline 90 "$PY" benchmarks/released_pipeline_speed.py --device "$DEVICE" --cascadepsp both \
  "${PIPE[@]}" "${Q[@]}"
step segment 45 "$PY" benchmarks/segment_speed.py --device "$DEVICE" "${Q[@]}"
step prompt 25 "$PY" benchmarks/prompt_speed.py --device "$DEVICE" "${Q[@]}"
step train 35 "$PY" benchmarks/train_speed.py --device "$DEVICE" "${Q[@]}"
step eval 25 eval_step
# The page goes to $OUTDIR; a full CUDA run also puts it at docs/benchmarks-gpu.md (a dry run
# never replaces the measured page).
step report 10 "$PY" benchmarks/gpu_report.py --results "$OUTDIR/results" --steps "$STEPS" \
  --tests "$OUTDIR/logs/tests.xml" --device "$DEVICE" --quick "$QUICK" -o "$OUTDIR/benchmarks-gpu.md"
if [ "$QUICK" = 0 ] && [ "$DEVICE" != cpu ] && [ -f "$OUTDIR/benchmarks-gpu.md" ]; then
  cp "$OUTDIR/benchmarks-gpu.md" docs/benchmarks-gpu.md
fi
echo "gpu.sh: $(( $(date +%s) - T_ALL )) s in all; steps (latest last):"
column -t -s $'\t' "$STEPS" 2>/dev/null || cat "$STEPS"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then  # the device tool brings back <= 8 files
  tar czf "$OUT/gpu-run.tgz" -C "$OUTDIR" . && cp "$STEPS" "$OUT/steps.tsv"
  [ -f "$OUTDIR/benchmarks-gpu.md" ] && cp "$OUTDIR/benchmarks-gpu.md" "$OUT/benchmarks-gpu.md"
fi
if [ -n "$FAILED" ]; then
  echo "gpu.sh: failed steps:$FAILED"
  exit 1
fi
