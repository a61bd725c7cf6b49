#!/usr/bin/env bash
# The prepared GPU check (issue 17), one command on a GPU machine, under ~9 minutes in all:
#   (a) training throughput at the paper's scale, float32 / bf16 / fp16 autocast, from a
#       synthetic HDF5 store dropped from the page cache before each part
#       (python -m benchmarks.train --paper: results train-<device>.json|md);
#   (c) the stages on CUDA on a small synthetic project: train under torchrun
#       (--nproc_per_node 1), then finetune and evaluate once each;
#   (d) an NCCL + DistributedDataParallel probe at world size 1 (train() itself skips the
#       process group and the DDP wrapper when WORLD_SIZE is 1);
#   (b) the GPU tests: python -m pytest -m gpu (they skip themselves without ffmpeg).
# Run from anywhere: bash benchmarks/gpu_check.sh. Everything goes to $OUT (default
# /tmp/avl-gpu-check), at most 8 files: check.log (every line, timestamped), summary.txt (one
# line per part), env.txt, train-<device>.json|md, stages.txt, pytest-gpu.txt. Settings
# (environment variables): TOTAL_S (wall-clock budget, 530), DEVICE (cuda), MODEL (paper),
# STEPS / WARMUP / BUDGET_S (timed and warm-up steps, seconds per precision), N / M (videos per
# batch, windows per video), VIDEO_S (seconds per synthetic video), LOADER_BATCHES,
# DROP_CACHES (1: drop the store from the page cache before each part; 0: leave it),
# SMOKE_MODEL (the stages' model), WORK (scratch folder on a real disk, not tmpfs: default
# .gpu-check-work in the repository), PY (the Python; default .venv's when it imports torch,
# else python3), BENCH_EXTRA (more benchmark options). Wheels in .whl/ are installed first.
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/avl-gpu-check}
WORK=${WORK:-$PWD/.gpu-check-work}
TOTAL_S=${TOTAL_S:-530}
DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-paper}
SMOKE_MODEL=${SMOKE_MODEL:-$MODEL}
STEPS=${STEPS:-29}
WARMUP=${WARMUP:-3}
BUDGET_S=${BUDGET_S:-60}
N=${N:-128}
M=${M:-32}
VIDEO_S=${VIDEO_S:-300}
LOADER_BATCHES=${LOADER_BATCHES:-32}
BENCH_EXTRA=${BENCH_EXTRA:-}
DROP_CACHES=${DROP_CACHES:-1}
mkdir -p "$OUT" "$WORK"
for f in check.log summary.txt stages.txt pytest-gpu.txt; do : >"$OUT/$f"; done
START=$SECONDS
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=5 AVL_LOG_LEVEL=${AVL_LOG_LEVEL:-INFO}

log() { printf '%(%Y-%m-%dT%H:%M:%S)T %s\n' -1 "$*" | tee -a "$OUT/check.log"; }
stamp() {   # every line timestamped, into check.log and the part's file (- for none)
    local line dest=/dev/null
    [ "$1" != - ] && dest=$OUT/$1
    while IFS= read -r line; do printf '%(%H:%M:%S)T %s\n' -1 "$line"; done |
        tee -a "$OUT/check.log" >>"$dest"
}
# part NAME CAP_S FILE CMD...: CMD (a program) under timeout, never past the budget's end
part() {
    local name=$1 cap=$2 file=$3 t rc t0
    shift 3
    t=$((TOTAL_S - (SECONDS - START) - 15))   # timeout -k 10: ends within the budget
    ((t > cap)) && t=$cap
    if ((t < 5)); then
        log "== $name: skipped, the budget is spent"
        echo "$name: skipped (budget spent)" >>"$OUT/summary.txt"
        return 1
    fi
    log "== $name (timeout ${t} s): $*"
    t0=$SECONDS
    timeout -k 10 "$t" "$@" 2>&1 | stamp "$file"
    rc=${PIPESTATUS[0]}
    log "== $name: exit $rc after $((SECONDS - t0)) s"
    local why=""
    ((rc == 124 || rc == 137)) && why=" (timed out)"
    echo "$name: exit $rc, $((SECONDS - t0)) s$why" >>"$OUT/summary.txt"
    return "$rc"
}

# --- the Python: the repository's venv when it runs here, else the machine's python3
if [ -z "${PY:-}" ]; then
    if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch, h5py' 2>/dev/null; then
        PY=$PWD/.venv/bin/python
    else
        PY=python3
    fi
