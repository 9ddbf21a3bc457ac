"""Run directories written by earlier versions of ctm (tests/fixtures/runs, made by
tests/fixtures/make_fixtures.py) still load, evaluate to the numbers recorded when they were made, and resume.

Each test works on a copy in tmp_path: the checked-in fixtures are never modified. A failure here means a
change broke runs that users already have; fix the code, not the fixtures.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import make_synthetic

import ctm
from ctm.cli import main
from ctm.runs import checkpoint as ckpt

RUNS = Path(__file__).resolve().parent / "fixtures" / "runs"
EXPECTED = json.loads((RUNS / "expected.json").read_text())
NAMES = list(EXPECTED["runs"])
TOL = 1e-6  # the fixture's own numbers: the same computation, at most another summation order
RESUMED_TOL = 1e-5  # after two more optimiser steps


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("data"), **EXPECTED["data"])


# The numbers were recorded on one thread (`ctm eval --threads 1` sets the process's thread count).
pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def copy_of(name: str, tmp_path: Path) -> Path:
    run = tmp_path / name
    shutil.copytree(RUNS / name, run)
    return run


def data_flags(name: str, data: Path) -> list:
    return ["--data-dir", data] if EXPECTED["runs"][name]["synthetic_data"] else []


def eval_json(run: Path, flags: list, capsys) -> dict:
    capsys.readouterr()
    assert run_cli("eval", run, "--json", "--threads", "1", *flags) == 0
    return json.loads(capsys.readouterr().out)


def assert_same_numbers(got, expected, tol: float, where: str = "") -> None:
    """Every recorded field is there with the same value: ints, strings and flags exactly, floats within
    `tol`. Fields added since are allowed."""
    if isinstance(expected, dict):
        assert isinstance(got, dict), where
        for key, value in expected.items():
            assert key in got, f"{where}.{key} is missing"
            assert_same_numbers(got[key], value, tol, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), (where, got, expected)
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_same_numbers(a, b, tol, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert isinstance(got, (int, float)) and got == pytest.approx(expected, rel=0, abs=tol), (where, got, expected)
    else:
        assert type(got) is type(expected) and got == expected, (where, got, expected)


def test_the_synthetic_data_are_the_ones_the_fixtures_were_evaluated_on(data):
    got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(data.iterdir())}
    assert got == EXPECTED["data_sha256"], "tests/helpers.py make_synthetic no longer makes the same files"


def test_every_fixture_is_recorded_and_none_holds_a_lock_or_a_temporary_path():
    assert sorted(p.name for p in RUNS.iterdir() if p.is_dir()) == sorted(NAMES)
    for name in NAMES:
        files = [p for p in (RUNS / name).rglob("*") if p.is_file()]
        assert (RUNS / name / ckpt.CONFIG_FILE) in files
        assert not [p for p in files if p.name == ckpt.LOCK_FILE or p.name.endswith(".tmp")], name
        assert "/tmp" not in (RUNS / name / ckpt.CONFIG_FILE).read_text(), name
        # The layout before checkpoint folders (the checkpoint's files at the top, no pointer), which
        # convert-official still writes (weights only).
        flat = name.startswith("old-") or name == "official"
        assert (RUNS / name / ckpt.POINTER_FILE).exists() is not flat, name
        assert (RUNS / name / ckpt.MODEL_FILE).exists() is flat, name


@pytest.mark.parametrize("name", NAMES)
def test_an_old_run_loads_evaluates_to_its_numbers_and_resumes(name, data, tmp_path, capsys):
    entry = EXPECTED["runs"][name]
    run = copy_of(name, tmp_path)
    flags = data_flags(name, data)

    # (a) it loads, through the library
    model, payload = ckpt.load_model(run)
    loaded = ctm.load_run(run)
    assert loaded.config == model.config == ctm.CTMConfig.from_dict(payload["model"])
    assert (loaded.data.name, len(loaded.data.class_names)) == (payload["dataset"]["name"], model.config.out_dims)
    ours = model.state_dict()
    assert loaded.model.state_dict().keys() == ours.keys()
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, ours[key]), key
    assert ckpt.checkpoint_step(run) == entry["steps"]

    # (b) `ctm eval --json` gives the numbers recorded when it was made
    assert_same_numbers(eval_json(run, flags, capsys), entry["eval"], TOL, name)

    # (c) it resumes (a converted official model has no trainer state: resume refuses it in one line)
    capsys.readouterr()
    if not entry["resumes"]:
        assert run_cli("train", "--resume", run, "--steps", "2", "--no-progress", "--threads", "1", *flags) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in err[0], err
        return
    steps = entry["steps"] + 2
    assert entry["resume_command"][4:6] == ["--steps", str(steps)]
    before = [row["step"] for row in ckpt.read_metrics(run)]
    assert run_cli("train", "--resume", run, "--steps", steps, "--no-progress", "--threads", "1", *flags) == 0
    assert ckpt.checkpoint_step(run) == steps
    assert [row["step"] for row in ckpt.read_metrics(run)] == [*before, steps]
    assert (run / ckpt.POINTER_FILE).is_file() and not (run / ckpt.MODEL_FILE).exists()  # now in today's layout

    # (d) and continues as the code that made it did
    assert_same_numbers(eval_json(run, flags, capsys), entry["resumed_eval"], RESUMED_TOL, f"{name} resumed")
