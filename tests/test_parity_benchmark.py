"""benchmarks/parity.py: its commands, the budget arithmetic, and a whole sweep against a stand-in `ctm`."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "parity.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("parity_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_and_eval_commands(bench):
    cmd = bench.train_command("lstm", 25, 1200, Path("out/lstm-T25"), length=16, seed=3, threads=1,
                              extra=["--batch-size", "64"])
    assert cmd[:3] == [sys.executable, "-m", "ctm"]
    assert cmd[3:] == ["train", "--task", "parity", "--model", "lstm", "--task-option", "length=16", "--ticks", "25",
                       "--steps", "1200", "--eval-every", "1200", "--seed", "3", "--out", "out/lstm-T25",
                       "--no-progress", "--threads", "1", "--batch-size", "64"]
    cmd = bench.train_command("ctm", 1, 5, Path("o"), threads=None, device="cuda")
    assert "--threads" not in cmd and cmd[-2:] == ["--device", "cuda"]
    assert bench.eval_command(Path("out/ctm-T1"), threads=2)[3:] == ["eval", "out/ctm-T1", "--json",
                                                                    "--threads", "2"]
    with pytest.raises(ValueError, match="model must be one of"):
        bench.train_command("gru", 1, 5, Path("o"))


def test_budget_arithmetic(bench):
    assert bench.step_time((20, 5.0), (40, 7.0)) == pytest.approx(0.1)  # start-up and evaluation cancel
    assert bench.step_time((20, 5.0), (40, 4.0)) == pytest.approx(0.01)  # noise: floored at a tenth of 4 / 40
    assert bench.steps_for(240, 0.1) == 2400 and bench.steps_for(1, 5.0) == 1
    with pytest.raises(ValueError, match="more steps"):
        bench.step_time((40, 1.0), (20, 2.0))
    assert bench.parameters_from("run: x\nmodel: 652,010 parameters; 50 ticks\n") == 652010
    assert bench.parameters_from("no count here") is None


def test_dry_run_prints_every_command():
    out = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--ticks", "1", "5", "--out", "R", "--",
                          "--lr", "0.001"], capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(out) == 2 * 2 * 4  # 2 models x 2 tick counts x (2 calibrations, the run, its evaluation)
    assert out[2].endswith("-m ctm train --task parity --model ctm --task-option length=16 --ticks 1 --steps N "
                           "--eval-every N --seed 0 --out R/ctm-T1 --no-progress --threads 1 --lr 0.001")
    assert out[3].endswith("-m ctm eval R/ctm-T1 --json --threads 1")
    assert "--model lstm" in out[-2] and "--ticks 5" in out[-2] and "--steps 40" in out[-3]
    fixed = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--steps", "300", "--models", "lstm",
                            "--ticks", "10"], capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(fixed) == 2 and "--steps 300" in fixed[0]


def test_bad_flags_are_named():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--length", "1"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "--length must be at least 2, got 1" in proc.stderr
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--ticks", "0"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "--ticks must all be at least 1" in proc.stderr


FAKE_CTM = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    args = sys.argv[1:]
    flag = lambda name: args[args.index(name) + 1]
    if args[0] == "train":
        steps, ticks = int(flag("--steps")), int(flag("--ticks"))
        time.sleep(0.002 * steps)
        Path(flag("--out")).mkdir(parents=True)
        Path(flag("--out"), "done.json").write_text(json.dumps({"steps": steps, "ticks": ticks,
                                                                  "model": flag("--model")}))
        print(f"model: {1000 + ticks:,} parameters; {ticks} ticks")
    else:
        run = json.loads(Path(args[1], "done.json").read_text())
        acc = min(1.0, 0.5 + 0.02 * run["ticks"]) if run["model"] == "ctm" else 0.6
        print(json.dumps({"accuracy": acc, "sequence_accuracy": acc ** 16, "n": 100}))
""")


def test_a_sweep_against_a_stand_in_ctm(bench, tmp_path, capsys, monkeypatch):
    fake = tmp_path / "fake_ctm.py"
    fake.write_text(FAKE_CTM)
    monkeypatch.setattr(bench, "CTM", [sys.executable, str(fake)])
    out = tmp_path / "bench"
    bench.main(["--ticks", "1", "25", "--budget-s", "0.4", "--calibration-steps", "50", "--out", str(out)])
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["model"], r["ticks"]) for r in rows] == [("ctm", 1), ("ctm", 25), ("lstm", 1), ("lstm", 25)]
    for r in rows:
        done = json.loads((Path(r["run_dir"]) / "done.json").read_text())
        assert done["steps"] == r["steps"] == bench.steps_for(0.4, r["step_s"])
        assert 50 <= r["steps"] <= 800  # 2 ms a step, give or take a loaded machine
        assert r["parameters"] == 1000 + r["ticks"]
    assert rows[1]["accuracy"] == 1.0 and rows[3]["accuracy"] == 0.6
    printed = capsys.readouterr().out
    assert "| ctm | 25 | 1,025 |" in printed and "| 100.00 | 100.00 |" in printed
    assert (out / "results.md").read_text().startswith("| model | ticks |")
    assert (out / "accuracy_vs_ticks.png").stat().st_size > 10_000
