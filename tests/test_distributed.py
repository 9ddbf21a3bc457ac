"""torchrun with 2 gloo processes trains exactly like 1 process accumulating 2 micro-batches."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import torch
from helpers import TINY_FLAGS, make_synthetic
from safetensors.torch import load_file

from ctm.runs import checkpoint as ckpt


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], torchrun: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                "127.0.0.1", "--master-port", str(_free_port())] if torchrun else [sys.executable]
    proc = subprocess.run([*launcher, "-m", "ctm", "train", *args], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _in_checkpoint(run_dir, name: str):
    return ckpt.current_checkpoint(run_dir).path / name


def test_two_gloo_ranks_equal_grad_accum_and_resume(tmp_path):
    data = make_synthetic(tmp_path / "data", n_train=640, n_test=100)
    common = ["--data-dir", str(data), "--batch-size", "32", "--lr", "3e-3", "--schedule", "constant",
              "--warmup-steps", "0", "--grad-clip", "1.0", "--augment", "--eval-every", "3", "--no-progress",
              "--threads", "1", *TINY_FLAGS]
    single, multi = tmp_path / "single", tmp_path / "multi"
    _run(["--out", str(single), "--steps", "8", "--grad-accum", "2", *common], torchrun=False)
    _run(["--out", str(multi), "--steps", "5", *common], torchrun=True)
    assert {p.name for p in multi.iterdir()} == {"config.json", "checkpoint.json", "checkpoints", ".lock",
                                                 "thinking.gif", "curves.png"}
    assert torch.load(_in_checkpoint(multi, ckpt.STATE_FILE), weights_only=True)["world_size"] == 2
    proc = _run(["--resume", str(multi), "--steps", "8", "--data-dir", str(data), "--no-progress",
                 "--threads", "1"], torchrun=True)
    assert proc.stdout.count("Finished 8 steps") == 1  # only rank 0 prints

    a, b = (load_file(str(_in_checkpoint(run, ckpt.MODEL_FILE))) for run in (single, multi))
    compared = 0
    for name in a:
        if "running_" in name or "num_batches" in name:
            continue  # BatchNorm statistics: rank 0 saw half of what the accumulating process saw
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)
        compared += 1
    assert compared > 20
    rows_a, rows_b = ckpt.read_metrics(single), ckpt.read_metrics(multi)
    assert [r["step"] for r in rows_a] == [3, 6, 8]
    assert [r["step"] for r in rows_b] == [3, 5, 6, 8]  # the first 2-rank run ended (and evaluated) at 5
    assert abs(rows_a[0]["train_loss"] - rows_b[0]["train_loss"]) < 1e-5  # all-reduced over both ranks


_NAN_ON_RANK_1 = """
import math, os, sys
import torch
import ctm.tasks.base as tr  # the task's loss (the image task's is certainty_loss)
from ctm.cli import main

real, calls = tr.certainty_loss, [0]

def exploding(*args, **kwargs):
    loss, tick = real(*args, **kwargs)
    if torch.is_inference_mode_enabled():  # evaluation asks the task's loss too
        return loss, tick
    calls[0] += 1
    return (loss * math.nan if os.environ["RANK"] == "1" and calls[0] == 4 else loss), tick

tr.certainty_loss = exploding
sys.exit(main(sys.argv[1:]))
"""


def test_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    data = make_synthetic(tmp_path / "data", n_train=320, n_test=60)
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(_NAN_ON_RANK_1)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                           "127.0.0.1", "--master-port", str(_free_port()), str(script), "train", "--data-dir",
                           str(data), "--out", str(out), "--steps", "10", "--batch-size", "16", "--eval-every", "3",
                           "--no-progress", "--threads", "1", *TINY_FLAGS],
                          capture_output=True, text=True, env=env, timeout=120)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    assert "became nan at step 4 on rank 1" in text  # rank 1's own message
    assert "became non-finite at step 4 on rank 1" in text  # rank 0 learnt it in the same collective
    assert "last good checkpoint (step 3)" in text
    assert ckpt.weights_step(out) == 3
    assert torch.load(_in_checkpoint(out, ckpt.STATE_FILE), weights_only=True)["step"] == 3


def _limit_file_size() -> None:
    """Run in the child before exec: files it writes may not exceed 16 KiB (ulimit -f), which binds root too.
    config.json fits; the first checkpoint's weights do not, so that write fails (EFBIG: Python ignores
    SIGXFSZ)."""
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))


def test_a_failed_save_on_rank_0_stops_every_rank_at_once_with_its_one_line(tmp_path):
    """Rank 0 writes the checkpoint; the others wait for its outcome and raise its one-line error with it,
    instead of a peer's connection error (or the --dist-timeout) in their next collective."""
    data = make_synthetic(tmp_path / "data", n_train=320, n_test=60)
    out = tmp_path / "run"
    port = _free_port()
    ranks = []
    started = time.monotonic()
    for rank in range(2):  # launched by hand, as torchrun would (torchrun kills the rest when one rank ends)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        ranks.append(subprocess.Popen(
            [sys.executable, "-m", "ctm", "train", "--data-dir", str(data), "--out", str(out), "--steps", "10",
             "--batch-size", "16", "--eval-every", "3", "--no-progress", "--threads", "1", "--dist-timeout", "300",
             *TINY_FLAGS], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            preexec_fn=_limit_file_size))
    results = [proc.communicate(timeout=200) for proc in ranks]
    assert time.monotonic() - started < 100  # a fraction of the 300 s --dist-timeout
    expected = (f"ctm train: error: could not save the checkpoint of step 3 in {out}: File too large; no checkpoint "
                f"was saved before")
    for proc, (_, err) in zip(ranks, results, strict=True):
        assert proc.returncode == 2, err
        assert err.strip().splitlines()[-1] == expected, err
        assert "Traceback" not in err, err
    assert ckpt.current_checkpoint(out) is None
