#!/usr/bin/env bash
# The GPU speed table in one go (under 10 minutes on one H200): ctm against the seed reference on the
# same GPU, eager and bfloat16 autocast at batch 64 to 4096, torch.compile at batch 1024, each
# variant first checked against the seed (outputs, loss, input gradient; TF32 off for the check), then
# a short MNIST training run on the GPU. Every stage has its own time limit and writes its result
# under $OUT as soon as it ends, so a stage that runs over still leaves the others' figures.
#
# Set-up (the device machine gets the repository only, with a PyTorch that sees the GPU):
#   mkdir -p .gpu && echo /.gpu/ >> .git/info/exclude
#   cp ../shared/reference/seed_ctm.py .gpu/
#   mkdir -p .gpu/mnist && cp ../shared/data/mnist/*-ubyte.gz .gpu/mnist/
# then run `bash benchmarks/gpu.sh` there with .gpu carried. A dry run on a CPU machine:
#   DEVICE=cpu BATCHES=4,8 COMPILE_BATCHES=4 TICKS=4 TRAIN_STEPS=20 OUT=/tmp/gpu-dry bash benchmarks/gpu.sh
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder for the results}
DEVICE=${DEVICE:-cuda}
BATCHES=${BATCHES:-64,256,1024,4096}
COMPILE_BATCHES=${COMPILE_BATCHES:-1024}
TICKS=${TICKS:-30}
TRAIN_STEPS=${TRAIN_STEPS:-1000}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export CTM_SEED_REFERENCE=${CTM_SEED_REFERENCE:-$PWD/.gpu/seed_ctm.py}

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "no nvidia-smi"
    "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
    for m in numpy tqdm safetensors matplotlib; do
        "$PY" -c "import $m; print('$m', $m.__version__)" 2>/dev/null || echo "$m missing"
    done
    gcc --version 2>/dev/null | head -n 1 || echo "no gcc (torch.compile needs a C++ compiler)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# What comes back from the device machine is at most 8 files: env.txt, NAME.json and NAME.log per stage,
# train.log and run/metrics.jsonl. The tables go to stdout. The JSON is written when a stage ends; a
# stage stopped by its limit leaves no JSON, but its log keeps every row finished so far.
stage() {  # stage NAME SECONDS ARGS...: one benchmark run, its JSON and its log under $OUT
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$PY" benchmarks/speed.py --device "$DEVICE" --ticks "$TICKS" --json "$@" \
        > "$OUT/$name.json" 2> "$OUT/$name.log"
    local rc=$?
    tail -n 3 "$OUT/$name.log"
    if [ $rc -eq 0 ]; then
        "$PY" -c "import json, sys; from ctm.bench import format_table; print(format_table(json.load(open(sys.argv[1]))))" \
            "$OUT/$name.json"
    else
        echo "$name stopped with exit code $rc (124: over its limit); rows finished:"
        grep "samples/s" "$OUT/$name.log"
        rm -f "$OUT/$name.json"
    fi
}

# Limits sum to 500 s of the device's 600 s per command. Each compiled row compiles anew (about a minute
# or two each); the check compiles once more, in train mode.
stage speed_eager 200 --batch-sizes "$BATCHES" --amp --repeats 5 --warmup 2
stage speed_compile 210 --batch-sizes "$COMPILE_BATCHES" --compile --repeats 5 --warmup 1

if [ -d .gpu/mnist ] || [ "$DEVICE" = cpu ]; then
    echo "== train ($TRAIN_STEPS steps)"
    data=()
    [ -d .gpu/mnist ] && data=(--data-dir .gpu/mnist)
    timeout 90 "$PY" -m ctm train --device "$DEVICE" --steps "$TRAIN_STEPS" --eval-every $((TRAIN_STEPS / 4)) \
        "${data[@]}" --no-progress --out "$OUT/run" > "$OUT/train.log" 2>&1
    echo "train exit code $?" >> "$OUT/train.log"
    tail -n 4 "$OUT/train.log"
    find "$OUT/run" -type f ! -name metrics.jsonl -delete 2>/dev/null
fi
