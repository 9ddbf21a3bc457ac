"""A run directory may come from someone else: a missing or odd pointer loses no checkpoint, links never lead
reads, writes or clean-up out of the run, and readers beside a writer never fail on a checkpoint it replaced."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from helpers import TINY_FLAGS, make_synthetic

from ctm.cli import main
from ctm.runs import checkpoint as ckpt

STEPS = 8
RECIPE = ["--steps", str(STEPS), "--batch-size", "32", "--eval-every", "4", "--lr", "3e-3", "--warmup-steps", "2",
          "--seed", "1", "--no-progress", "--threads", "1", *TINY_FLAGS]
STEP_DIR = f"{ckpt.CHECKPOINTS_DIR}/step-{STEPS:09d}"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("data"), n_train=128, n_test=32)


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> Path:
    """A run that trained all its steps: one checkpoint (step 8), its pictures."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert cli("train", "--data-dir", data, "--out", run, *RECIPE) == 0
    assert ckpt.checkpoint_step(run) == STEPS
    return run


def cli(*args) -> int:
    return main([str(a) for a in args])


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root`, not following links: its kind and content (a link: its target)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                found[str(path.relative_to(root))] = ("link", os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                found[str(path.relative_to(root))] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                found[str(path.relative_to(root))] = ("dir" if stat.S_ISDIR(info.st_mode) else "other",)
    return found


def checkpoint_files(run: Path) -> set[str]:
    """The regular files under RUN/checkpoints (through no link)."""
    folder = run / ckpt.CHECKPOINTS_DIR
    if folder.is_symlink() or not folder.is_dir():
        return set()
    return {k for k, v in snapshot(folder).items() if v[0] == "file"}


def copy_run(finished: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the finished run and, beside it, a folder of someone else's files (another run's checkpoint
    folder, a note) that nothing may change."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    outside = tmp_path / "outside"
    (outside / "other-run" / "checkpoints" / "step-000000004").mkdir(parents=True)
    (outside / "other-run" / "checkpoints" / "step-000000004" / ckpt.MODEL_FILE).write_bytes(b"another run")
    (outside / "other-run" / "checkpoints" / "notes.txt").write_text("keep me")
    (outside / "victim.txt").write_text("a user's file\n")
    return run, outside


def move_out(path: Path, outside: Path) -> Path:
    """Move `path` out of the run and leave a link to it in its place."""
    target = outside / f"moved-{path.name}"
    shutil.move(path, target)
    path.symlink_to(target, target_is_directory=target.is_dir())
    return target


def tamper_pointer_missing(run, outside):
    (run / ckpt.POINTER_FILE).unlink()


def tamper_pointer_dangling(run, outside):
    (run / ckpt.POINTER_FILE).unlink()
    (run / ckpt.POINTER_FILE).symlink_to(outside / "nowhere.json")


def tamper_pointer_directory(run, outside):
    (run / ckpt.POINTER_FILE).unlink()
    (run / ckpt.POINTER_FILE).mkdir()
    (run / ckpt.POINTER_FILE / "inside.txt").write_text("x")


def tamper_pointer_linked_out(run, outside):
    move_out(run / ckpt.POINTER_FILE, outside)


def tamper_pointer_outside_the_run(run, outside):
    (run / ckpt.POINTER_FILE).write_text(json.dumps({"step": 4, "dir": "../outside/other-run/checkpoints/step-4"}))


def tamper_pointer_names_a_missing_step(run, outside):
    (run / ckpt.POINTER_FILE).write_text(json.dumps({"step": 99, "dir": "checkpoints/step-000000099"}))


def tamper_pointer_huge(run, outside):
    (run / ckpt.POINTER_FILE).write_text(" " * (ckpt.POINTER_LIMIT + 10) + "{}")


def tamper_step_folder_missing(run, outside):
    shutil.rmtree(run / STEP_DIR)


def tamper_step_folder_linked_out(run, outside):
    move_out(run / STEP_DIR, outside)


def tamper_stale_step_folder_linked_out(run, outside):
    (run / ckpt.CHECKPOINTS_DIR / "step-000000004").symlink_to(outside / "other-run" / "checkpoints" / "step-000000004")


def tamper_checkpoints_linked_out(run, outside):
    move_out(run / ckpt.CHECKPOINTS_DIR, outside)


def tamper_checkpoints_link_to_another_run(run, outside):
    shutil.copytree(run / ckpt.CHECKPOINTS_DIR / f"step-{STEPS:09d}",
                    outside / "other-run" / "checkpoints" / f"step-{STEPS:09d}")
    shutil.rmtree(run / ckpt.CHECKPOINTS_DIR)
    (run / ckpt.CHECKPOINTS_DIR).symlink_to(outside / "other-run" / "checkpoints", target_is_directory=True)


def tamper_foreign_files_in_checkpoints(run, outside):
    (run / ckpt.CHECKPOINTS_DIR / "notes.txt").write_text("mine")
    (run / ckpt.CHECKPOINTS_DIR / "step-000000002").mkdir()
    (run / ckpt.CHECKPOINTS_DIR / "step-000000002" / "README").write_text("not ctm's")


def tamper_weights_linked_out(run, outside):
    move_out(run / STEP_DIR / ckpt.MODEL_FILE, outside)


def tamper_config_linked_out(run, outside):
    move_out(run / ckpt.CONFIG_FILE, outside)


def tamper_lock_linked_out(run, outside):
    (run / ckpt.LOCK_FILE).unlink(missing_ok=True)
    (run / ckpt.LOCK_FILE).symlink_to(outside / "victim.txt")


def tamper_lock_dangling(run, outside):
    (run / ckpt.LOCK_FILE).unlink(missing_ok=True)
    (run / ckpt.LOCK_FILE).symlink_to(outside / "created-by-ctm.txt")


def tamper_lock_hard_link(run, outside):
    (run / ckpt.LOCK_FILE).unlink(missing_ok=True)
    os.link(outside / "victim.txt", run / ckpt.LOCK_FILE)


def tamper_pointer_missing_beside_old_layout_files(run, outside):
    """A migrated run of the old layout killed before its old files went, then its pointer lost."""
    (run / ckpt.POINTER_FILE).unlink()
    for name in (ckpt.MODEL_FILE, ckpt.STATE_FILE, ckpt.METRICS_FILE):
        shutil.copy(run / STEP_DIR / name, run / name)


def tamper_pointer_missing_and_checkpoint_incomplete(run, outside):
    (run / ckpt.POINTER_FILE).unlink()
    (run / STEP_DIR / ckpt.STATE_FILE).unlink()


TAMPERINGS = {name[len("tamper_"):]: f for name, f in dict(globals()).items() if name.startswith("tamper_")}
# Each command is run on the tampered run in turn; the last two would publish a new checkpoint.
COMMANDS = (["eval", "{run}", "--data-dir", "{data}", "--json"],
            ["train", "--resume", "{run}", "--no-progress", "--threads", "1"],
            ["train", "--data-dir", "{data}", "--out", "{run}", *RECIPE],
            ["train", "--resume", "{run}", "--steps", str(STEPS + 4), "--no-progress", "--threads", "1"])


@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
def test_a_tampered_run_changes_nothing_outside_and_loses_no_checkpoint(tampering, finished, data, tmp_path, capsys):
    run, outside = copy_run(finished, tmp_path)
    TAMPERINGS[tampering](run, outside)
    before_outside = snapshot(outside)
    for command in COMMANDS:
        before = checkpoint_files(run)
        capsys.readouterr()
        rc = cli(*[a.format(run=run, data=data) for a in command])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc in (0, 2), (command, err)
        if rc == 2:
            assert len(err) == 1 and "Traceback" not in err[0], (command, err)
        assert snapshot(outside) == before_outside, command
        gone = before - checkpoint_files(run)
        if gone:  # only a checkpoint the pointer no longer names, replaced by a newer complete one
            assert rc == 0 and command[0] == "train", (command, gone)
            current = ckpt.current_checkpoint(run)
            assert current.step > STEPS and {p.name for p in current.path.iterdir()} == {
                ckpt.MODEL_FILE, ckpt.STATE_FILE, ckpt.METRICS_FILE}
            assert all(g.startswith("step-") and not g.startswith(current.path.name) for g in gone), gone


def test_resume_without_the_pointer_recovers_the_newest_complete_checkpoint(finished, data, tmp_path, capsys):
    """The issue's repro: the pointer moved away; before, --resume deleted every checkpoint and refused."""
    run, _ = copy_run(finished, tmp_path)
    (run / ckpt.POINTER_FILE).unlink()
    # an older complete checkpoint beside the newest: the newest is the one recovered
    shutil.copytree(run / STEP_DIR, run / ckpt.CHECKPOINTS_DIR / "step-000000004")
    capsys.readouterr()
    assert cli("eval", run, "--data-dir", data) == 2
    err = capsys.readouterr().err
    assert "has no checkpoint.json, but holds 2 checkpoint folders (the newest checkpoints/step-000000008)" in err
    assert f"ctm train --resume {run}" in err
    assert cli("train", "--resume", run, "--steps", STEPS + 4, "--no-progress", "--threads", "1") == 0
    out = capsys.readouterr().out
    assert "checkpoint.json was missing; published again the newest complete checkpoint, " \
           "checkpoints/step-000000008 (step 8)" in out
    assert "resuming at step 8" in out
    assert ckpt.checkpoint_step(run) == STEPS + 4
    assert [r["step"] for r in ckpt.read_metrics(run)] == [4, 8, 12]


def test_recovery_skips_a_newest_folder_that_is_incomplete(finished, tmp_path):
    run, _ = copy_run(finished, tmp_path)
    (run / ckpt.POINTER_FILE).unlink()
    newest = run / ckpt.CHECKPOINTS_DIR / "step-000000010"
    shutil.copytree(run / STEP_DIR, newest)
    (newest / ckpt.STATE_FILE).unlink()
    with ckpt.RunLock(run):
        found = ckpt.recover_pointer(run)
    assert found == ckpt.Checkpoint(run / STEP_DIR, STEPS)
    assert ckpt.current_checkpoint(run) == found
    assert sorted(p.name for p in newest.iterdir()) == [ckpt.METRICS_FILE, ckpt.MODEL_FILE]  # kept as it was


def test_clean_up_after_a_save_removes_only_what_ctm_wrote(finished, data, tmp_path):
    run, _ = copy_run(finished, tmp_path)
    checkpoints = run / ckpt.CHECKPOINTS_DIR
    (checkpoints / "notes.txt").write_text("mine")
    (checkpoints / "step-000000003").mkdir()  # ctm's name, someone's file: the folder stays with the file
    (checkpoints / "step-000000003" / "README").write_text("not ctm's")
    (checkpoints / "step-000000003" / ckpt.MODEL_FILE).write_bytes(b"old weights")
    assert cli("train", "--resume", run, "--steps", STEPS + 4, "--no-progress", "--threads", "1") == 0
    assert sorted(p.name for p in checkpoints.iterdir()) == ["notes.txt", "step-000000003", f"step-{STEPS + 4:09d}"]
    assert sorted(p.name for p in (checkpoints / "step-000000003").iterdir()) == ["README"]


def test_a_linked_checkpoints_folder_is_refused_before_anything_is_written(finished, data, tmp_path, capsys):
    run, outside = copy_run(finished, tmp_path)
    tamper_checkpoints_link_to_another_run(run, outside)
    before = snapshot(outside)
    capsys.readouterr()
    assert cli("train", "--resume", run, "--steps", STEPS + 4, "--no-progress", "--threads", "1") == 2
    err = capsys.readouterr().err
    assert f"{run / ckpt.CHECKPOINTS_DIR} is a symbolic link; ctm does not follow links inside a run" in err
    assert snapshot(outside) == before


@pytest.mark.parametrize("kind", ["link", "dangling", "hard link", "folder"])
def test_the_lock_is_never_opened_through_a_link(kind, finished, tmp_path, capsys):
    run, outside = copy_run(finished, tmp_path)
    victim = outside / "victim.txt"
    lock = run / ckpt.LOCK_FILE
    lock.unlink(missing_ok=True)
    {"link": lambda: lock.symlink_to(victim), "dangling": lambda: lock.symlink_to(outside / "new.txt"),
     "hard link": lambda: os.link(victim, lock), "folder": lock.mkdir}[kind]()
    capsys.readouterr()
    assert cli("train", "--resume", run, "--steps", STEPS + 4, "--no-progress", "--threads", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(lock) in err[0] and "Remove it" in err[0] or "Move it" in err[0], err
    assert victim.read_text() == "a user's file\n" and not (outside / "new.txt").exists()


def test_a_run_stopped_before_its_pictures_finishes_them_on_resume(finished, tmp_path, capsys):
    run, _ = copy_run(finished, tmp_path)
    (run / "thinking.gif").unlink()
    (run / "curves.png").unlink()
    capsys.readouterr()
    assert cli("train", "--resume", run, "--no-progress", "--threads", "1") == 0
    out = capsys.readouterr().out
    assert f"{run} already ran all {STEPS} steps; drawing what it stopped before: thinking.gif, curves.png" in out
    assert (run / "thinking.gif").stat().st_size > 0 and (run / "curves.png").stat().st_size > 0
    assert ckpt.checkpoint_step(run) == STEPS
    # with its pictures, a finished run is refused as before
    assert cli("train", "--resume", run, "--no-progress", "--threads", "1") == 2
    assert f"already ran {STEPS} of {STEPS} steps; pass a larger --steps" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------
# Readers beside a writer
# ------------------------------------------------------------------------------------------------------------


def publish_next(run: Path) -> None:
    """What a writer does between two instants of a reader: save the next step's checkpoint, remove this one."""
    model, _ = ckpt.load_model(run)
    state = ckpt.load_trainer_state(run)
    state["step"] += 1
    with ckpt.RunLock(run):
        ckpt.save_checkpoint(run, model, state, ckpt.read_metrics(run))


def test_a_reader_whose_weights_vanish_mid_read_reads_the_next_checkpoint(finished, tmp_path, monkeypatch):
    """safetensors reports the removed file as a RuntimeError ("unable to open file"), not FileNotFoundError."""
    import safetensors.torch

    run, _ = copy_run(finished, tmp_path)
    real = safetensors.torch.load_file
    calls = []

    def load_file(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 1:
            monkeypatch.setattr(safetensors.torch, "load_file", real)  # the writer reads as it always does
            publish_next(run)  # the file at `path` is gone now
            monkeypatch.setattr(safetensors.torch, "load_file", load_file)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "load_file", load_file)
    model, _ = ckpt.load_model(run)
    assert len(calls) == 2 and f"step-{STEPS:09d}" in calls[0] and f"step-{STEPS + 1:09d}" in calls[1]
    expected = real(str(run / ckpt.CHECKPOINTS_DIR / f"step-{STEPS + 1:09d}" / ckpt.MODEL_FILE))
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)


def test_a_reader_whose_pointer_moves_on_reads_the_next_checkpoint(finished, tmp_path, monkeypatch):
    """The pointer read, then the folder it named removed before the reader looked: read the pointer again."""
    run, _ = copy_run(finished, tmp_path)
    real = ckpt._read_pointer
    calls = []

    def read_pointer(run_dir):
        found = real(run_dir)
        calls.append(found)
        if len(calls) == 1:
            monkeypatch.setattr(ckpt, "_read_pointer", real)
            publish_next(run)
            monkeypatch.setattr(ckpt, "_read_pointer", read_pointer)
        return found

    monkeypatch.setattr(ckpt, "_read_pointer", read_pointer)
    found = ckpt.current_checkpoint(run)
    assert found.step == STEPS + 1 and calls[0][0] == STEPS
    monkeypatch.setattr(ckpt, "_read_pointer", real)
    assert ckpt.read_metrics(run)[-1]["step"] == STEPS


def test_reading_a_run_is_bounded(finished, tmp_path, capsys):
    run, _ = copy_run(finished, tmp_path)
    with open(run / STEP_DIR / ckpt.METRICS_FILE, "r+b") as f:
        f.truncate(ckpt.METRICS_LIMIT + 1)
    with pytest.raises(ckpt.RunDirError, match="is larger than 256 MiB"):
        ckpt.read_metrics(run)
    with open(run / STEP_DIR / ckpt.MODEL_FILE, "ab") as f:
        f.truncate(os.path.getsize(run / STEP_DIR / ckpt.MODEL_FILE) + 64 * 2**20)  # sparse: no disk used
    with pytest.raises(ckpt.RunDirError, match="more than the model of config.json can need"):
        ckpt.load_model(run)
    (run / ckpt.CONFIG_FILE).unlink()
    os.mkfifo(run / ckpt.CONFIG_FILE)  # would block a plain open for ever
    with pytest.raises(ckpt.RunDirError, match="is not a regular file"):
        ckpt.read_config(run)


def test_a_stop_signal_while_drawing_the_pictures_finishes_that_picture_and_says_so(finished, tmp_path, capsys,
                                                                                    monkeypatch):
    """Raised at any instant, the signal used to land inside numpy or a GC callback: a traceback, exit 1."""
    import signal

    from ctm.pictures import figures as viz

    run, _ = copy_run(finished, tmp_path)
    (run / "thinking.gif").unlink()
    (run / "curves.png").unlink()
    real = viz.save_curves

    def save_curves(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the curves are being drawn
        return real(*args, **kwargs)

    monkeypatch.setattr(viz, "save_curves", save_curves)
    capsys.readouterr()
    assert cli("train", "--resume", run, "--no-progress", "--threads", "1") == 128 + signal.SIGTERM
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ctm train: stopped by SIGTERM while drawing the run's pictures; the checkpoint of step {STEPS} "
                   f"is saved; `ctm train --resume {run}` draws thinking.gif"]
    assert (run / "curves.png").stat().st_size > 0 and not (run / "thinking.gif").exists()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(viz, "save_curves", real)
    assert cli("train", "--resume", run, "--no-progress", "--threads", "1") == 0
    assert (run / "thinking.gif").stat().st_size > 0
