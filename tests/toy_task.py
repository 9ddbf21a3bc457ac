"""A task from outside the package (`ctm train --task toy_task:ArgmaxTask`): which of L numbers is the largest.

Not images, not parity: its own data (L numbers in [-1, 1] per sample, generated from the index), its own loss
(the cross-entropy at the last tick alone), its own metrics (accuracy at the last tick and how far the answer
is from the right position), its GIF panel and its viewer panel. Nothing in ctm knows it.
"""

from __future__ import annotations

import dataclasses
import json

import torch

from ctm.config import option
from ctm.pictures.figures import Panel
from ctm.tasks import Example, Preset, Task


class Numbers:
    """Sample k: L numbers drawn from a generator seeded (split, k); the target is the position of the largest."""

    def __init__(self, length: int, n: int, split: str, device: str | torch.device = "cpu") -> None:
        self.length, self.n, self.split, self.device = length, n, split, torch.device(device)
        self.name, self.source = "argmax", "generated"

    def __len__(self) -> int:
        return self.n

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator()
        rows = []
        for k in idx.tolist():
            g.manual_seed(k * 2 + (self.split == "test"))
            rows.append(torch.rand(self.length, generator=g) * 2 - 1)
        x = torch.stack(rows).to(self.device)  # (b, L)
        return x.unsqueeze(1), x.argmax(1)  # (b, 1, L): one channel, L tokens; (b,)

    def to(self, device) -> Numbers:
        return Numbers(self.length, self.n, self.split, device)


@dataclasses.dataclass(frozen=True)
class ArgmaxOptions:
    length: int = option(5, "argmax: how many numbers", min=2)


class ArgmaxResult:
    def __init__(self, loss: float, accuracy: float, position_error: float, n: int) -> None:
        self.loss, self.accuracy, self.position_error, self.n = loss, accuracy, position_error, n

    def to_dict(self) -> dict:
        return {"loss": self.loss, "accuracy": self.accuracy, "position_error": self.position_error, "n": self.n}

    def scalars(self) -> dict:
        return {"loss": self.loss, "accuracy": self.accuracy, "position_error": self.position_error}

    def lines(self) -> list[str]:
        return [f"  last-tick loss     {self.loss:.4f}", f"  last-tick accuracy {self.accuracy:.4f}",
                f"  position error     {self.position_error:.4f}"]

    def summary(self) -> str:
        return f"Last-tick accuracy {self.accuracy:.4f}, position error {self.position_error:.3f} (n={self.n})"


class ArgmaxMetrics:
    def __init__(self) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64)  # loss, right, |error|, samples

    def update(self, output, targets, loss, tick) -> None:
        guess = output.predictions[:, :, -1].argmax(1)
        self.sums += torch.tensor([loss.item() * len(targets), (guess == targets).sum().item(),
                                   (guess - targets).abs().sum().item(), len(targets)], dtype=torch.float64)

    def reduce(self, dist_info) -> None:
        from ctm.training.distributed import all_reduce_sum

        self.sums = all_reduce_sum(self.sums, dist_info)

    def result(self) -> ArgmaxResult:
        loss, right, error, n = self.sums.tolist()
        return ArgmaxResult(loss / n, right / n, error / n, int(n))


class ArgmaxTask(Task):
    name = "argmax"
    Options = ArgmaxOptions
    sample_noun = "rows"
    fixed_fields = ("backbone", "positional_embedding", "in_channels", "out_dims")
    default_preset = "argmax"
    presets = {"argmax": Preset("argmax", dict(steps=40, batch_size=32, lr=3e-3, warmup_steps=0, schedule="constant",
                                               eval_every=20, eval_batch_size=64, augment=False),
                                dict(iterations=3, d_model=16, d_input=8, heads=1, memory_length=3,
                                     memory_hidden_dims=2, n_synch_out=4, n_synch_action=4),
                                summary="the toy argmax task's recipe")}

    def load(self, split, train_config, data_dir=None, recorded=None) -> Numbers:
        return Numbers(self.options.length, 4096 if split == "train" else 96, split)

    def describe_data(self, train_set, test_set) -> str:
        return f"data: argmax of {self.options.length} numbers, {len(test_set)} test rows"

    def model_fields(self, train_set) -> dict:
        return {"backbone": "none", "positional_embedding": "none", "in_channels": 1,
                "out_dims": self.options.length}

    def loss(self, predictions, certainties, targets):
        """Cross-entropy at the last tick alone (not the certainty loss)."""
        tick = torch.full_like(targets, predictions.shape[-1] - 1)
        return torch.nn.functional.cross_entropy(predictions[:, :, -1], targets), tick

    def metrics(self, model_config) -> ArgmaxMetrics:
        return ArgmaxMetrics()

    def pick_example(self, model, data, index=None, label=None) -> Example:
        if label is not None:
            raise ValueError("the argmax task has no labels to pick by")
        return Example(index or 0, "the first row" if not index else "")

    def thinking_panels(self, output, inputs, targets, data):
        return [Bars(inputs[0, 0].cpu().numpy(), output.predictions[0].argmax(0).cpu().numpy())]

    def viewer_data(self, model, data, n, *, threshold):
        from ctm.pictures.viewer import track

        x, y = data.batch(torch.arange(min(n, len(data))))
        page, tracked = track(model, x, self.name, threshold=threshold)
        answers = tracked.logits.argmax(2)  # (B, T)
        for i, sample in enumerate(page["samples"]):
            sample.update(numbers=[round(v, 3) for v in x[i, 0].tolist()], target=int(y[i]),
                          answers=answers[i].tolist())
        return page

    def viewer_script(self) -> str:
        return ("CTM.renderers[" + json.dumps(self.name) + "] = {"
                "init(data) { this.p = CTM.panel('numbers', 'the largest is the answer'); },"
                "draw(s, t) { this.p.body.textContent = s.numbers.map(v => v.toFixed(2)).join(' ') +"
                " ' -> position ' + s.answers[t]; },"
                "summary(s) { return 'target ' + s.target; },"
                "heading(s, t) { return 'answer ' + s.answers[t]; },"
                "answer(s, t) { return String(s.answers[t]); } };")


class Bars(Panel):
    """The GIF's panel: the numbers as bars, the one the model picks at this tick in colour."""

    def __init__(self, numbers, answers) -> None:
        self.numbers, self.answers = numbers, answers

    def setup(self, fig, area) -> None:
        ax = fig.add_subplot(area)
        self.bars = ax.bar(range(len(self.numbers)), self.numbers, color="#999999")
        ax.set_title("numbers")

    def update(self, t):
        for i, bar in enumerate(self.bars):
            bar.set_color("#2e9d4a" if i == self.answers[t] else "#999999")
        return list(self.bars)
