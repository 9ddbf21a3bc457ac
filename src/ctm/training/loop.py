"""Training a CTM: `TrainConfig`, presets, the LR schedule, and the loop with checkpoints and resume.

Config flows one way: preset -> overrides -> `TrainConfig` (validated) -> objects. The run directory
(see `ctm.checkpoint`) records both configs and the task (see `ctm.tasks`), so a resumed run rebuilds itself
from the run, not from flags. The loop knows no task: the task gives the data, their order, the CTMConfig
fields it fixes and the loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._signals import StopFlag
from ..config import BACKBONE_ALIASES, CTMConfig, check_fields, option
from ..data.folders import folder_path, parse_image_size
from ..data.sampling import mix_seed
from ..nn.kinds import model_options, run_model_kind, run_model_options
from ..nn.readers import device_of
from ..runs import checkpoint as ckpt
from ..tasks import DEFAULT_TASK, TASKS, Dataset, Preset, Task, make_task, task_from_record
from . import distributed as dist
from .evaluate import EvalResult, evaluate

if TYPE_CHECKING:
    from ..nn.model import ContinuousThoughtMachine


@dataclass(frozen=True)
class TrainConfig:
    """How to train. `steps` counts optimiser steps; each step sees `batch_size` samples."""

    dataset: str = option("mnist", "dataset to train on: mnist, fashion-mnist, or folder:PATH (your own images, one "
                                   "subfolder per class)", metavar="NAME")
    steps: int = option(2000, "optimiser steps in total", min=1)
    batch_size: int = option(64, "global batch per step; under torchrun it is split evenly across the ranks", min=1)
    lr: float = option(1e-4, "peak learning rate (AdamW)", min=0)
    weight_decay: float = option(0.01, "AdamW weight decay", min=0)
    adam_eps: float = option(1e-8, "AdamW epsilon", min=0)
    warmup_steps: int = option(0, "steps of linear learning-rate warm-up", min=0)
    schedule: str = option("constant", "learning rate after warm-up: constant, or cosine down to min_lr_ratio x lr",
                           choices=("constant", "cosine"))
    min_lr_ratio: float = option(0.0, "end of the cosine schedule, as a fraction of lr (0 to 1)", min=0)
    grad_clip: float = option(0.0, "max global gradient norm; 0 disables clipping", min=0)
    # Extra loss term: this weight times the cross-entropy averaged over all ticks (0 = the seed's
    # certainty loss alone). It asks every tick to be right, so certainty comes early (see ctm.halting).
    tick_loss_weight: float = option(0.0, "add this weight x the cross-entropy averaged over all ticks to the "
                                          "certainty loss", min=0)
    eval_every: int = option(100, "evaluate on the full test set every N steps", min=1)
    eval_batch_size: int = option(500, "batch size of those evaluations", min=1)
    augment: bool = option(False, "small random affine transforms of the training images")
    grad_accum: int = option(1, "micro-batches per step (the batch size must divide by it)", min=1)
    bf16: bool = option(False, "train the backbone under bfloat16 autocast (the ticks stay float32): faster where "
                               "the hardware has bfloat16 units (GPUs; CPUs with AMX); evaluation stays float32")
    seed: int = option(0, "seed of the initialisation, the sampling order and the augmentation", min=0)
    image_size: str = option("", "folder datasets: resize every image to HxW or N pixels (default: the most common "
                                 "size among the files)", metavar="HxW")
    holdout: float = option(0.1, "folder datasets without train/ and test/ folders: the fraction of each class held "
                                 "out as the test split (chosen with a fixed seed)", min=0)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be positive, got {self.lr}")
        for name in ("lr", "weight_decay"):  # their product must fit a float32 inside AdamW
            if getattr(self, name) > 1e6:
                raise ValueError(f"TrainConfig.{name} must be at most 1e6, got {getattr(self, name)}")
        if self.seed >= 2**63:
            raise ValueError(f"TrainConfig.seed must be below 2**63, got {self.seed}")
        if self.min_lr_ratio > 1:
            raise ValueError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        parse_image_size(self.image_size)
        if self.image_size and folder_path(self.dataset) is None:
            raise ValueError(f"TrainConfig.image_size applies to folder datasets (folder:PATH); {self.dataset} keeps "
                             f"its own size")
        if not 0 < self.holdout < 1:
            raise ValueError(f"TrainConfig.holdout is the fraction of each class held out for testing, between 0 "
                             f"and 1 (e.g. 0.1), got {self.holdout}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"TrainConfig.batch_size ({self.batch_size}) must be divisible by grad_accum "
                             f"({self.grad_accum})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**d)


class _Presets(Mapping):
    """Every registered task's recipes by name (`Task.presets`), read when asked: a task registered later
    (`ctm.tasks.register_task`, `--task module:Class`) brings its own."""

    def _all(self) -> dict[str, Preset]:
        return {name: preset for cls in TASKS.values() for name, preset in cls.presets.items()}

    def __getitem__(self, name: str) -> Preset:
        return self._all()[name]

    def __iter__(self):
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


#: preset name -> Preset, over every registered task
PRESETS: Mapping[str, Preset] = _Presets()


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float, eps: float = 1e-8,
                   weight_decay: float = 0.01) -> torch.optim.AdamW:
    """AdamW as `train` runs it: torch's fused implementation (one kernel over all parameters) where it has one
    for the parameters (CPU or CUDA floating point), else its default. For the tutorial's model on 2 CPU
    threads a step takes 0.36 ms instead of 1.56 ms (the default, foreach)."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=lr, eps=eps, weight_decay=weight_decay, fused=True if fused else None)


