"""What each trick of the fast engine (`ctm.nn.engine`) buys, measured side by side in one process.

    python benchmarks/engine_tricks.py                  # seed sizes, batch 64, 30 ticks, 2 threads
    python benchmarks/engine_tricks.py --threads 1 --rounds 9
    python benchmarks/engine_tricks.py --rows "shipped|pairs"   # only the rows matching a regex

Every row swaps one trick for its plain alternative and times the same step, alternating with the engine
as it ships (round-robin, median of the rounds), so load from other processes hits all rows alike:
  train rows: forward + certainty loss + backward at --batch; eval rows: forward under inference_mode at
  --eval-batch. The ratio is the engine's time over the alternative's: 0.90 means the trick saves 10%.
Not a test: speed targets live here, correctness in tests/test_engine.py.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    import ctm
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import ctm
from ctm.nn import engine


@contextlib.contextmanager
def patched(obj, name: str, value) -> Iterator[None]:
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def public_glu_into(x, dim, out):
    out.copy_(F.glu(x, dim))


def private_layer_norm_backward(dy, x, mean, rstd, gamma):
    return torch.ops.aten.native_layer_norm_backward(dy, x, x.shape[-1:], mean, rstd, gamma, None,
                                                     (True, False, False))[0]


def private_softmax_backward_into(dw, w, out):
    torch.ops.aten._softmax_backward_data.out(dw, w, -1, w.dtype, grad_input=out)


def maxpool_2x2(x):
    return F.max_pool2d(x, 2, 2)


def pairs_by_index(model):
    """The general action synchronisation (one accumulator per pair, gathered by index) on a first-last model,
    in place of its n x n outer product."""
    return torch.stack((model.synch_action.left, model.synch_action.right))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--eval-batch", type=int, default=500)
    parser.add_argument("--ticks", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--rows", default="", help="only the rows whose name matches this regular expression")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ctm.CTM(ctm.CTMConfig(iterations=args.ticks))
    x, y = torch.rand(args.batch, 1, 28, 28), torch.randint(0, 10, (args.batch,))
    x_eval = torch.rand(args.eval_batch, 1, 28, 28)

    def train_step() -> None:
        out = model(x)
        ctm.certainty_loss(out.predictions, out.certainties, y)[0].backward()
        model.zero_grad(set_to_none=True)

    def eval_step() -> None:
        with torch.inference_mode():
            model(x_eval)

    rows: dict[str, tuple[Callable[[], None], Callable[[], contextlib.AbstractContextManager]]] = {
        "train: engine as shipped": (train_step, contextlib.nullcontext),
        "train: engine as shipped, again": (train_step, contextlib.nullcontext),  # the noise floor
        "train: public glu + copy": (train_step, lambda: patched(engine, "_glu_into", public_glu_into)),
        "train: private LayerNorm backward": (
            train_step, lambda: patched(engine, "_layer_norm_backward", private_layer_norm_backward)),
        "train: private softmax backward": (
            train_step, lambda: patched(engine, "_softmax_backward_into", private_softmax_backward_into)),
        "train: action pairs by index": (train_step, lambda: patched(engine, "action_pairs", pairs_by_index)),
        "train: readable path (autograd)": (train_step, lambda: patched(model, "fast_backward", False)),
        "eval: engine as shipped": (eval_step, contextlib.nullcontext),
        "eval: engine as shipped, again": (eval_step, contextlib.nullcontext),
        "eval: backbone not chunked": (eval_step, lambda: patched(engine, "INFERENCE_CHUNK", 10**9)),
        "eval: max_pool2d in the backbone": (eval_step, lambda: patched(engine, "_max_pool_2x2", maxpool_2x2)),
        "eval: public glu + copy": (eval_step, lambda: patched(engine, "_glu_into", public_glu_into)),
        "eval: action pairs by index": (eval_step, lambda: patched(engine, "action_pairs", pairs_by_index)),
        "eval: readable path": (eval_step, lambda: patched(model, "fast_backward", False)),
    }
    rows = {name: row for name, row in rows.items() if re.search(args.rows, name)}
    times: dict[str, list[float]] = {name: [] for name in rows}
    for step, ctx in rows.values():  # warm-up
        with ctx():
            step()
            step()
    names = list(rows)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # a rotated order each round
            step, ctx = rows[name]
            with ctx():
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
    print(f"CTMConfig(iterations={args.ticks}), train batch {args.batch}, eval batch {args.eval_batch}, "
          f"{args.threads} thread(s), median of {args.rounds} alternating rounds; torch {torch.__version__}")
    print(f"{'variant':40s} {'ms':>8s} {'shipped / this':>15s}")
    for mode in ("train", "eval"):
        base = statistics.median(times[f"{mode}: engine as shipped"])
        for name in rows:
            if name.startswith(mode):
                t = statistics.median(times[name])
                print(f"{name:40s} {1000 * t:8.1f} {base / t:15.2f}")


if __name__ == "__main__":
    main()
