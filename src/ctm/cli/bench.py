"""`ctm bench`: speed of ctm against the seed tutorial's and the official reference models, same weights.

Train step = forward + certainty loss + backward + AdamW step; eval = forward under inference_mode.
The implementations run alternately, one call each per round, so that load from other processes hits
them alike; the table reports the median and the best round as samples per second, and the ratio to
the seed's. Peak memory is measured in a fresh child process per row (see `peak_memory_mb`).

The model is any `CTMConfig` (the same flags as `ctm train`; default the tutorial's). The seed reference is
a file outside this package: `--seed-reference PATH` or $CTM_SEED_REFERENCE, used when the config is the
tutorial's. The official implementation is a folder outside it too (`--official [PATH]`, default
$CTM_OFFICIAL_REFERENCE): its model, built for the config, gives ctm its weights (`ctm.official`). Without
either, ctm is benchmarked alone. This module is the command-line layer: it loads the references (the
seed with its plotting imports stubbed), checks every ctm variant against them, and runs the measuring
code of `ctm.bench`. `run_benchmark(BenchOptions(...))` returns a JSON-able dict; `main(argv)` is the command
(`ctm bench`, benchmarks/speed.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .._malloc import retain_freed_memory, retained_memory
from ..config import CTMConfig
from ..measure import (
    format_table,
    make_step,
    measure_peak_cuda,
    measure_peak_inprocess,
    peak_rss_growth,
    speed_context,
    synchronize,
    time_alternating,
)
from ..nn import engine
from ..training.loop import make_optimizer
from .config_flags import OneLineParser, add_config_flags, given, shown, with_flag_names

SEED_ENV = "CTM_SEED_REFERENCE"
OFFICIAL_ENV = "CTM_OFFICIAL_REFERENCE"
IMPLS = ("seed", "official", "ctm", "ctm+compile", "ctm+amp")
REFERENCES = ("seed", "official")
MODES = ("train", "eval")


@dataclasses.dataclass
class BenchOptions:
    batch_sizes: tuple[int, ...] = (64, 256)
    ticks: int = 30  # the seed configuration: CTMConfig() defaults, 30 ticks
    repeats: int = 7  # timed rounds per row (each impl runs once per round)
    warmup: int = 2  # untimed calls per impl before the rounds (the first compiled call is timed apart)
    threads: int | None = None  # torch.set_num_threads; None keeps torch's default
    compile: bool = False  # add a torch.compile row
    amp: bool = False  # add a bfloat16-autocast row
    modes: tuple[str, ...] = MODES
    seed_path: str | None = None  # the seed reference file; default $CTM_SEED_REFERENCE, else none
    memory: str = "subprocess"  # "subprocess" (honest, slower), "inprocess" (approximate) or "none"
    image_size: tuple[int, int] = (28, 28)
    device: str = "cpu"  # "cpu" or "cuda" (peak memory is then CUDA's allocator peak, in process)
    check: bool = True  # compare every ctm variant's outputs and gradients with the reference's before timing
    config: dict[str, Any] = dataclasses.field(default_factory=dict)  # CTMConfig fields (iterations: ticks)
    official_path: str | None = None  # the official implementation's folder; "" for $CTM_OFFICIAL_REFERENCE

    def model_config(self) -> CTMConfig:
        return CTMConfig(**{**self.config, "iterations": self.ticks})

    @classmethod
    def quick(cls, **changes: Any) -> BenchOptions:
        """A few seconds in all: tiny batches, few ticks, one round (for the test suite)."""
        base = dict(batch_sizes=(4, 8), ticks=4, repeats=1, warmup=1, memory="inprocess")
        base.update(changes)
        return cls(**base)


# ------------------------------------------------------------------------------------------ seed reference


def find_seed_reference(path: str | os.PathLike | None = None) -> Path | None:
    """The seed reference file: `path` if given, else $CTM_SEED_REFERENCE if set (either must exist), else None."""
    if path is None:
        path = os.environ.get(SEED_ENV) or None
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"${SEED_ENV} is {path}, which is not a file; point it at the seed "
                                    f"reference (seed_ctm.py) or unset it to benchmark ctm alone")
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"seed reference not found at {p}")
    return p


def load_seed_module(path: Path) -> types.ModuleType:
    """Import the seed reference. Its GIF/plot/progress-bar dependencies are stubbed when not installed
    (the model and its loss need none of them)."""
    for name in ("imageio", "matplotlib", "matplotlib.pyplot", "tqdm"):
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
    spec = importlib.util.spec_from_file_location("seed_ctm_reference", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"seed reference {path} is not a Python file (expected a .py file like seed_ctm.py)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_seed_model(seed: types.ModuleType, cfg: CTMConfig, image_size: tuple[int, int]) -> torch.nn.Module:
    """The seed's model for `cfg`, lazy layers initialised, weights from the current torch RNG."""
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its synchronisation sizes
        model = seed.ContinuousThoughtMachine(
            iterations=cfg.iterations, d_model=cfg.d_model, d_input=cfg.d_input, memory_length=cfg.memory_length,
            heads=cfg.heads, n_synch_out=cfg.n_synch_out, n_synch_action=cfg.n_synch_action,
            out_dims=cfg.out_dims, memory_hidden_dims=cfg.memory_hidden_dims)
        with torch.no_grad():
            model.eval()
            model(torch.zeros(2, cfg.in_channels, *image_size))
    return model