def _preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def make_train_config(preset: str = "default", **overrides: Any) -> TrainConfig:
    """preset -> overrides (None values ignored) -> validated TrainConfig."""
    values = {**_preset(preset).train, **{k: v for k, v in overrides.items() if v is not None}}
    return TrainConfig.from_dict(values)


def make_model_config(preset: str = "default", **overrides: Any) -> CTMConfig:
    """preset's model -> overrides (None values ignored) -> validated CTMConfig (the task fixes its data
    fields, e.g. out_dims, when training starts)."""
    return CTMConfig(**{**_preset(preset).model, **{k: v for k, v in overrides.items() if v is not None}})


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimiser step `step` (0-based): linear warm-up, then constant or cosine."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    decay_steps = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if (name == "cuda" or name.startswith("cuda:")) and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but torch sees no CUDA GPU (use device 'auto' or 'cpu')")
    if name.startswith("cuda:"):
        index = name[5:]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: no such GPU; this machine has {torch.cuda.device_count()} "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' was asked for, but MPS is not available here (use device 'auto' or 'cpu')")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return torch.device(name)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run directory keeps its last good checkpoint."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    interrupted: bool
    final_eval: EvalResult | None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    stop_signal: int | None = None  # the signal that stopped training (SIGINT, SIGTERM or SIGHUP), if one did


def build_model_config(model_config: CTMConfig, dataset: Dataset, task: Task | None = None) -> CTMConfig:
    """The model config with the fields the task fixes (for images: in_channels and out_dims from the data)."""
    return model_config.replace(**(task or make_task(DEFAULT_TASK)).model_fields(dataset))


def check_data_fields(requested: Mapping[str, Any], dataset: Dataset, task: Task | None = None) -> None:
    """ValueError naming the CTMConfig field when a requested value contradicts what the task fixes."""
    task = task or make_task(DEFAULT_TASK)
    for name, value in task.model_fields(dataset).items():
        today = BACKBONE_ALIASES.get(value, value) if name == "backbone" else value  # a name of earlier versions
        if name in requested and requested[name] not in (value, today):
            source = task.fixes_fields_from or f"the {task.name} task"
            raise ValueError(f"CTMConfig.{name}={requested[name]} contradicts {source}: "
                             f"{dataset.name or 'the dataset'} gives {name}={value} (leave it out: training "
                             f"takes it from {source})")


# TrainConfig fields a resumed run may change: they do not alter what the run has computed so far.
RESUMABLE_FIELDS = ("steps", "eval_every")


