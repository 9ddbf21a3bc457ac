"""Speed of ctm against the seed tutorial's reference model, same weights, side by side in one process.

    python benchmarks/speed.py                 # train step and eval forward at batch 64 and 256
    python benchmarks/speed.py --compile --amp # also torch.compile and bfloat16 autocast rows
    python benchmarks/speed.py --quick --json  # a few seconds, machine-readable

The seed reference is the file named by --seed-reference PATH or $CTM_SEED_REFERENCE (the Makefile sets it
to ../shared/reference/seed_ctm.py next to the repository); without either, ctm is benchmarked alone. This
is `ctm bench` (ctm.cli.bench) under another name; the measuring code lives in ctm.measure.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from ctm.cli.bench import main
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from ctm.cli.bench import main

if __name__ == "__main__":
    sys.exit(main(prog="benchmarks/speed.py"))