def find_official_reference(path: str | None) -> Path | None:
    """The official implementation's folder (holding models/ctm.py): `path`, or $CTM_OFFICIAL_REFERENCE for
    "", or None (no official row) for None."""
    if path is None:
        return None
    if path == "":
        path = os.environ.get(OFFICIAL_ENV) or None
        if path is None:
            raise FileNotFoundError(f"--official without a PATH needs ${OFFICIAL_ENV} (the folder of the official "
                                    f"implementation, holding models/ctm.py)")
    p = Path(path)
    if not (p / "models" / "ctm.py").is_file():
        raise FileNotFoundError(f"official implementation not found at {p} (expected {p / 'models' / 'ctm.py'})")
    return p


def build_official_model(path: Path, cfg: CTMConfig, image_size: tuple[int, int]) -> torch.nn.Module:
    """The official model for `cfg` (its `models` package imported from `path`), lazy layers initialised,
    weights from the current torch RNG."""
    from ..interop.official import official_arguments

    kwargs = official_arguments(cfg)
    sys.path.insert(0, str(path))
    try:
        ctm_module = importlib.import_module("models.ctm")
    finally:
        sys.path.remove(str(path))
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its neuron selection
        model = ctm_module.ContinuousThoughtMachine(**kwargs)
        with torch.no_grad():
            model.eval()
            model(torch.zeros(2, cfg.in_channels, *image_size))
    model.official_arguments = kwargs
    return model


def bench_device(name: str) -> torch.device:
    """The device to benchmark on; a clear error when it is not there."""
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: this torch build or machine has no CUDA device "
                             f"(torch {torch.__version__}); benchmark on --device cpu")
        return torch.device("cuda")
    raise ValueError(f"unknown device {name!r}; choose cpu or cuda")


def build_models(opts: BenchOptions, seed_path: Path | None
                 ) -> tuple[dict[str, torch.nn.Module], types.ModuleType | None]:
    """({"seed" or "official": the reference (when asked for), "ctm": ctm with the same weights}, the seed
    module), on the benchmark's device. The seed only for the tutorial's options; the official model's
    weights carry NLM temperatures, so ctm's config gets them too."""
    from ..interop.official import from_official_state_dict
    from ..interop.tutorial import from_seed_state_dict
    from ..nn.model import ContinuousThoughtMachine

    device = bench_device(opts.device)
    cfg = opts.model_config()
    torch.manual_seed(0)
    official = find_official_reference(opts.official_path)
    if official is not None:
        theirs = build_official_model(official, cfg, opts.image_size)
        ours = from_official_state_dict(theirs.state_dict(), **theirs.official_arguments)
        return {"official": theirs.to(device), "ctm": ours.to(device)}, None
    if seed_path is None or not cfg.tutorial_options:
        return {"ctm": ContinuousThoughtMachine(cfg).to(device)}, None
    module = load_seed_module(seed_path)
    seed = build_seed_model(module, cfg, opts.image_size)
    ours = from_seed_state_dict(seed.state_dict(), iterations=cfg.iterations, heads=cfg.heads)
    return {"seed": seed.to(device), "ctm": ours.to(device)}, module