def resumed_train_config(model_config: CTMConfig, train_config: TrainConfig, model_changes: Mapping[str, Any],
                         train_changes: Mapping[str, Any]) -> TrainConfig:
    """The stored `train_config` of a run with `train_changes` applied, for `train(..., resume=True)`.

    The architecture comes from the run, so every value of `model_changes` must equal the stored one; of
    the training, only RESUMABLE_FIELDS may differ. Otherwise ValueError naming the first field that may not.
    """
    stored = model_config.to_dict()
    for name, value in model_changes.items():
        if stored[name] != value:
            raise ValueError(f"cannot resume with CTMConfig.{name}={value}: the run was trained with "
                             f"{name}={stored[name]} (the architecture comes from the run)")
    stored_train = train_config.to_dict()
    for name, value in train_changes.items():
        if name not in RESUMABLE_FIELDS and stored_train[name] != value:
            allowed = " and ".join(f"TrainConfig.{n}" for n in RESUMABLE_FIELDS)
            raise ValueError(f"cannot resume with TrainConfig.{name}={value}: the run uses {name}="
                             f"{stored_train[name]}; only {allowed} may change")
    return TrainConfig.from_dict({**stored_train, **train_changes}) if train_changes else train_config


def train(run_dir: str | Path, model_config: CTMConfig, train_config: TrainConfig, *,
          task: Task | None = None, model_kind: str = "ctm", data_dir: str | None = None, device: str = "auto",
          resume: bool = False, progress: bool = False, stop: Callable[[int], bool] | None = None,
          log: Callable[[str], None] | None = None, backend: str = "auto", sync_bn: bool | None = None,
          dist_timeout_s: float = 600.0) -> TrainResult:
    """Train (or, with resume=True, continue training) the run in `run_dir`.

    `task` (default: image classification of TrainConfig.dataset) gives the data, the CTMConfig fields it
    fixes and the loss; `model_kind` names the model (`ctm.models`). Both are recorded in the run.
    For a new run, `run_dir` must not already hold a run. For a resumed run, `model_config` and
    `train_config` must be the ones stored in the run (see `resume_configs`), and the task and model kind
    come from the run (a `task` given must equal it). `stop(step)` is asked
    after every step; returning True checkpoints and stops (SIGINT, SIGTERM and SIGHUP do the same; a
    further signal stops at once, or after the save in progress). One process at a time trains a run: the
    run's lock (see `ctm.checkpoint.RunLock`) refuses a second writer.

    Launched by torchrun (WORLD_SIZE > 1), this trains with DistributedDataParallel: the global batch
    is split across ranks, only rank 0 writes the run directory and shows progress, and evaluation is
    sharded. `sync_bn` (default: on for CUDA) uses SyncBatchNorm, which PyTorch supports on GPUs only;
    on CPU each rank normalises with its own batch statistics.
    """
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    info = dist.setup(dev.type, backend, dist_timeout_s)
    try:
        if info.enabled and dev.type == "cuda":
            dev = torch.device("cuda", info.local_rank)
            torch.cuda.set_device(dev)
        with contextlib.ExitStack() as held:  # the run's lock, released however training ends
            result = _train(run_dir, model_config, train_config, task, model_kind, data_dir, dev, resume,
                            progress and info.is_main, stop, log if info.is_main else None, info,
                            dev.type == "cuda" if sync_bn is None else sync_bn, held)
        # Rank 0 may still be writing the checkpoint: leave the process group together (a gloo rank that
        # tears down while its peer is busy can abort the process).
        dist.barrier(info)
        return result
    finally:
        dist.teardown()