fi
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/avl-site .whl/*.whl && export PYTHONPATH=/tmp/avl-site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
log "gpu_check: PY=$PY DEVICE=$DEVICE MODEL=$MODEL OUT=$OUT WORK=$WORK TOTAL_S=$TOTAL_S"

# --- the machine
{
    date -u
    uname -a
    nproc
    free -g
    df -hT "$WORK" /tmp
    command -v nvidia-smi >/dev/null && nvidia-smi
    command -v ffmpeg || echo "no ffmpeg (the GPU extraction tests skip themselves)"
    "$PY" - <<'EOF'
import importlib, sys
import torch
print(sys.version)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available",
      torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available()
      else "")
for name in ("h5py", "pyarrow", "numpy", "yaml", "click", "tqdm", "matplotlib", "pytest"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as e:  # noqa: BLE001 - a report, not a check
        print(name, "MISSING", type(e).__name__, e)
EOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt" >>"$OUT/check.log"

# --- (a) the training benchmark: one epoch covers warm-up and timed steps, so the store holds
# N * (WARMUP + STEPS) videos; fewer steps when the disk is short (10 GB kept free)
free_gb=$(df -P -B1G "$WORK" | awk 'NR == 2 {print $4}')
video_bytes=$((VIDEO_S * 18240))
fit=$(((free_gb - 10) * 1000000000 / video_bytes / N - WARMUP))
if ((fit < STEPS)); then
    log "only ${free_gb} GB free under $WORK: $fit timed steps instead of $STEPS"
    STEPS=$((fit < 1 ? 1 : fit))
fi
drop=()
((DROP_CACHES)) && drop=(--drop-caches)
# shellcheck disable=SC2086  # BENCH_EXTRA: options, split on purpose
part "a train benchmark" 330 - \
    "$PY" -m benchmarks.train --paper --device "$DEVICE" --model "$MODEL" --n "$N" --m "$M" \
    --seconds "$VIDEO_S" --steps "$STEPS" --warmup "$WARMUP" --budget-s "$BUDGET_S" \
    "${drop[@]}" --loader-batches "$LOADER_BATCHES" --store "$WORK/store" --results "$OUT" \
    $BENCH_EXTRA
rm -rf "$WORK/store"

# --- (c) the stages on a small project: torchrun train, finetune, evaluate
export P=$WORK/project PY DEVICE SMOKE_MODEL
rm -rf "$P"
stages() {
    set -e -o pipefail
    "$PY" -m benchmarks.train --make-project "$P" --model "$SMOKE_MODEL" --device "$DEVICE"
    "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m stages.train \
        --params "$P/params.yaml" --features "$P/features" --manifest "$P/manifest" \
        --out "$P/models/pretrain"
    "$PY" -m stages.finetune --dataset demo --params "$P/params.yaml" --features "$P/features" \
        --manifest "$P/manifest" --init "$P/models/pretrain/final.pt" \
        --out "$P/models/finetune-demo"
    "$PY" -m stages.evaluate --dataset demo --params "$P/params.yaml" --features "$P/features" \
        --manifest "$P/manifest" --models "$P/models" --out "$P/reports"
    for f in "$P/models/pretrain/log.jsonl" "$P/models/finetune-demo/log.jsonl" \
        "$P/reports/demo.md"; do
        echo "--- $f"
        cat "$f"
    done
}
export -f stages
part "c stages: torchrun train, finetune, evaluate" 150 stages.txt bash -c stages

# --- (d) NCCL and DDP at world size 1 (train() goes the plain way when WORLD_SIZE is 1)
cat >"$WORK/ddp_probe.py" <<'EOF'
import sys
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dnn
from torch import nn
from benchmarks.train import MODELS
from pipeline.learn.train import build_loss, build_model, setup_distributed
d = setup_distributed(sys.argv[1])
dist.init_process_group("nccl" if d.device.type == "cuda" else "gloo")
model = build_model(MODELS[sys.argv[2]]).to(d.device)
net = nn.parallel.DistributedDataParallel(
    model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
spec = torch.randn(16, 40, 1000, device=d.device) * 20 - 40
nframes = torch.full((16,), 1000, device=d.device)
video = torch.rand(16, 4096, device=d.device)
for step in range(3):
    with torch.autocast(d.device.type, torch.bfloat16):
        a, v = net(spec, nframes, video)
        a, v = (torch.cat(dnn.all_gather(x.float()), 0) for x in (a, v))
        loss = build_loss(MODELS[sys.argv[2]])(a, v)
    opt.zero_grad()
    loss.backward()
    opt.step()
    print(f"rank {dist.get_rank()} of {dist.get_world_size()} ({dist.get_backend()}) step "
          f"{step}: loss {loss.item():.4f}")
dist.barrier()
dist.destroy_process_group()
print("DDP OK")
EOF
part "d NCCL + DDP probe" 60 stages.txt \
    "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 "$WORK/ddp_probe.py" \
    "$DEVICE" "$SMOKE_MODEL"

# --- (b) the GPU tests
mapfile -t gpu_tests < <(grep -l "pytest.mark.gpu" tests/test_*.py)
part "b pytest -m gpu" 90 pytest-gpu.txt \
    "$PY" -m pytest -m gpu -q -p no:cacheprovider "${gpu_tests[@]}"

rm -rf "$P"
log "gpu_check done in $((SECONDS - START)) s"
cat "$OUT/summary.txt"