# ------------------------------------------------------------------------------------------ steps


def _loss_fn(impl: str, seed_module: types.ModuleType | None) -> Callable:
    """The seed's own loss for the seed; ctm's certainty loss (the same function) for the others."""
    if impl == "seed":
        return seed_module.get_loss
    from ..training.losses import certainty_loss

    return certainty_loss


def _inputs(opts: BenchOptions) -> dict[str, Any]:
    """The shape of the random batches and labels (`make_step`'s keywords)."""
    cfg = opts.model_config()
    return dict(image_size=opts.image_size, in_channels=cfg.in_channels, out_dims=cfg.out_dims)


def _impl_model(impl: str, models: dict[str, torch.nn.Module]) -> torch.nn.Module:
    if impl in REFERENCES:
        return models[impl]
    import copy

    model = copy.deepcopy(models["ctm"])  # every variant trains its own copy from the same weights
    if impl == "ctm+compile":
        torch.compiler.reset()  # no graphs reused from an earlier copy: each row compiles (and is timed) anew
        model = torch.compile(model)
    return model


def _optimizer(impl: str):
    """The training step's optimizer: ctm's rows train as `ctm train` does (`make_optimizer`: fused AdamW), the
    seed and the official model with torch's default AdamW, as their code does."""
    if impl.startswith("ctm"):
        return lambda params: make_optimizer(params, lr=1e-4, eps=1e-8)
    return None


# ------------------------------------------------------------------------------------------ memory


def peak_memory_mb(impl: str, mode: str, batch: int, opts: BenchOptions, seed_path: Path | None) -> float | None:
    """Peak RSS growth (MB) of a fresh process running 3 calls of one row, over its RSS just before them.

    The child builds the models, makes the step closure, then measures: so the figure is what the
    steps themselves hold at their peak (activations, gradients, optimiser state, ctm's reused
    training buffers), not the interpreter, torch or the weights.
    """
    payload = json.dumps({"impl": impl, "mode": mode, "batch": batch, "opts": dataclasses.asdict(opts),
                          "seed_path": str(seed_path) if seed_path else None})
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])  # the folder holding the ctm package
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    try:
        out = subprocess.run([sys.executable, "-m", "ctm.cli.bench", "--memory-child", payload], capture_output=True,
                             text=True, env=env, timeout=900, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])["peak_mb"]
    except (subprocess.SubprocessError, ValueError, KeyError, IndexError):
        return None


def _memory_child(payload: str) -> None:
    spec = json.loads(payload)
    raw = spec["opts"]
    raw.update(batch_sizes=tuple(raw["batch_sizes"]), modes=tuple(raw["modes"]), image_size=tuple(raw["image_size"]))
    opts = BenchOptions(**raw)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    seed_path = Path(spec["seed_path"]) if spec["seed_path"] else None
    impl = spec["impl"]
    models, seed_module = build_models(opts, seed_path if impl == "seed" else None)
    step = make_step(_impl_model(impl, models), spec["mode"], spec["batch"], _loss_fn(impl, seed_module),
                     amp=impl == "ctm+amp", optimizer=_optimizer(impl), **_inputs(opts))
    print(json.dumps({"peak_mb": peak_rss_growth(step, calls=3)}))


# ------------------------------------------------------------------------------------------ equivalence


def _one_line(e: BaseException) -> str:
    """An exception as one short line, for the table (a variant that could not run)."""
    return f"{type(e).__name__}: {e}".splitlines()[0][:300]