def _train(run_dir: Path, model_config: CTMConfig, train_config: TrainConfig, task: Task | None, model_kind: str,
           data_dir: str | None, dev: torch.device, resume: bool, progress: bool, stop: Callable[[int], bool] | None,
           log: Callable[[str], None] | None, info: dist.DistInfo, sync_bn: bool,
           held: contextlib.ExitStack) -> TrainResult:
    model_opts: dict[str, Any] = {}  # a resumed run's recorded builder options (the LSTM's width)
    if resume:
        payload = ckpt.read_config(run_dir)
        stored_task = task_from_record(payload)
        if task is not None and task.record() != stored_task.record():
            raise ValueError(f"cannot resume {run_dir} as task {task.record()}: the run is {stored_task.record()} "
                             f"(the task comes from the run)")
        task = stored_task
        model_kind, model_opts = run_model_kind(payload), run_model_options(payload)
        problem = None
        if info.is_main:  # before anything else: a second writer is refused at once
            try:
                held.enter_context(ckpt.RunLock(run_dir))
                recovered = ckpt.recover_pointer(run_dir)
                if recovered is not None and log is not None:
                    log(f"note: {run_dir / ckpt.POINTER_FILE} was missing; published again the newest complete "
                        f"checkpoint, {ckpt.CHECKPOINTS_DIR}/{recovered.path.name} (step {recovered.step})")
                ckpt.remove_leftovers(run_dir)
            except ckpt.RunDirError as e:
                problem = str(e)
        problem = dist.broadcast_object(problem, info)
        if problem:
            raise ckpt.RunDirError(problem)
    task = task or make_task(DEFAULT_TASK)
    if not resume and train_config.dataset != task.dataset_name(train_config):
        train_config = TrainConfig.from_dict({**train_config.to_dict(), "dataset": task.dataset_name(train_config)})
    # On resume a folder dataset is read as the run recorded it, and must hold the same files (the same order).
    train_set, test_set = task.load_splits(train_config, data_dir, resume=resume, progress=progress,
                                           recorded=ckpt.read_config(run_dir).get("dataset") if resume else None)
    check_data_fields(model_config.to_dict() if resume else {}, train_set, task)
    model_config = build_model_config(model_config, train_set, task)
    expected = task.model_fields(train_set).get("input_reader", "attention")
    if model_config.input_reader != expected:
        raise ValueError(f"CTMConfig.input_reader {model_config.input_reader!r}: the {task.name} task feeds its "
                         f"inputs to the {expected!r} reader (leave it out)")
    task.check_config(model_config, train_config)
    train_set, test_set = train_set.to(dev), test_set.to(dev)
    if train_config.batch_size % (info.world_size * train_config.grad_accum):
        raise ValueError(f"TrainConfig.batch_size {train_config.batch_size} (the global batch) must be divisible by "
                         f"{info.world_size} ranks x {train_config.grad_accum} accumulation steps")
    sampler = task.sampler(train_set, train_config, info.rank, info.world_size)
    steps_per_epoch = len(sampler)
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {train_config.batch_size} exceeds the {len(train_set)} training samples")

    torch.manual_seed(train_config.seed)  # parameter initialisation (the same on every rank)
    model = ckpt.build_model(model_config, f"{run_dir / ckpt.CONFIG_FILE}" if resume else "the flags",
                             model_kind, model_opts).to(dev)
    optimizer = make_optimizer(model.parameters(), lr=train_config.lr, eps=train_config.adam_eps,
                               weight_decay=train_config.weight_decay)
    model.attach_decay_clamp(optimizer)
    step, elapsed, metrics = 0, 0.0, []
    if resume:
        found = ckpt.current_checkpoint(run_dir)
        if found is None:
            raise ckpt.RunDirError(f"{run_dir} has no checkpoint yet: it stopped before its first save; start it "
                                   f"again with --out {run_dir}")
        loaded, _ = ckpt.load_model(run_dir, dev)
        model.load_state_dict(loaded.state_dict())
        state = ckpt.load_trainer_state(run_dir)
        step = state["step"]
        if ckpt.weights_step(run_dir) != step:
            raise ckpt.RunDirError(f"{run_dir}: {ckpt.MODEL_FILE} (step {ckpt.weights_step(run_dir)}) and "
                                   f"{ckpt.STATE_FILE} (step {step}) disagree; the run was killed while saving")
        state_path = found.path / ckpt.STATE_FILE
        ckpt.check_optimizer_state(state["optimizer"], optimizer, state_path)
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise ckpt.RunDirError(f"{state_path}: field 'optimizer' does not fit this model ({e})") from None
        _set_rng_state(state.get("rng_state"), dev, state_path)
        elapsed = float(state.get("elapsed_s", 0.0))
        metrics = [m for m in ckpt.read_metrics(run_dir) if m["step"] <= step]
        if step >= train_config.steps:
            raise ckpt.RunFinishedError(f"{run_dir} already ran {step} of {train_config.steps} steps; "
                                        f"pass a larger TrainConfig.steps to extend it", step)
        # Only now that everything loaded: record a changed length (e.g. a larger --steps) in config.json.
        if info.is_main and ckpt.read_config(run_dir).get("train") != train_config.to_dict():
            update_stored_train_config(run_dir, train_config)
    else:
        # Only rank 0 looks at and writes the directory; the others learn its verdict.
        problem = None
        if info.is_main:
            problem = _fresh_run_dir_problem(run_dir)
            if problem is None:
                run_dir.mkdir(parents=True, exist_ok=True)
                try:
                    held.enter_context(ckpt.RunLock(run_dir))
                except ckpt.RunLockedError as e:
                    problem = str(e)
                else:  # again, now that no other process can be writing it
                    problem = _fresh_run_dir_problem(run_dir)
            if problem is None:
                extra = {"train": train_config.to_dict(), "dataset": task.dataset_record(train_set, data_dir),
                         "world_size": info.world_size}
                extra["task"] = task.record()
                if model_kind != "ctm":
                    extra["model_kind"] = model_kind
                if model_options(model):  # e.g. the LSTM's matched width: the run rebuilds it as it was
                    extra["model_options"] = model_options(model)
                ckpt.write_config(run_dir, model_config, extra)
        problem = dist.broadcast_object(problem, info)
        if problem:
            raise ckpt.RunDirError(problem)

    net: torch.nn.Module = model
    if info.enabled:
        if sync_bn:
            if dev.type != "cuda":
                raise ValueError("sync_bn needs CUDA (PyTorch's SyncBatchNorm is GPU-only); train with sync_bn off")
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)

    flag = StopFlag()

    def save() -> None:
        # Rank 0 writes; every rank learns the outcome, so a failed save stops them all with its one line
        # (not the others in their next collective, with a peer's connection error or at the timeout).
        problem = None
        if info.is_main:
            try:
                with flag.saving():  # a signal now waits for the checkpoint to be complete
                    ckpt.save_checkpoint(run_dir, model, {
                        "step": step, "epoch": step // steps_per_epoch, "optimizer": optimizer.state_dict(),
                        "elapsed_s": elapsed, "world_size": info.world_size,
                        "torch_version": str(torch.__version__), "rng_state": _rng_state(dev)},
                        metrics)
            except BaseException as e:
                problem = str(e) if isinstance(e, ValueError) else \
                    f"rank 0 could not save the checkpoint of step {step} in {run_dir} ({type(e).__name__})"
                with contextlib.suppress(Exception):  # the others may be gone already: rank 0's own error stands
                    dist.broadcast_object(problem, info)
                    dist.barrier(info)  # leave the collectives together (as a finished run does)
                raise
        problem = dist.broadcast_object(problem, info)
        if problem:
            with contextlib.suppress(Exception):
                dist.barrier(info)
            raise ckpt.CheckpointWriteError(problem)

    if log is not None and info.is_main:
        for line in _startup_lines(run_dir, resume, step, model, task, train_set, test_set, train_config, dev, info,
                                   steps_per_epoch):
            log(line)
    last_eval: EvalResult | None = None
    # Sums since the last evaluation: certainty loss, mean per-tick cross-entropy, accuracy, steps (this rank's
    # on the host for the progress bar, all ranks' for metrics.jsonl).
    running = torch.zeros(4, dtype=torch.float64, device=dev)
    interval = [0.0, 0.0, 0]  # certainty loss, accuracy, steps
    # The training loss between evaluations, in up to TRACE_POINTS means (this rank's) for curves.png.
    trace_every = max(1, train_config.eval_every // TRACE_POINTS)
    trace: list[list[float]] = []
    trace_sum = [0.0, 0]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=train_config.steps, initial=step, dynamic_ncols=True, unit="step")
    net.train()
    started = time.perf_counter() - elapsed
    interrupted = False
    with flag:
        epoch, position = divmod(step, steps_per_epoch)
        batches = sampler.batches(epoch, position)
        while step < train_config.steps:
            idx = next(batches, None)
            if idx is None:
                epoch += 1
                batches = sampler.batches(epoch)
                idx = next(batches)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, train_config)
            loss_value, tick_value, acc_value = _train_step(net, optimizer, task, train_set, idx, step, train_config)
            finite = math.isfinite(loss_value + tick_value)
            # One collective per step for both: every rank stops together (a lone rank that raised would
            # leave the others waiting in their next all-reduce).
            want_stop = flag.set or (stop is not None and stop(step + 1))
            stop_flag, bad_rank = dist.max_over_ranks([float(want_stop), -1.0 if finite else info.rank], info, dev)
            if bad_rank >= 0:
                if bar is not None:
                    bar.close()
                saved_step = ckpt.checkpoint_step(run_dir)
                saved = f"its last good checkpoint (step {saved_step})" if saved_step is not None else \
                    "no checkpoint yet"
                bad = loss_value if not math.isfinite(loss_value) else tick_value
                what = f"became {bad}" if not finite else "became non-finite"
                raise NonFiniteLossError(f"the training loss {what} at step {step + 1}"
                                         f"{f' on rank {int(bad_rank)}' if info.enabled else ''}; stopped. "
                                         f"{run_dir} keeps {saved}; try a lower TrainConfig.lr or a "
                                         f"TrainConfig.grad_clip")
            step += 1
            running += torch.tensor([loss_value, tick_value, acc_value, 1.0], dtype=torch.float64, device=dev)
            interval = [interval[0] + loss_value, interval[1] + acc_value, interval[2] + 1]
            trace_sum = [trace_sum[0] + loss_value, trace_sum[1] + 1]
            if step % trace_every == 0:
                trace.append([step, round(trace_sum[0] / trace_sum[1], 6)])
                trace_sum = [0.0, 0]
            if bar is not None:
                bar.update(1)
                bar.set_description(_describe(interval[0] / interval[2], interval[1] / interval[2], last_eval),
                                    refresh=False)
            is_last = step == train_config.steps
            stop_now = stop_flag > 0
            if step % train_config.eval_every == 0 or is_last:
                if bar is not None:
                    bar.set_postfix_str(f"evaluating on {len(test_set)} test {task.sample_noun}")
                dist.broadcast_buffers(model, info)  # evaluate (and save) rank 0's BatchNorm statistics
                last_eval = evaluate(model, test_set, train_config.eval_batch_size, dist_info=info, task=task)
                loss_sum, tick_sum, acc_sum, n = dist.all_reduce_sum(running, info).tolist()
                elapsed = time.perf_counter() - started
                metrics.append({
                    "step": step, "epoch": round(step / steps_per_epoch, 4),
                    "train_loss": loss_sum / n, "train_tick_loss": tick_sum / n, "train_accuracy": acc_sum / n,
                    **{f"test_{k}": _scalar(k, v) for k, v in last_eval.scalars().items()},
                    "lr": optimizer.param_groups[0]["lr"], "elapsed_s": round(elapsed, 3),
                    "train_loss_trace": trace,
                })
                trace, trace_sum = [], [0.0, 0]
                running.zero_()
                interval = [0.0, 0.0, 0]
                save()
                if bar is not None:
                    bar.set_postfix_str("", refresh=False)
                    bar.set_description(_describe(metrics[-1]["train_loss"], metrics[-1]["train_accuracy"], last_eval))
                elif log is not None:
                    log(_describe(metrics[-1]["train_loss"], metrics[-1]["train_accuracy"], last_eval, step))
            elif stop_now:
                elapsed = time.perf_counter() - started
                save()
            if stop_now and not is_last:
                interrupted = True
                break
    if bar is not None:
        bar.close()
    return TrainResult(run_dir, step, interrupted, last_eval if not interrupted else None, metrics, flag.signum)


