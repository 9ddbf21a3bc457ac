"""Speed of ctm against the seed tutorial's reference model, same weights, side by side in one process.

    python benchmarks/speed.py                 # train step and eval forward at batch 64 and 256
    python benchmarks/speed.py --compile --amp # also torch.compile and bfloat16 autocast rows
    python benchmarks/speed.py --quick --json  # a few seconds, machine-readable

The seed reference is looked for at $CTM_SEED_REFERENCE, then ../shared/reference/seed_ctm.py next to
the repository (or pass --seed PATH); without it ctm is benchmarked alone. The measuring code lives in
ctm.bench (run_benchmark, format_table), so the `ctm` command can print the same table.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from ctm.bench import main
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from ctm.bench import main

if __name__ == "__main__":
    sys.exit(main())