@contextlib.contextmanager
def _full_precision(device: torch.device):
    """TF32 off for the comparison (cuDNN uses it for convolutions by default on Ampere and later)."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def check_against_seed(models: dict[str, torch.nn.Module], seed_module: types.ModuleType | None,
                       impls: Sequence[str], opts: BenchOptions, batch: int = 8) -> dict[str, dict[str, Any]]:
    """Each ctm variant against the reference (the seed, or the official model where `models` holds it) on
    one batch, in train mode: predictions, certainties, loss and
    the gradient of the loss with respect to the input images (it flows back through every tick and the
    backbone). Returns {impl: {"max_abs_diff": {...}, "grad_rel_err": float, "ok": bool}}. For the float32
    variants `ok` means predictions, certainties and loss allclose at rtol 1e-4, atol 1e-5, and the input
    gradient within 1e-4 of the seed's in relative norm (its entries are ~1e-5, below any useful atol);
    None for bfloat16 autocast (not the seed's numerics). A variant that raises gets "error" and ok None."""
    import copy

    reference = "seed" if "seed" in models else "official"
    device = next(models[reference].parameters()).device
    shape = _inputs(opts)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, shape["in_channels"], *opts.image_size, generator=g).to(device)
    y = torch.randint(0, shape["out_dims"], (batch,), generator=g).to(device)

    def run(impl: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        xi = x.clone().requires_grad_(True)
        model.train()
        with speed_context(impl == "ctm+amp", device.type):
            predictions, certainties, _ = model(xi)
        loss, _ = _loss_fn(impl, seed_module)(predictions.float(), certainties.float(), y)
        loss.backward()
        return {"predictions": predictions.detach().float(), "certainties": certainties.detach().float(),
                "loss": loss.detach(), "input_grad": xi.grad}

    out = {}
    with _full_precision(device):
        ref = run(reference, copy.deepcopy(models[reference]))
        for impl in impls:
            if impl in REFERENCES:
                continue
            try:
                got = run(impl, _impl_model(impl, models))
            except Exception as e:  # could not run here (e.g. no C++ compiler): not a verdict on its numerics
                out[impl] = {"error": _one_line(e), "ok": None}
                continue
            diffs = {k: (got[k] - ref[k]).abs().max().item() for k in ref}
            g, g_ref = got["input_grad"], ref["input_grad"]
            grad_rel = ((g - g_ref).norm() / g_ref.norm().clamp_min(1e-30)).item()
            ok = None if impl == "ctm+amp" else grad_rel <= 1e-4 and all(
                torch.allclose(got[k], ref[k], rtol=1e-4, atol=1e-5) for k in ("predictions", "certainties", "loss"))
            out[impl] = {"max_abs_diff": diffs, "grad_rel_err": grad_rel, "ok": ok}
    return out


# ------------------------------------------------------------------------------------------ benchmark


def run_benchmark(opts: BenchOptions, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every (mode, batch size) row for every implementation; returns a JSON-able dict."""
    log = log or (lambda _msg: None)
    device = bench_device(opts.device)  # before anything else, so a missing CUDA is the one error reported
    if opts.threads:
        torch.set_num_threads(opts.threads)
    cfg = opts.model_config()
    if cfg.backbone == "sign-embedding":
        raise ValueError("ctm bench feeds random images; the parity backbone takes +-1 sequences")
    if cfg.input_reader != "attention":
        raise ValueError(f"ctm bench feeds random images to the attention reader; CTMConfig.input_reader "
                         f"{cfg.input_reader!r} takes other inputs")
    seed_path = find_seed_reference(opts.seed_path)
    notes = []
    if opts.official_path is not None:
        seed_path = None  # the official model gives the weights (it has no tutorial backbone, so no seed config)
    elif seed_path is None:
        notes.append(f"seed reference not found (pass --seed-reference PATH or set ${SEED_ENV}): benchmarking ctm "
                     "alone")
        log(notes[-1])
    elif not cfg.tutorial_options:
        notes.append("no seed row: the seed implements the tutorial's options only")
        log(notes[-1])
        seed_path = None
    models, seed_module = build_models(opts, seed_path)
    if "official" in models:
        notes.append("ctm has the official model's weights, NLM temperatures included; ctm runs on the "
                     + ("fast engine" if engine.applies(models["ctm"]) else "readable path (options the engine "
                                                                           "does not cover)"))
    if opts.compile:
        notes.append("compile s: wall time of the first compiled call (compiling forward and backward); torch's "
                     "on-disk inductor cache makes later runs faster. ctm+compile traces the autograd "
                     "formulation of the tick loop; its peak memory is not measured in a child process")
    impls = [i for i in IMPLS if i in models or (i == "ctm+compile" and opts.compile) or (i == "ctm+amp" and opts.amp)]
    memory_method = {
        "subprocess": "peak RSS growth of a fresh process over 3 calls (VmHWM after a reset, Linux)",
        "inprocess": "peak RSS growth in this process over 2 calls (approximate: reused heap is not counted)",
        "none": "not measured",
    }[opts.memory]
    if device.type == "cuda" and opts.memory != "none":
        memory_method = "peak CUDA memory allocated over 2 calls, beyond what was allocated before them"
    check = None
    reference = next((r for r in REFERENCES if r in models), None)
    if opts.check and reference:
        log(f"checking every ctm variant against the {reference} (outputs, loss, input gradient)")
        check = check_against_seed(models, seed_module, impls, opts)
        for impl, r in check.items():
            log(f"  {impl}: " + (f"could not run: {r['error']}" if "error" in r
                                 else f"{r['max_abs_diff']} grad rel err {r['grad_rel_err']:.1e} ok={r['ok']}"))
    rows = []
    for mode in opts.modes:
        for batch in opts.batch_sizes:
            log(f"{mode} batch {batch}: {', '.join(impls)}")
            steps, row_models, compile_s, errors = {}, {}, {}, {}
            for impl in impls:
                try:
                    model = _impl_model(impl, models)
                    step = make_step(model, mode, batch, _loss_fn(impl, seed_module), amp=impl == "ctm+amp",
                                     optimizer=_optimizer(impl), **_inputs(opts))
                    if impl == "ctm+compile":  # the first call compiles; time it apart
                        synchronize(device)
                        t0 = time.perf_counter()
                        step()
                        synchronize(device)
                        compile_s[impl] = time.perf_counter() - t0
                    for _ in range(opts.warmup):
                        step()
                except Exception as e:  # a variant that cannot run here (e.g. no C++ compiler) is reported
                    errors[impl] = _one_line(e)
                    log(f"  {impl} failed: {errors[impl]}")
                    continue
                steps[impl], row_models[impl] = step, model
            try:
                times = time_alternating(steps, opts.repeats, device)
            except torch.OutOfMemoryError as e:  # this batch does not fit: report it, go on with the next
                for impl in steps:
                    errors[impl] = "while timing: " + _one_line(e)
                log(f"  out of memory at batch {batch}")
                steps, times = {}, {}
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            memory = {}
            for impl in steps:
                if opts.memory == "none":
                    memory[impl] = None
                elif device.type == "cuda":
                    try:
                        memory[impl] = measure_peak_cuda(steps[impl], device)
                    except torch.OutOfMemoryError:
                        memory[impl] = None
                elif opts.memory == "subprocess" and impl == "ctm+compile":
                    memory[impl] = None  # a child would spend minutes compiling again
                elif opts.memory == "subprocess":
                    memory[impl] = peak_memory_mb(impl, mode, batch, opts, seed_path)
                elif opts.memory == "inprocess":
                    memory[impl] = measure_peak_inprocess(steps[impl])
                else:
                    memory[impl] = None
            base = times.get(reference) if reference else None
            for impl in impls:
                row: dict[str, Any] = {"mode": mode, "batch": batch, "impl": impl}
                if impl in errors:
                    row["error"] = errors[impl]
                    rows.append(row)
                    continue
                t = times[impl]
                med, best = statistics.median(t), min(t)
                row.update(
                    samples_per_s=batch / med, samples_per_s_best=batch / best, ms_per_call=med * 1e3,
                    ratio_to_seed=statistics.median(base) / med if base else None,
                    ratio_to_seed_best=min(base) / best if base else None,
                    peak_mb=memory.get(impl), compile_s=compile_s.get(impl),
                )
                rows.append(row)
                log(f"  {impl}: {row['samples_per_s']:.0f} samples/s")
    return {
        "config": models["ctm"].config.to_dict(),
        "reference": reference,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(opts).items()},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs"
                   + (", freed memory retained (ctm._malloc)" if retained_memory() else ""),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "seed_reference": str(seed_path) if seed_path else None,
        "official_reference": str(find_official_reference(opts.official_path)) if "official" in models else None,
        "memory_method": memory_method,
        "check": check,
        "results": rows,
        "notes": notes,
    }


# ------------------------------------------------------------------------------------------ command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's flags, for `ctm bench` and benchmarks/speed.py alike."""
    p.add_argument("--batch-sizes", default=None, help="comma-separated batch sizes (default 64,256)")
    p.add_argument("--repeats", type=int, default=None, help="timed alternating rounds per row (default 7)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per implementation first (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="where to run (default cpu)")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip comparing the ctm variants' outputs and input gradients with the seed's first")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (reports compile time)")
    p.add_argument("--amp", action="store_true", help="also measure bfloat16 autocast")
    p.add_argument("--modes", default=None, help="comma-separated: train,eval (default both)")
    p.add_argument("--seed-reference", dest="seed_path", default=None, metavar="PATH",
                   help=f"the seed reference file, seed_ctm.py (default ${SEED_ENV}; without either, ctm alone)")
    p.add_argument("--memory", choices=["subprocess", "inprocess", "none"], default=None,
                   help="how to measure peak memory (default subprocess; inprocess with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny batches, 4 ticks, one round: a smoke test")
    p.add_argument("--official", dest="official_path", nargs="?", const="", default=None, metavar="PATH",
                   help=f"add the official implementation (its folder, holding models/ctm.py; without PATH "
                        f"${OFFICIAL_ENV}): built for the config, it gives ctm its weights, is checked against ctm "
                        f"and timed beside it")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    g = p.add_argument_group("model (CTMConfig; default the tutorial's, --ticks 30 the seed's, 4 with --quick)")
    add_config_flags(g, CTMConfig, {name: shown(v) for name, v in CTMConfig().to_dict().items()})


def _batch_sizes(text: str) -> tuple[int, ...]:
    parts = [b.strip() for b in text.split(",") if b.strip()]
    if not parts or not all(b.isdigit() and int(b) > 0 for b in parts):
        raise ValueError(f"--batch-sizes wants positive integers separated by commas (e.g. 64,256), got {text!r}")
    return tuple(int(b) for b in parts)


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """The options the parsed flags ask for; ValueError naming the flag for a bad value."""
    changes: dict[str, Any] = {}
    config = given(args, CTMConfig)
    if "iterations" in config:
        changes["ticks"] = config.pop("iterations")
    if config.get("input_reader", "attention") != "attention":
        raise ValueError(f"--input-reader {config['input_reader']}: ctm bench feeds random images to the attention "
                         f"reader")
    try:
        CTMConfig(**config)
    except ValueError as e:
        raise ValueError(with_flag_names(str(e))) from None
    changes["config"] = config
    if args.batch_sizes is not None:
        changes["batch_sizes"] = _batch_sizes(args.batch_sizes)
    for name, least in (("repeats", 1), ("warmup", 0), ("threads", 1)):
        value = getattr(args, name)
        if value is not None and value < least:
            raise ValueError(f"--{name} must be at least {least}, got {value}")
    if args.modes is not None:
        modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
        if not modes:
            raise ValueError(f"--modes wants train, eval or train,eval, got {args.modes!r}")
        bad = [m for m in modes if m not in MODES]
        if bad:
            raise ValueError(f"unknown mode(s) {bad}; choose from {list(MODES)}")
        changes["modes"] = modes
    for name in ("repeats", "warmup", "threads", "seed_path", "official_path", "memory", "device"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    changes.update(compile=args.compile, amp=args.amp, check=args.check)
    return BenchOptions.quick(**changes) if args.quick else BenchOptions(**changes)


BENCH_EXAMPLES = """examples:
  ctm bench --quick                          # a few seconds: tiny batches, 4 ticks
  ctm bench --batch-sizes 64,256 --threads 2 # the README's table
  ctm bench --compile --amp --json           # also torch.compile and bfloat16, machine-readable"""


def main(argv: Sequence[str] | None = None, prog: str = "ctm bench") -> int:
    """Run the benchmark command; returns the exit code (2 and one line on stderr for a user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    retain_freed_memory()  # as `ctm` does for every command (ctm._malloc); CTM_MALLOPT=0: without
    if argv[:1] == ["--memory-child"]:
        _memory_child(argv[1])
        return 0
    p = OneLineParser(prog=prog, description=__doc__.splitlines()[0], epilog=BENCH_EXAMPLES.replace("ctm bench", prog),
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        opts = options_from_args(args)
        result = run_benchmark(opts, log=log)
    except (ValueError, FileNotFoundError) as e:  # bad flags, no CUDA, a missing seed file: one line
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:  # the seed reference imports something this environment lacks
        what = f"pip install {e.name}" if e.name else "install what it imports"
        print(f"{prog}: error: the seed reference could not be imported ({e}); {what}, or point --seed-reference "
              f"(or ${SEED_ENV}) at a reference whose imports are installed", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
