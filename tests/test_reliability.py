"""Kills, signals, a second writer, a full disk and old-layout runs: the last good checkpoint always loads
and resumes to the weights of an uninterrupted run."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY_FLAGS, make_synthetic
from safetensors.torch import load_file

from ctm.cli import main
from ctm.nn import kinds as models
from ctm.runs import checkpoint as ckpt

# 12 steps, a checkpoint every 4 (saves 1, 2, 3 at steps 4, 8, 12); 8 steps per epoch, so resume crosses one.
STEPS = 12
RECIPE = ["--steps", str(STEPS), "--batch-size", "32", "--eval-every", "4", "--lr", "3e-3", "--warmup-steps", "2",
          "--seed", "1", "--no-progress", *TINY_FLAGS]


def _child(argv: list[str], point: str, save: int, signals: list[str], err: Path, marker: Path | None) -> None:
    """`ctm ARGV` that, at save number `save` (from 1) and instant `point` of the save sequence
    (ctm.runs.checkpoint.SAVE_POINTS), sends itself each signal of `signals` in turn."""
    # A forked child must not enter the OpenMP thread pool of its parent (GNU libgomp is not fork-safe: with the
    # parent's threads gone, a parallel region waits for them forever). One thread runs no parallel region.
    torch.set_num_threads(1)
    fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    saves = [0]

    def hook(where: str) -> None:
        if where == "tmp-dir-made":
            saves[0] += 1
        if where == point and saves[0] == save:
            for name in signals:
                if name == "PAUSE":  # stay alive holding the run's lock, as a long training would
                    marker.touch()
                    signal.pause()
                os.kill(os.getpid(), getattr(signal, name))

    ckpt._fault_hook = hook
    sys.exit(main([str(a) for a in argv]))


def run_child(point: str, save: int, signals: str, *argv, err: Path, marker: Path | None = None):
    """Run `_child` in a forked process (torch is imported already: fast); a started Process."""
    import multiprocessing

    proc = multiprocessing.get_context("fork").Process(target=_child, args=(
        list(argv), point, save, signals.split(","), err, marker))
    proc.start()
    return proc


def finish(proc, err: Path, timeout: float = 300) -> tuple[int, str]:
    proc.join(timeout)
    assert proc.exitcode is not None, "the child did not finish"
    return proc.exitcode, err.read_text()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("data"), n_train=256, n_test=64)


def run_cli(*args) -> int:
    return main([str(a) for a in args])


# The forked children compute on one thread (see `_child`); so do the runs they are compared with.
pytestmark = pytest.mark.usefixtures("one_thread")


def threads() -> list[str]:
    return ["--threads", str(torch.get_num_threads())]  # subprocesses compute like this process


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The weights of the uninterrupted run."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert run_cli("train", "--data-dir", data, "--out", out, *RECIPE, *threads()) == 0
    return weights(out)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt.current_checkpoint(run_dir).path / ckpt.MODEL_FILE))


def assert_same_weights(run_dir: Path, expected: dict[str, torch.Tensor]) -> None:
    got = weights(run_dir)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)


def assert_clean(run_dir: Path) -> None:
    """One published checkpoint, nothing half-written."""
    assert [p.name for p in (run_dir / ckpt.CHECKPOINTS_DIR).iterdir()] == [ckpt.current_checkpoint(run_dir).path.name]
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    assert not (run_dir / ckpt.MODEL_FILE).exists()


def eval_json(run_dir: Path, data: Path, capsys) -> dict:
    capsys.readouterr()
    assert run_cli("eval", run_dir, "--data-dir", data, "--json") == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("point", ckpt.SAVE_POINTS)
def test_a_kill_at_any_point_of_a_save_leaves_a_readable_resumable_run(point, data, straight, tmp_path, capsys):
    run = tmp_path / "run"
    proc = run_child(point, 2, "SIGKILL", "train", "--data-dir", data, "--out", run, *RECIPE, err=tmp_path / "err")
    rc, err = finish(proc, tmp_path / "err")
    assert rc == -signal.SIGKILL, err
    published = ckpt.SAVE_POINTS.index(point) >= ckpt.SAVE_POINTS.index("pointer-replaced")
    assert ckpt.checkpoint_step(run) == (8 if published else 4)
    assert eval_json(run, data, capsys)["n"] == 64
    assert run_cli("train", "--resume", run, "--no-progress") == 0
    assert_same_weights(run, straight)
    assert_clean(run)
    assert [r["step"] for r in ckpt.read_metrics(run)] == [4, 8, 12]


def test_a_run_killed_in_its_first_save_starts_again(data, straight, tmp_path):
    run = tmp_path / "run"
    proc = run_child("tmp-dir-made", 1, "SIGKILL", "train", "--data-dir", data, "--out", run, *RECIPE,
                     err=tmp_path / "err")
    assert finish(proc, tmp_path / "err")[0] == -signal.SIGKILL
    assert ckpt.current_checkpoint(run) is None and (run / ckpt.CHECKPOINTS_DIR / ".step-000000004.tmp").is_dir()
    assert run_cli("train", "--data-dir", data, "--out", run, *RECIPE) == 0
    assert_same_weights(run, straight)
    assert_clean(run)


def test_a_run_killed_after_its_first_checkpoint_folder_was_complete_resumes_from_it(data, straight, tmp_path,
                                                                                       capsys):
    """Killed between the rename of its first checkpoint folder and the pointer: the folder is complete, so the
    run is not started over (that would delete it); --resume publishes it and goes on."""
    run = tmp_path / "run"
    proc = run_child("dir-renamed", 1, "SIGKILL", "train", "--data-dir", data, "--out", run, *RECIPE,
                     err=tmp_path / "err")
    assert finish(proc, tmp_path / "err")[0] == -signal.SIGKILL
    folder = run / ckpt.CHECKPOINTS_DIR / "step-000000004"
    assert not (run / ckpt.POINTER_FILE).exists() and folder.is_dir()
    capsys.readouterr()
    assert run_cli("train", "--data-dir", data, "--out", run, *RECIPE) == 2
    assert "already holds a run; resume it" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == sorted([ckpt.MODEL_FILE, ckpt.STATE_FILE, ckpt.METRICS_FILE])
    assert run_cli("train", "--resume", run, "--no-progress") == 0
    assert "published again the newest complete checkpoint, checkpoints/step-000000004 (step 4)" in \
        capsys.readouterr().out
    assert_same_weights(run, straight)
    assert_clean(run)


@pytest.mark.parametrize("point", ["model-written", "metrics-written", "pointer-written"])
def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(point, data, straight, tmp_path,
                                                                                  monkeypatch, capsys):
    saves = []

    def full_disk(where: str) -> None:
        saves.extend([1] if where == "tmp-dir-made" else [])
        if where == point and len(saves) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt, "_fault_hook", full_disk)
    run = tmp_path / "run"
    assert run_cli("train", "--data-dir", data, "--out", run, *RECIPE) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert "could not save the checkpoint of step 8" in err[0] and "the disk is full" in err[0]
    assert "previous checkpoint (step 4) is intact" in err[0]
    assert ckpt.checkpoint_step(run) == 4
    assert_clean(run)
    monkeypatch.setattr(ckpt, "_fault_hook", None)
    assert run_cli("train", "--resume", run, "--no-progress") == 0
    assert_same_weights(run, straight)


def test_sigterm_saves_says_how_to_resume_and_exits_143(data, straight, tmp_path):
    """The signal comes in the middle of a save, a second one (SIGHUP) later in the same save: the save
    completes, training stops at the next step with a checkpoint, and the resumed run is the straight one."""
    run = tmp_path / "run"
    proc = run_child("model-written", 1, "SIGTERM", "train", "--data-dir", data, "--out", run, *RECIPE,
                     err=tmp_path / "err")
    rc, err = finish(proc, tmp_path / "err")
    assert rc == 128 + signal.SIGTERM, err
    assert f"Stopped at step 5 by SIGTERM; checkpoint saved. Resume with: ctm train --resume {run}" in err
    assert "Traceback" not in err
    assert ckpt.checkpoint_step(run) == 5
    assert run_cli("train", "--resume", run, "--no-progress") == 0
    assert_same_weights(run, straight)


def test_a_second_signal_during_a_save_waits_for_it(data, tmp_path):
    run = tmp_path / "run"
    proc = run_child("state-written", 1, "SIGHUP,SIGINT", "train", "--data-dir", data, "--out", run, *RECIPE,
                     err=tmp_path / "err")
    rc, err = finish(proc, tmp_path / "err")
    assert rc == 128 + signal.SIGHUP, err
    assert "Stopped at step 5 by SIGHUP" in err and "Traceback" not in err
    assert ckpt.checkpoint_step(run) == 5
    assert_clean(run)


def test_sigterm_from_outside_during_training(data, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ctm", "train", "--data-dir", str(data), "--out", str(run),
                             "--steps", "100000", "--batch-size", "32", "--eval-every", "1", "--no-progress",
                             *TINY_FLAGS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (run / ckpt.POINTER_FILE).exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].endswith(f"Resume with: ctm train --resume {run}"), err
    step = ckpt.checkpoint_step(run)
    assert step >= 1
    assert run_cli("train", "--resume", run, "--steps", step + 1, "--no-progress") == 0
    assert ckpt.checkpoint_step(run) == step + 1


def test_a_signal_during_start_up_or_eval_exits_at_once_with_one_line(data, tmp_path, monkeypatch, capsys):
    import ctm.training.evaluate
    import ctm.training.loop

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal did not stop ctm")

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    monkeypatch.setattr(ctm.data.images, "load_splits", signalled)  # what the image task reads with
    assert run_cli("train", "--data-dir", data, "--out", tmp_path / "run", *RECIPE) == 143
    assert capsys.readouterr().err == "ctm train: interrupted (SIGTERM)\n"
    assert not (tmp_path / "run").exists()
    monkeypatch.undo()
    assert run_cli("train", "--data-dir", data, "--out", tmp_path / "run", "--steps", "4", *RECIPE[2:]) == 0
    monkeypatch.setattr(ctm.training.evaluate, "evaluate", signalled)
    capsys.readouterr()
    assert run_cli("eval", tmp_path / "run", "--data-dir", data) == 143
    assert capsys.readouterr().err == "ctm eval: interrupted (SIGTERM)\n"
    import ctm.pictures.figures

    monkeypatch.setattr(ctm.pictures.figures, "save_gif", signalled)
    assert run_cli("viz", tmp_path / "run", "--data-dir", data) == 143
    assert capsys.readouterr().err == "ctm viz: interrupted (SIGTERM)\n"
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # main() put the handlers back


def test_one_writer_per_run_and_a_killed_writers_lock_never_blocks(data, straight, tmp_path, capsys):
    run = tmp_path / "run"
    first = run_child("previous-removed", 1, "PAUSE", "train", "--data-dir", data, "--out", run, *RECIPE,
                      err=tmp_path / "err", marker=tmp_path / "paused")
    deadline = time.monotonic() + 120
    while not (tmp_path / "paused").exists():
        assert first.is_alive() and time.monotonic() < deadline, (tmp_path / "err").read_text()
        time.sleep(0.05)
    try:
        for argv, message in ((["train", "--resume", run], f"being trained by another ctm process (PID {first.pid})"),
                              (["train", "--data-dir", data, "--out", run, *RECIPE], "already holds a run")):
            capsys.readouterr()
            assert run_cli(*argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and message in err[0], err
        assert eval_json(run, data, capsys)["n"] == 64  # readers need no lock
    finally:
        first.kill()
        first.join()
    assert run_cli("train", "--resume", run, "--no-progress") == 0
    assert_same_weights(run, straight)


_LOCK_AND_LEAVE = """
import subprocess, sys
from ctm.runs import checkpoint as ckpt

