"""Tasks as plug-ins: a task defined in this file trains through the Python API with no core change, runs
record their task, and image runs (old ones and the bundled model) load and evaluate exactly as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import TINY, TINY_FLAGS, make_synthetic

import ctm
from ctm.cli import main
from ctm.config import option
from ctm.nn.kinds import build_model
from ctm.runs import checkpoint as ckpt
from ctm.tasks import TASKS, ImageTask, Task, make_task, register_task, task_from_record
from ctm.training import loop as tr
from ctm.training.evaluate import evaluate


class Majority:
    """In-memory sequences of +-1 (n, L) with target 1 where +1 is the majority."""

    def __init__(self, n: int, length: int, seed: int, split: str) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, 2, (n, length), generator=g).float() * 2 - 1
        self.y = (self.x.sum(1) > 0).long()
        self.name, self.split, self.source = "majority", split, "memory"

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, idx):
        return self.x[idx], self.y[idx]

    def to(self, device):
        return self


@pytest.fixture
def majority_task():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class MajorityOptions:
        length: int = option(5, "odd sequence length", min=1)

    class MajorityTask(Task):
        """Say whether +1 is the majority of an odd +-1 sequence: one answer, two classes."""

        name = "majority-test"
        Options = MajorityOptions
        sample_noun = "sequences"
        fixed_fields = ("backbone", "positional_embedding", "in_channels", "out_dims", "out_positions")

        def load(self, split, train_config, data_dir=None, recorded=None):
            return Majority(512 if split == "train" else 200, self.options.length, {"train": 1, "test": 2}[split],
                            split)

        def model_fields(self, train_set):
            return {"backbone": "parity", "positional_embedding": "custom-rotational-1d", "in_channels": 1,
                    "out_dims": 2, "out_positions": 1}

        def describe_data(self, train_set, test_set):
            return f"data: majority of {self.options.length}"

    register_task(MajorityTask)
    yield MajorityTask
    del TASKS["majority-test"]


def test_a_task_from_outside_the_package_trains_evaluates_and_resumes(majority_task, tmp_path, capsys):
    torch.set_num_threads(1)
    run = tmp_path / "majority"
    config = tr.TrainConfig(steps=150, batch_size=32, lr=3e-3, eval_every=75, seed=0)
    lines = []
    result = tr.train(run, TINY, config, task=make_task("majority-test", length=5), log=lines.append,
                      stop=lambda step: step == 75)
    assert result.interrupted and "data: majority of 5" in lines
    payload = json.loads((run / "config.json").read_text())
    assert payload["task"] == {"name": "majority-test", "length": 5}
    assert payload["model"]["backbone"] == "sign-embedding"  # the task's "parity": the name of earlier versions
    assert payload["train"]["dataset"] == "majority-test"  # a task's data are its own, not mnist
    result = tr.train(run, *tr.resume_configs(run)[:2], resume=True)  # the task comes from the run
    assert result.step == 150 and result.final_eval.accuracy >= 0.9, result.final_eval
    assert main(["eval", str(run), "--json", "--threads", "1"]) == 0  # the CLI reads the task from the run
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == pytest.approx(result.final_eval.accuracy) and "sequence_accuracy" not in evaluated
    assert main(["viz", str(run)]) == 2
    assert "the majority-test task draws no thinking GIF yet" in capsys.readouterr().err


def test_registry_and_records():
    assert isinstance(task_from_record({}), ImageTask)  # runs from before tasks
    assert task_from_record({"task": {"name": "parity", "length": 7}}).options.length == 7
    assert make_task("parity").record() == {"name": "parity", "length": 16}
    with pytest.raises(ValueError, match="unknown task 'shuffle'; choose one of image, maze, parity, qamnist, sort"):
        make_task("shuffle")
    with pytest.raises(ValueError, match=r"task 'parity' has no option\(s\) \['size'\]"):
        make_task("parity", size=3)
    with pytest.raises(ValueError, match="ParityOptions.length must be an integer >= 2, got 1"):
        make_task("parity", length=1)
    with pytest.raises(ValueError, match="a task named 'parity' is already registered"):
        register_task(type("Other", (Task,), {"name": "parity"}))
    with pytest.raises(ValueError, match="unknown model kind 'gru'; choose one of ctm"):
        build_model("gru", TINY)
    assert isinstance(build_model("ctm", TINY), ctm.CTM)


@pytest.mark.parametrize("record, message", [
    ({"task": {"name": "shuffle"}}, "config.json: invalid task record: unknown task 'shuffle'"),
    ({"task": "parity"}, "config.json: invalid task record: config.json: 'task' must be an object with a 'name'"),
    ({"model_kind": "gru"}, "config.json: unknown 'model_kind' 'gru'; this ctm builds ctm"),
])
def test_a_bad_task_or_model_record_is_one_line(tmp_path, capsys, record, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": TINY.to_dict(), **record}))
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_an_image_run_records_its_task_and_evaluates_as_before(tmp_path, capsys):
    synthetic = make_synthetic(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", "--data-dir", str(synthetic), "--out", str(run), "--steps", "4", "--batch-size", "32",
                 "--eval-every", "4", "--no-progress", "--threads", "1", *TINY_FLAGS]) == 0
    payload = json.loads((run / "config.json").read_text())
    assert payload["task"] == {"name": "image"} and "model_kind" not in payload  # every run records its task
    capsys.readouterr()
    assert main(["eval", str(run), "--json", "--threads", "1"]) == 0
    keys = set(json.loads(capsys.readouterr().out))
    assert keys == {"dataset", "split", "task", "loss", "accuracy", "accuracy_last_tick", "per_tick_accuracy",
                    "per_tick_certainty", "most_certain_tick_histogram", "n", "per_class_accuracy", "per_class_n",
                    "class_names"}  # what main's image evaluation reports: no parity keys


def test_the_bundled_model_evaluates_exactly_as_the_classification_formulas_say():
    from ctm.pretrained import pretrained_record, pretrained_test_slice

    model, data = ctm.load_pretrained("mnist"), pretrained_test_slice("mnist")
    result = evaluate(model, data, 250)
    with torch.inference_mode():
        x, y = data.batch(torch.arange(len(data)))
        out = model(x)
    loss, tick = ctm.certainty_loss(out.predictions, out.certainties, y)
    hits = out.predictions.argmax(1) == y.unsqueeze(-1)  # (B, T): one class per image
    assert result.accuracy == hits[torch.arange(len(y)), tick].sum().item() / len(y)
    assert result.per_tick_accuracy == pytest.approx(hits.double().mean(0).tolist(), abs=1e-12)
    assert result.loss == pytest.approx(loss.item(), abs=1e-6)
    assert result.accuracy == pretrained_record("mnist")["slice_accuracy"]
    assert result.sequence_accuracy is None and "sequence_accuracy" not in result.to_dict()


def test_old_runs_load_as_ctm_image_runs(tmp_path):
    run = tmp_path / "old"
    model = ctm.CTM(TINY)
    run.mkdir()
    ckpt.write_config(run, TINY, {"train": tr.TrainConfig().to_dict()})
    ckpt.save_weights(run, model, step=0)
    loaded, payload = ckpt.load_model(Path(run))
    assert isinstance(loaded, ctm.CTM) and isinstance(task_from_record(payload), ImageTask)