#: training-loss points each metrics.jsonl row keeps (the means of about eval_every / TRACE_POINTS steps each)
TRACE_POINTS = 50


def _train_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, task: Task, data: Dataset,
                idx: torch.Tensor, step: int, cfg: TrainConfig) -> tuple[float, float, float]:
    """One optimiser step over this rank's batch `idx`, in cfg.grad_accum equal micro-batches.

    Returns the task's loss (`Task.loss`: the quantity evaluation reports as test loss), its loss over ticks
    (`Task.tick_loss`; added to the objective with weight cfg.tick_loss_weight) and its batch accuracy
    (`Task.batch_accuracy`).

    Each micro-batch's loss is divided by grad_accum, so the summed gradient is the mean over the batch:
    K micro-batches in one process give the gradient K ranks with one micro-batch each would average.
    """
    optimizer.zero_grad(set_to_none=True)
    loss_total = tick_total = acc_total = 0.0
    micro_batches = idx.chunk(cfg.grad_accum)
    for i, micro in enumerate(micro_batches):
        x, y = data.batch(micro)
        if cfg.augment:
            # Seeded from (seed, step, first index): augmentation needs no saved RNG state and a sample is
            # augmented the same way whichever rank or micro-batch it lands in.
            x, y = task.augment_batch(x, y, mix_seed(cfg.seed, step * 1_000_003 + int(micro[0])))
        # DDP all-reduces gradients on the last micro-batch only.
        sync = contextlib.nullcontext() if i == len(micro_batches) - 1 or not hasattr(net, "no_sync") \
            else net.no_sync()
        with sync:
            with torch.autocast(device_of(x).type, dtype=torch.bfloat16, enabled=cfg.bf16):
                out = net(x)
            loss, tick = task.loss(out.predictions, out.certainties, y)
            if cfg.tick_loss_weight > 0:
                tick_loss = task.tick_loss(out.predictions, y)
                objective = loss + cfg.tick_loss_weight * tick_loss
            else:
                with torch.no_grad():
                    tick_loss = task.tick_loss(out.predictions, y)
                objective = loss
            (objective / cfg.grad_accum).backward()
        loss_total += loss.item() / cfg.grad_accum
        tick_total += tick_loss.item() / cfg.grad_accum
        acc_total += task.batch_accuracy(out.predictions, y, tick) / cfg.grad_accum
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
    optimizer.step()
    return loss_total, tick_total, acc_total


