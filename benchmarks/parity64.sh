#!/usr/bin/env bash
# The paper's parity setting: sequences of length 64, CTM against the LSTM baseline at ticks 1 to 100, each
# run with the same wall-clock budget of training (benchmarks/parity.py), on a GPU. 12 runs of BUDGET_S
# seconds plus their calibrations and evaluations: about 12 x (BUDGET_S + 30) seconds in all.
#
# On the device machine (the repository, with a PyTorch that sees the GPU):
#   OUT=/path/for/results bash benchmarks/parity64.sh
#   BUDGET_S=30 TICKS="1 25 100" OUT=... bash benchmarks/parity64.sh       # a shorter sweep
# A dry run anywhere (prints the commands): DRY_RUN=1 OUT=/tmp/p64 bash benchmarks/parity64.sh
# Flags after the script's name go to every `ctm train` (e.g. -- --batch-size 256).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder for the results}
DEVICE=${DEVICE:-cuda}
TICKS=${TICKS:-1 10 25 50 75 100}
BUDGET_S=${BUDGET_S:-60}
THREADS=${THREADS:-4}
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "no nvidia-smi"
    "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} > "$OUT/machine.txt"
# shellcheck disable=SC2086  # TICKS is a list of numbers
exec "$PY" benchmarks/parity.py --length 64 --ticks $TICKS --budget-s "$BUDGET_S" --device "$DEVICE" \
    --threads "$THREADS" --out "$OUT" ${DRY_RUN:+--dry-run} -- "$@"
