"""The command line over a quiet library: flags generated from the config dataclasses, errors that name the
flags, the rules for what a resumed run may change, and a library that never imports the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY_FLAGS, make_synthetic

from ctm.cli import SUBCOMMANDS, OneLineParser, build_parser, main
from ctm.cli.config_flags import add_config_flags, flag_for, given, with_flag_names
from ctm.config import CTMConfig, option
from ctm.training import loop as tr
from ctm.training.loop import TrainConfig


def test_the_library_does_not_import_the_command_line():
    # torch itself imports argparse, so the check is on ctm.cli
    code = ("import sys, ctm, ctm.measure, ctm.runs.checkpoint, ctm.data.images, ctm.data.sources, "
            "ctm.training.evaluate, ctm.data.idx, ctm.training.loop; "
            "print(sorted(m for m in sys.modules if m.startswith('ctm.cli')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def test_every_config_field_has_its_flag():
    flags = {s: a.dest for a in _train_parser()._actions for s in a.option_strings}
    for cls in (CTMConfig, TrainConfig):
        for f in dataclasses.fields(cls):
            assert flags.get(flag_for(f.name)) == f.name, f"{cls.__name__}.{f.name} has no flag {flag_for(f.name)}"
    assert flag_for("iterations") == "--ticks" and flag_for("batch_size") == "--batch-size"
    help_text = _train_parser().format_help()
    assert "--adam-eps" in help_text and "--min-lr-ratio" in help_text and "--eval-batch-size" in help_text


def test_flags_follow_the_field_types_and_metadata():
    @dataclasses.dataclass(frozen=True)
    class Options:
        count: int = option(3, "how many", min=1)
        scale: float = option(0.5, "how much", min=0)
        flag: bool = option(False, "whether")
        kind: str = option("a", "which", choices=("a", "b"))

    parser = OneLineParser(prog="t")
    add_config_flags(parser, Options, {"count": "3"})
    args = parser.parse_args(["--count", "4", "--scale", "2.5", "--no-flag", "--kind", "b"])
    assert given(args, Options) == {"count": 4, "scale": 2.5, "flag": False, "kind": "b"}
    assert given(parser.parse_args([]), Options) == {}
    assert "how many (default 3)" in parser.format_help() and "{a,b}" in parser.format_help()


@pytest.mark.parametrize("argv, flag, message", [
    (["--lr", "-1"], "--lr", "must be a finite number >= 0"),
    (["--steps", "0"], "--steps", "must be a positive integer"),
    (["--ticks", "2.5"], "--ticks", "expected an integer"),
    (["--schedule", "linear"], "--schedule", "must be 'constant' or 'cosine', got 'linear'"),
])
def test_a_bad_flag_value_is_one_line_naming_the_flag(capsys, argv, flag, message):
    with pytest.raises(SystemExit) as e:
        main(["train", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and message in err[0], err


def test_library_errors_are_printed_with_flag_names(capsys, tmp_path):
    assert main(["train", "--lr", "0", "--data-dir", str(tmp_path)]) == 2  # bad on its own: TrainConfig.lr > 0
    err = capsys.readouterr().err.strip()
    assert err == "ctm train: error: --lr must be positive, got 0.0"
    assert with_flag_names("CTMConfig.iterations and TrainConfig.eval_batch_size, not CTMConfig.nothing") == (
        "--ticks and --eval-batch-size, not CTMConfig.nothing")


def test_data_fields_that_contradict_the_dataset_are_refused(capsys, tmp_path):
    data = make_synthetic(tmp_path / "data", n_train=64, n_test=16)
    assert main(["train", "--data-dir", str(data), "--in-channels", "3", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--in-channels=3 contradicts the data" in err[0] and "in_channels=1" in err[0], err
    assert not (tmp_path / "run").exists()


def test_more_warm_up_steps_than_steps_is_refused_when_given_and_said_when_the_preset_has_them(capsys, tmp_path):
    data = make_synthetic(tmp_path / "data", n_train=64, n_test=16)
    small = ["--data-dir", str(data), "--batch-size", "16", "--eval-every", "2", "--no-progress", "--threads", "1",
             *TINY_FLAGS]
    assert main(["train", "--out", str(tmp_path / "run"), "--steps", "2", "--warmup-steps", "5", *small]) == 2
    assert capsys.readouterr().err == ("ctm train: error: --warmup-steps 5 exceeds the 2 steps of the run: the "
                                       "learning rate would never reach --lr; give at most 2 warm-up steps\n")
    assert not (tmp_path / "run").exists()
    # The default preset's 300 warm-up steps, in a run shortened by --steps alone: trained as before, and said.
    assert main(["train", "--out", str(tmp_path / "run"), "--steps", "2", *small]) == 0
    assert ("(cosine, 300 warm-up steps: more than the steps, so the learning rate reaches only 2/300 of it)"
            in capsys.readouterr().out)


def test_what_a_resumed_run_may_change():
    model, stored = CTMConfig(), TrainConfig(steps=10, eval_every=5, lr=1e-3)
    resumed = tr.resumed_train_config(model, stored, {"d_model": 128}, {"steps": 20, "eval_every": 2, "lr": 1e-3})
    assert (resumed.steps, resumed.eval_every, resumed.lr) == (20, 2, 1e-3)
    assert tr.resumed_train_config(model, stored, {}, {}) is stored
    refused = [({}, {"lr": 0.1}, "--lr"), ({}, {"augment": True}, "--augment"),
               ({}, {"batch_size": 32}, "--batch-size"), ({"iterations": 12}, {}, "--ticks"),
               ({"d_model": 64}, {"steps": 20}, "--d-model")]
    for model_changes, train_changes, flag in refused:
        with pytest.raises(ValueError, match="cannot resume") as e:
            tr.resumed_train_config(model, stored, model_changes, train_changes)
        assert with_flag_names(str(e.value)).startswith(f"cannot resume with {flag}="), str(e.value)
    assert set(tr.RESUMABLE_FIELDS) == {"steps", "eval_every"}


def test_ctm_help_does_not_import_torch():
    """`ctm --help` answers without importing torch (only the subcommand being run builds its flags)."""
    import subprocess
    import sys

    code = ("import sys; from ctm.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "import ctm; ctm.CTMConfig(); assert 'torch' not in sys.modules\n"
            "ctm.CTM; assert 'torch' in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "predict" in result.stdout and "train" in result.stdout


COMPUTING = ("train", "eval", "viz", "predict", "view")


@pytest.mark.parametrize("command", [c for c in SUBCOMMANDS if c != "bench"])
def test_every_flag_has_help_and_every_subcommand_examples(command):
    sub = next(a for a in build_parser(command)._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[command]
    missing = [a.option_strings or a.dest for a in parser._actions
               if not isinstance(a, argparse._HelpAction) and not a.help]
    assert not missing, f"ctm {command}: no help for {missing}"
    assert parser.epilog and parser.epilog.startswith("examples:") and f"ctm {command}" in parser.epilog
    flags = {s for a in parser._actions for s in a.option_strings}
    if command in COMPUTING:
        assert {"--threads", "--device"} <= flags, f"ctm {command} lacks --threads/--device"


def test_ctm_bench_help_has_help_for_every_flag_and_examples(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert "examples:\n  ctm bench --quick" in out and "--threads" in out and "--device" in out


@pytest.mark.parametrize("command", COMPUTING)
def test_a_wrong_flag_points_to_the_subcommands_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main({"train": ["train"], "predict": ["predict", "RUN", "x.png"]}.get(command, [command, "RUN"])
             + ["--no-such-flag"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--no-such-flag" in err and f"(see ctm {command} --help)" in err


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    from ctm import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.time, "strftime", lambda fmt: "20261205-120000")
    first = cli._new_run_dir("mnist")
    assert first == Path("runs/mnist-20261205-120000")
    first.mkdir(parents=True)
    assert cli._new_run_dir("mnist") == Path("runs/mnist-20261205-120000-2")
    Path("runs/mnist-20261205-120000-2").symlink_to(tmp_path / "nowhere")  # taken, even dangling
    assert cli._new_run_dir("mnist") == Path("runs/mnist-20261205-120000-3")