def _rng_state(dev: torch.device) -> dict[str, torch.Tensor]:
    """The state of the random generators a training step draws from (dropout's: torch's global generator on
    the CPU and on `dev`); the data order, augmentation and parity samples come from seeded generators of
    their own. Every rank draws the same numbers (each seeds alike and draws for batches of one size), so
    rank 0's state is every rank's."""
    state = {"cpu": torch.get_rng_state()}
    if dev.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(dev)
    elif dev.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor] | None, dev: torch.device, path: Path) -> None:
    """Restore `_rng_state`'s generators (a checkpoint of an older ctm has none: those keep their seeding)."""
    if state is None:
        return
    try:
        torch.set_rng_state(state["cpu"])
        if dev.type == "cuda" and "cuda" in state:  # one saved on another kind of device keeps its seeding
            torch.cuda.set_rng_state(state["cuda"], dev)
        elif dev.type == "mps" and "mps" in state:
            torch.mps.set_rng_state(state["mps"])
    except (RuntimeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise ckpt.RunDirError(f"{path}: field 'rng_state' is not a random generator's state ({first}); the run "
                               f"cannot be resumed") from None


def _scalar(name: str, value: Any) -> float:
    """A task's metric as the number metrics.jsonl records (a tensor, numpy or Python number; not a bool)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"the task's metric {name!r} must be a number, got {value!r} (Metrics.result().scalars())"
                         ) from None


def _describe(loss: float, acc: float, ev: EvalResult | None, step: int | None = None) -> str:
    """The progress line: train loss and accuracy are means over the steps since the last evaluation (as in
    metrics.jsonl), test figures those of the last evaluation."""
    text = f"train loss {loss:.3f} acc {acc:.3f} (mean since last eval)"
    if ev is not None:
        text += f" | test loss {ev.loss:.3f} acc {ev.accuracy:.4f}"
    return text if step is None else f"step {step}: {text}"


def _describe_model(model: torch.nn.Module) -> str:
    """The "model: ..." start-up line; the LSTM baseline's names its width and the CTM it is matched to."""
    c = model.config
    hidden = getattr(model, "hidden", None)
    if hidden is None:
        return (f"model: {model.num_parameters():,} parameters; {c.iterations} ticks, {c.d_model} neurons, memory "
                f"{c.memory_length}")
    from ..nn.lstm import ctm_parameters

    return (f"model: LSTM baseline, {model.num_parameters():,} parameters (width {hidden}; the CTM of these "
            f"flags has {ctm_parameters(c):,}); {c.iterations} ticks")


def _startup_lines(run_dir: Path, resume: bool, step: int, model: ContinuousThoughtMachine, task: Task,
                   train_set: Dataset, test_set: Dataset, cfg: TrainConfig, dev: torch.device, info: dist.DistInfo,
                   steps_per_epoch: int) -> list[str]:
    """What a training run is about to do, printed before its first step."""
    ranks = f", {info.world_size} ranks" if info.enabled else ""
    # the epochs of an endless stream (the parity task's) are nominal: not worth a figure
    epochs = f" ({cfg.steps / steps_per_epoch:.2f} epochs)" if steps_per_epoch < 2**30 else ""
    n_train, used = len(train_set), steps_per_epoch * cfg.batch_size  # (the global batch)
    if steps_per_epoch < 2**30 and used < 0.9 * n_train:  # drop_last leaves much of a small set out of each epoch
        epochs = (f" ({cfg.steps / steps_per_epoch:.2f} epochs of {steps_per_epoch} step"
                  f"{'s' if steps_per_epoch != 1 else ''}: each uses {used} of the {n_train} training samples, "
                  f"the rest wait for a later epoch; a batch size that divides {n_train} uses them all)")
    # A run shortened by its steps alone keeps its recipe's warm-up: say what that does to the learning rate.
    short = (f": more than the steps, so the learning rate reaches only {cfg.steps}/{cfg.warmup_steps} of it"
             if cfg.warmup_steps > cfg.steps else "")
    return [
        f"run directory: {run_dir}" + (f" (resuming at step {step})" if resume else ""),
        task.describe_data(train_set, test_set),
        _describe_model(model),
        f"device: {dev}, {torch.get_num_threads()} threads{ranks}",
        f"training: {cfg.steps} steps{epochs} at batch {cfg.batch_size}, "
        f"lr {cfg.lr:g} ({cfg.schedule}, {cfg.warmup_steps} warm-up steps{short}); evaluation every {cfg.eval_every} "
        f"steps on the {len(test_set)} test {task.sample_noun}",
    ]


def _fresh_run_dir_problem(run_dir: Path) -> str | None:
    """Why a new run cannot start in `run_dir`, or None. A folder that holds only the config.json of a
    start that failed or was killed before its first checkpoint was published is reused; anything else
    already there is never overwritten."""
    if run_dir.exists() and not run_dir.is_dir():
        return f"{run_dir} is a file, not a folder; choose another run directory"
    if not run_dir.is_dir():
        return None
    if ckpt.has_run_files(run_dir):
        return f"{run_dir} already holds a run; resume it or choose another run directory"
    names = {p.name for p in run_dir.iterdir()} - {ckpt.LOCK_FILE}
    if ckpt.CONFIG_FILE in names:  # a start killed in its first save leaves an unpublished checkpoint folder
        names -= {ckpt.CHECKPOINTS_DIR}
    if names - {ckpt.CONFIG_FILE}:
        return (f"{run_dir} is not empty ({', '.join(sorted(names)[:3])}{', ...' if len(names) > 3 else ''}) "
                f"and holds no ctm checkpoint; choose another run directory (ctm does not write over other files)")
    if names:
        try:
            resume_configs(run_dir)
        except ckpt.RunDirError:
            return f"{run_dir} holds a config.json that is not a ctm run's; choose another run directory"
    return None


def resume_configs(run_dir: str | Path) -> tuple[CTMConfig, TrainConfig, dict[str, Any]]:
    """The model and training configs stored in a run directory, for `train(..., resume=True)`."""
    payload = ckpt.read_config(run_dir)
    if "train" not in payload:
        raise ckpt.RunDirError(f"{run_dir}/config.json has no 'train' section: not a training run")
    try:
        return CTMConfig.from_dict(payload["model"]), TrainConfig.from_dict(payload["train"]), payload
    except (TypeError, ValueError) as e:
        raise ckpt.RunDirError(f"{run_dir}/config.json: {e}") from e


def update_stored_train_config(run_dir: str | Path, train_config: TrainConfig) -> None:
    """Rewrite config.json with a changed TrainConfig (e.g. more steps on resume)."""
    payload = ckpt.read_config(run_dir)
    payload["train"] = train_config.to_dict()
    ckpt.write_config(run_dir, CTMConfig.from_dict(payload["model"]),
                      {k: v for k, v in payload.items() if k not in ("model", "ctm_version")})