lock = ckpt.RunLock(sys.argv[1]).acquire()
child = subprocess.Popen(["sleep", "300"], pass_fds=[lock._fd], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)  # inherits the locked descriptor
print(child.pid, flush=True)
"""


def test_a_lock_held_after_its_recorded_process_ended_does_not_name_that_process(tmp_path):
    """A writer that started a process inheriting the lock's descriptor, then ended: the lock is still held,
    by a process other than the PID in .lock, and the message says so."""
    run = tmp_path / "run"
    run.mkdir()
    writer = subprocess.run([sys.executable, "-c", _LOCK_AND_LEAVE, str(run)], capture_output=True, text=True,
                            timeout=120)
    assert writer.returncode == 0, writer.stderr
    holder = int(writer.stdout)
    try:
        with pytest.raises(ckpt.RunLockedError) as e:
            ckpt.RunLock(run).acquire()
        message = str(e.value)
        assert "\n" not in message
        recorded = (run / ckpt.LOCK_FILE).read_text().strip()
        assert f"the PID recorded in {run / ckpt.LOCK_FILE} ({recorded}) is no longer running" in message, message
        assert message.startswith(f"{run} is locked by another process") and "being trained by" not in message
    finally:
        os.kill(holder, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:  # the kernel releases the lock with its last holder
        try:
            ckpt.RunLock(run).acquire().release()
            break
        except ckpt.RunLockedError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_runs_in_the_old_layout_load_and_resume(data, straight, tmp_path, capsys):
    run = tmp_path / "run"
    from ctm.training import loop as tr

    cfg = tr.make_train_config("default", steps=STEPS, batch_size=32, eval_every=4, lr=3e-3, warmup_steps=2,
                               augment=False, seed=1)
    from helpers import TINY

    tr.train(run, TINY, cfg, data_dir=str(data), stop=lambda step: step == 6)
    # Rewrite it as the previous version of ctm left runs: the checkpoint's files at the top level.
    for name in (ckpt.MODEL_FILE, ckpt.STATE_FILE, ckpt.METRICS_FILE):
        shutil.move(ckpt.current_checkpoint(run).path / name, run / name)
    shutil.rmtree(run / ckpt.CHECKPOINTS_DIR)
    (run / ckpt.POINTER_FILE).unlink()
    assert ckpt.checkpoint_step(run) == 6 and [r["step"] for r in ckpt.read_metrics(run)] == [4]
    assert eval_json(run, data, capsys)["n"] == 64
    assert run_cli("train", "--resume", run, "--no-progress") == 0
    assert_same_weights(run, straight)
    assert_clean(run)
    assert [r["step"] for r in ckpt.read_metrics(run)] == [4, 8, 12]


def test_a_run_with_dropout_resumes_to_the_straight_runs_weights_bit_exact(data, tmp_path):
    """Dropout draws its masks from torch's global RNG: the checkpoint keeps that RNG's state, so the resumed run
    draws the masks the straight run drew. A checkpoint without it (an older ctm's) still resumes."""
    from helpers import TINY

    from ctm.training import loop as tr

    model = TINY.replace(dropout=0.3, nlm_dropout=0.3)
    cfg = tr.make_train_config("default", steps=STEPS, batch_size=32, eval_every=4, lr=3e-3, warmup_steps=2,
                               augment=False, seed=1)
    tr.train(tmp_path / "straight", model, cfg, data_dir=str(data))
    tr.train(tmp_path / "run", model, cfg, data_dir=str(data), stop=lambda step: step == 6)
    assert ckpt.checkpoint_step(tmp_path / "run") == 6
    shutil.copytree(tmp_path / "run", tmp_path / "old")
    edit_state(lambda s: {k: v for k, v in s.items() if k != "rng_state"})(tmp_path / "old")
    for run in (tmp_path / "run", tmp_path / "old"):
        assert run_cli("train", "--resume", run, "--no-progress") == 0
        assert ckpt.checkpoint_step(run) == STEPS
    expected = weights(tmp_path / "straight")
    got, old = weights(tmp_path / "run"), weights(tmp_path / "old")
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert not all(torch.equal(old[k], expected[k]) for k in expected)  # other masks: the test tells them apart


@pytest.mark.slow
def test_twenty_kills_at_random_times(data, tmp_path, capsys):
    recipe = ["--steps", "60", "--batch-size", "32", "--eval-every", "1", "--lr", "3e-3", "--seed", "2",
              "--no-progress", *TINY_FLAGS]  # a save every step: many kills land inside saves
    assert run_cli("train", "--data-dir", data, "--out", tmp_path / "straight", *recipe, *threads()) == 0
    expected = weights(tmp_path / "straight")
    run = tmp_path / "run"
    rng = random.Random(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kills = 0
    while kills < 20:
        resume = run.exists() and ckpt.current_checkpoint(run) is not None
        if resume and ckpt.checkpoint_step(run) == 60:  # killed after its last save (writing its pictures)
            assert_same_weights(run, expected)
            shutil.rmtree(run)
            resume = False
        argv = ["--resume", str(run)] if resume else ["--data-dir", str(data), "--out", str(run), *recipe]
        proc = subprocess.Popen([sys.executable, "-m", "ctm", "train", *argv, *threads()], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            proc.wait(timeout=rng.uniform(2.0, 6.0))
        except subprocess.TimeoutExpired:
            proc.kill()
            kills += 1
        _, err = proc.communicate()
        assert proc.returncode in (0, -signal.SIGKILL), err
        if proc.returncode == 0:  # it finished before the kill: check it, then start again
            assert_same_weights(run, expected)
            shutil.rmtree(run)
        elif ckpt.current_checkpoint(run) is not None:
            assert eval_json(run, data, capsys)["n"] == 64
    if ckpt.current_checkpoint(run) is None:
        assert run_cli("train", "--data-dir", data, "--out", run, *recipe, *threads()) == 0
    elif ckpt.checkpoint_step(run) < 60:
        assert run_cli("train", "--resume", run, *threads()) == 0
    assert_same_weights(run, expected)
    assert_clean(run)


# ----------------------------------------------------------------------------------------------------------
# Malformed run directories: one line naming the file and the field, exit 2, never a traceback
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("good") / "run"
    assert run_cli("train", "--data-dir", data, "--out", out, "--steps", "4", *RECIPE[2:]) == 0
    return out


def edit_config(change):
    def edit(run: Path) -> None:
        payload = json.loads((run / ckpt.CONFIG_FILE).read_text())
        change(payload)
        (run / ckpt.CONFIG_FILE).write_text(json.dumps(payload))
    return edit


def edit_state(change):
    def edit(run: Path) -> None:
        path = ckpt.current_checkpoint(run).path / ckpt.STATE_FILE
        torch.save(change(torch.load(path, weights_only=True)), path)
    return edit


def other_models_optimizer(state: dict) -> dict:
    from helpers import TINY

    import ctm

    model = ctm.CTM(TINY.replace(d_model=32))
    optimizer = torch.optim.AdamW(model.parameters())
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()
    return {**state, "optimizer": optimizer.state_dict()}


def write_metrics_line(line: str):
    def edit(run: Path) -> None:
        path = ckpt.current_checkpoint(run).path / ckpt.METRICS_FILE
        path.write_text(path.read_text() + line + "\n")
    return edit


def weights_as(dtype: torch.dtype):
    def edit(run: Path) -> None:
        from safetensors.torch import save_file

        path = ckpt.current_checkpoint(run).path / ckpt.MODEL_FILE
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
        save_file(tensors, str(path), metadata={"step": "4"})
    return edit


def weights_metadata(step: str):
    def edit(run: Path) -> None:
        from safetensors.torch import save_file

        path = ckpt.current_checkpoint(run).path / ckpt.MODEL_FILE
        save_file(load_file(str(path)), str(path), metadata={"step": step})
    return edit


def write_pointer(payload):
    return lambda run: (run / ckpt.POINTER_FILE).write_text(json.dumps(payload))


def nested(run: Path) -> None:
    (run / ckpt.CONFIG_FILE).write_text('{"model": {}, "train": ' + "[" * 100_000 + "]" * 100_000 + "}")


EVAL, RESUME, VIZ = ["eval"], ["train", "--resume"], ["viz"]
MALFORMED = {
    "dataset is a string": (EVAL, edit_config(lambda p: p.update(dataset="mnist")), "'dataset' must be an object"),
    "dataset.name is a list": (EVAL, edit_config(lambda p: p["dataset"].update(name=["mnist"])),
                               "'dataset.name' must be str"),
    "train.dataset is a list": (RESUME, edit_config(lambda p: p["train"].update(dataset=["mnist"])),
                                "'train.dataset' must be a string"),
    "data_dir is a number": (EVAL, edit_config(lambda p: p["dataset"].update(data_dir=5)),
                             "'dataset.data_dir' must be str or null"),
    "deeply nested": (EVAL, nested, "nests too deeply"),
    "no dataset section (viz)": (VIZ, edit_config(lambda p: [p.pop("dataset"), p.pop("train")]),
                                 "records no dataset"),
    "model is a list": (EVAL, edit_config(lambda p: p.update(model=[24])), "'model' must be an object"),
    "state without optimizer": (RESUME, edit_state(lambda s: {k: v for k, v in s.items() if k != "optimizer"}),
                                "has no field 'optimizer'"),
    "state is a list": (RESUME, edit_state(lambda s: [s]), "expected a dict, got list"),
    "optimizer is a string": (RESUME, edit_state(lambda s: {**s, "optimizer": "adam"}),
                              "field 'optimizer' is not an optimiser state"),
    "another model's optimizer": (RESUME, edit_state(other_models_optimizer), "belongs to another model"),
    "state step is a string": (RESUME, edit_state(lambda s: {**s, "step": "4"}), "field 'step' must be"),
    "rng state a float tensor": (RESUME, edit_state(lambda s: {**s, "rng_state": {"cpu": torch.zeros(5056)}}),
                                 "field 'rng_state' must map 'cpu'"),
    "rng state too short": (RESUME, edit_state(lambda s: {**s, "rng_state": {"cpu": s["rng_state"]["cpu"][:8]}}),
                            "field 'rng_state' is not a random generator's state"),
    "metrics line 1": (RESUME, write_metrics_line("1"), "line 2 is a int, not a JSON object"),
    "metrics line [1,2]": (RESUME, write_metrics_line("[1, 2]"), "line 2 is a list, not a JSON object"),
    "metrics line without step": (RESUME, write_metrics_line('{"foo": 1}'), "line 2: field 'step' must be"),
    "metrics step not a number": (RESUME, write_metrics_line('{"step": "x"}'), "line 2: field 'step' must be"),
    "metrics value a string": (RESUME, write_metrics_line('{"step": 1, "test_loss": "x"}'),
                               "field 'test_loss' must be a number"),
    "metrics loss trace malformed": (RESUME, write_metrics_line('{"step": 1, "train_loss_trace": [[1, "x"]]}'),
                                     "field 'train_loss_trace' must be a list of at most 10,000 [step, loss] pairs"),
    "weights int32": (EVAL, weights_as(torch.int32), "is stored as I32, but the model holds F32"),
    "weights bool": (EVAL, weights_as(torch.bool), "is stored as BOOL"),
    "weights float16": (EVAL, weights_as(torch.float16), "is stored as F16"),
    "weights float64": (EVAL, weights_as(torch.float64), "is stored as F64"),
    "weights step abc": (RESUME, weights_metadata("abc"), "metadata field 'step' must be an integer, got 'abc'"),
    "weights not safetensors": (EVAL, lambda run: (ckpt.current_checkpoint(run).path / ckpt.MODEL_FILE)
                                .write_bytes(b"\xff" * 64), "could not be read"),
    "config sizes edited": (EVAL, edit_config(lambda p: p["model"].update(d_model=32)),
                            "does not match the sizes in config.json"),
    "pointer step a string": (EVAL, write_pointer({"step": "4", "dir": "checkpoints/step-000000004"}),
                              "'step' must be a non-negative integer"),
    "pointer outside the run": (EVAL, write_pointer({"step": 4, "dir": "../../elsewhere"}),
                                "'dir' must name a folder checkpoints/step-N"),
    "pointer to a missing checkpoint": (EVAL, write_pointer({"step": 9, "dir": "checkpoints/step-000000009"}),
                                        "which is missing"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_run_file_is_one_line_naming_it(case, good_run, data, tmp_path, capsys):
    command, edit, message = MALFORMED[case]
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    edit(run)
    capsys.readouterr()
    argv = [*command, run, "--data-dir", data] + (["--steps", "8"] if command == RESUME else [])
    rc = run_cli(*argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in captured.err, captured
    assert message in lines[0], lines[0]
    assert str(run) in lines[0]


_KILLED_WHILE_DRAWING = """
import os, signal, sys
from ctm._io import atomic_write

atomic_write(sys.argv[1], lambda tmp: os.kill(os.getpid(), signal.SIGKILL))  # as SIGKILL in savefig would
"""


def test_the_temp_file_of_a_picture_killed_mid_write_goes_with_the_next_write(good_run, data, tmp_path, capsys):
    """Nothing runs after SIGKILL, so `ctm eval --plot` killed while drawing leaves its temp file; the next
    writer of ticks.png removes it (by its name: the dead writer's PID), not a live writer's, nor a link."""
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    killed = subprocess.Popen([sys.executable, "-c", _KILLED_WHILE_DRAWING, str(run / "ticks.png")])
    assert killed.wait(timeout=120) == -signal.SIGKILL
    assert len(list(run.glob(".ticks.png.*.tmp"))) == 1
    live = run / f".ticks.png.{os.getpid()}.abcdefgh.tmp"  # a writer still at work: this process
    live.write_bytes(b"")
    link = run / f".ticks.png.{killed.pid}.zzzzzzzz.tmp"
    link.symlink_to(live)
    capsys.readouterr()
    assert run_cli("eval", run, "--data-dir", data, "--plot") == 0
    assert (run / "ticks.png").stat().st_size > 0
    assert sorted(p.name for p in run.glob(".ticks.png.*.tmp")) == sorted([live.name, link.name])


# The child's own peak resident memory in KiB. Not ru_maxrss: Linux carries that across exec, so a child of
# a large pytest process would report the parent's size.
PEAK_RSS_KIB = "int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))"


def test_an_oversized_config_is_refused_before_anything_is_allocated(good_run, data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    edit_config(lambda p: p["model"].update(d_model=30000))(run)
    code = ("import sys; from ctm.cli import main; rc = main(sys.argv[1:]); "
            f"print({PEAK_RSS_KIB}); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "eval", str(run), "--data-dir", str(data)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and "does not match the sizes in config.json" in proc.stderr, proc.stderr
    assert int(proc.stdout) < 700_000, proc.stdout  # KiB: torch itself, not a 30000-neuron model (7 GB)


def gzip_bomb(path: Path, header: bytes, inflated_mib: int) -> None:
    """A gzip file of about 1 MiB per GiB: `header`, then `inflated_mib` MiB of zeros (one deflated MiB
    repeated; each repetition starts from a full flush, so the copies decode alike)."""
    import zlib

    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1 << 20)
    start = deflate.compress(header) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    end = deflate.flush()
    crc = zlib.crc32(header)
    for _ in range(inflated_mib):
        crc = zlib.crc32(zeros, crc)
    size = (len(header) + inflated_mib * len(zeros)) % 2**32
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + start)
        for _ in range(inflated_mib):
            f.write(block)
        f.write(end + crc.to_bytes(4, "little") + size.to_bytes(4, "little"))


def test_a_gzip_bomb_is_refused_from_its_header_without_inflating_it(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    gzip_bomb(path, bytes([0, 0, 8, 3]) + struct.pack(">3I", 10, 28, 28), 1024)
    assert path.stat().st_size < 2 << 20
    code = ("import sys\n"
            "from ctm.data.idx import DataError, read_idx\n"
            f"before = {PEAK_RSS_KIB}\n"
            "try:\n    read_idx(sys.argv[1])\nexcept DataError as e:\n    print(e)\n"
            f"print({PEAK_RSS_KIB} - before)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300)
    message, grown_kib = proc.stdout.strip().splitlines()
    assert str(path) in message and "more than 1048576 trailing bytes" in message, proc
    assert int(grown_kib) < 64 * 1024, proc.stdout  # KiB: a few MiB of buffers, not the GiB it inflates to


# ----------------------------------------------------------------------------------------------------------
# Smaller promises
# ----------------------------------------------------------------------------------------------------------


def test_eval_json_is_valid_json_for_a_model_with_nan_weights(good_run, data, tmp_path, capsys):
    from safetensors.torch import save_file

    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    path = ckpt.current_checkpoint(run).path / ckpt.MODEL_FILE
    tensors = load_file(str(path))
    tensors = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"step": "4"})
    capsys.readouterr()
    assert run_cli("eval", run, "--data-dir", data, "--json") == 0

    def no_nan(constant: str):
        raise AssertionError(f"bare {constant} in the JSON")

    result = json.loads(capsys.readouterr().out, parse_constant=no_nan)
    assert result["loss"] is None and result["n"] == 64


def test_a_path_that_is_not_utf8_is_refused_before_anything_is_written(data, tmp_path, capsys):
    out = tmp_path / os.fsdecode(b"run-\xff")
    assert run_cli("train", "--data-dir", data, "--out", out, *RECIPE) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the path is not valid UTF-8" in err[0], err
    assert not out.exists()


def test_a_model_too_large_to_build_names_its_config_not_the_batch(good_run, data, monkeypatch, capsys):
    real = models.MODEL_KINDS["ctm"]

    def too_large(config):  # the shapes check builds on the meta device, which allocates nothing
        if torch.empty(0).device.type != "meta":
            raise MemoryError
        return real(config)

    monkeypatch.setitem(models.MODEL_KINDS, "ctm", too_large)
    assert run_cli("eval", good_run, "--data-dir", data) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"the model {good_run / ckpt.CONFIG_FILE} describes does not fit in memory" in err[0]
    assert "--batch-size" not in err[0]


def test_a_model_too_large_to_build_names_the_flag_its_size_comes_from(data, tmp_path, capsys):
    """Neuron-level models of 10**12 hidden units (768 TB of weights, beyond any address space: no allocator
    hands it out, whatever the overcommit setting): the one line names that flag, not sizes that are small."""
    capsys.readouterr()
    assert run_cli("train", "--data-dir", data, "--out", tmp_path / "run", "--steps", "1", "--no-progress",
                   *TINY_FLAGS, "--memory-hidden-dims", 10**12) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # CTMConfig refuses it before anything is built, naming the part and the flags its size multiplies
    assert len(err) == 1 and err[0].startswith("ctm train: error: --d-model=24, --memory-length=4, "
                                               "--memory-hidden-dims=1000000000000 make the neuron-level models "
                                               "too large to build"), err
    assert "--d-input" not in err[0] and "d_model" not in err[0], err[0]


def test_the_command_line_starts_without_torch_so_an_early_ctrl_c_is_one_line():
    code = "import sys, ctm.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120).stdout.strip() == "False"
