"""Every command and snippet of README.md runs, as written, in a sandbox.

The sandbox is a temporary folder holding what the README names: `runs/mnist-20261129-101500` (and `RUN_DIR`)
as a small trained run, `seven.png` and `two.jpg`, a `shapes/` image folder, `official_ctm.pt` with its
`args.json`, and `$CTM_DATA_DIR` with small MNIST-shaped datasets. Code blocks run in README order, so a run a command
trains is there for the commands after it. "With small sizes where needed": `ctm train` gets a tiny model
and a few steps appended (later flags win), and a resume's `--steps` is shrunk; nothing else is changed.
Set-up lines (`pip`, `make`, `sudo`) are what CI itself runs; `torchrun` lines are parsed, not launched.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from helpers import TINY, TINY_FLAGS, make_shapes, make_synthetic

import ctm
from ctm.cli import build_parser, main
from ctm.training import loop as tr

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SMALL_TRAIN = ["--steps", "4", "--eval-every", "2", "--batch-size", "16", "--warmup-steps", "1", *TINY_FLAGS]
SETUP = ("pip ", "make ", "sudo ", ".venv/bin/python -m pytest")


def code_blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, code, line number) of each fenced block."""
    blocks = []
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        blocks.append((m.group(1), m.group(2), text[:m.start()].count("\n") + 1))
    return blocks


def commands(code: str) -> list[str]:
    """The commands of a bash block: comments dropped, continued lines joined."""
    joined = code.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def small(argv: list[str]) -> list[str]:
    """A `ctm train` command at test size."""
    if argv[:1] != ["train"]:
        return argv
    if "--resume" in argv:
        argv = list(argv)
        if "--steps" in argv:
            argv[argv.index("--steps") + 1] = "6"
        return argv
    task = argv[argv.index("--task") + 1] if "--task" in argv else "image"
    if task == "sort":  # no attention: only the core's sizes, and at least a tick per number
        n = next((int(a[2:]) for a in argv if a.startswith("n=")), 30)
        return [*argv, "--steps", "4", "--eval-every", "2", "--batch-size", "16", "--warmup-steps", "1",
                "--ticks", str(n + 2), "--d-model", "24", "--memory-length", "4", "--n-synch-out", "8",
                "--memory-hidden-dims", "4"]
    if task != "image":  # its task fixes the token encoder
        image_flags = {"--positional-embedding", "--backbone"}  # flags with a value such a task sets
        drop = {i + k for i, a in enumerate(SMALL_TRAIN) if a in image_flags for k in (0, 1)}
        return [*argv, *(a for i, a in enumerate(SMALL_TRAIN) if i not in drop and a != "--no-augment")]
    return [*argv, *SMALL_TRAIN]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, official_args, seed_module):
    from PIL import Image

    root = tmp_path_factory.mktemp("readme")
    data = root / "data"
    for name in ("mnist", "fashion-mnist"):
        make_synthetic(data / name, n_train=200, n_test=60)
    mp = pytest.MonkeyPatch()
    mp.setenv("CTM_DATA_DIR", str(data))
    mp.chdir(root)
    mp.syspath_prepend(str(root))  # modules the README has you save (a task of your own) import from here
    run = root / "runs" / "mnist-20261129-101500"
    tr.train(run, TINY.replace(iterations=12), tr.TrainConfig(steps=20, batch_size=16, lr=3e-3, eval_every=20),
             data_dir=str(data / "mnist"))
    (root / "RUN_DIR").symlink_to(run)
    make_shapes(root / "shapes", n=12)  # "Your own images"
    digit = (torch.rand(12, 12) * 60).to(torch.uint8)
    digit[4:8, 4:8] = 255
    Image.fromarray(digit.numpy()).resize((48, 48)).save(root / "seven.png")
    Image.fromarray(255 - digit.numpy()).convert("RGB").save(root / "two.jpg")
    if official_args is not None:
        official, args = official_args
        with contextlib.redirect_stdout(io.StringIO()):
            model = official.ctm.ContinuousThoughtMachine(**args).eval()
        with torch.no_grad():
            model(torch.rand(2, 1, 12, 12))  # initialises the lazy layers
        torch.save(model.state_dict(), root / "official_ctm.pt")
        (root / "args.json").write_text(json.dumps(args))
    if seed_module is not None:  # a model saved by the tutorial's code: its state_dict, lazy layers built
        from test_seed_equivalence import make_seed_model

        gen = torch.Generator().manual_seed(0)
        tutorial = make_seed_model(seed_module, ctm.CTMConfig(iterations=30), (28, 28), gen)
        torch.save(tutorial.state_dict(), root / "tutorial_ctm.pt")
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def seed_module(request):
    try:
        return request.getfixturevalue("seed")
    except pytest.skip.Exception:
        return None


@pytest.fixture(scope="module")
def official_args(request):
    """The official reference and small constructor arguments, or None when the reference is absent."""
    try:
        official = request.getfixturevalue("official")
    except pytest.skip.Exception:
        return None
    from test_official_cli import OFFICIAL_ARGS

    return official, dict(OFFICIAL_ARGS)


def test_readme_has_what_a_user_needs_first():
    text = README.read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings[:4] == ["Install", "Quick start", "Use it from Python", "Training"], headings
    assert "arxiv.org/abs/2505.05522" in text and "@article{" in text
    for leak in ("../shared", "this project", "the project's", "No GPU has been lent"):
        assert leak not in text, leak
    assert (REPO / "LICENSE").read_text().startswith("MIT License")


def test_every_readme_command_and_snippet_runs(sandbox, capsys):
    text = README.read_text(encoding="utf-8")
    namespace: dict = {}
    ran = {"ctm": 0, "python": 0}
    for lang, code, line in code_blocks(text):
        if lang == "python" and re.match(r"# (\w+\.py)\b", code):  # a module to save, e.g. "# mytasks.py: ..."
            (sandbox / re.match(r"# (\w+\.py)\b", code)[1]).write_text(code, encoding="utf-8")
            ran["python"] += 1
            continue
        if lang == "python":
            needs = [f for f in ("official_ctm.pt", "tutorial_ctm.pt") if f in code]
            if any(not (sandbox / f).exists() for f in needs):
                continue  # needs the official or the tutorial's code (their tests skip without it too)
            try:
                exec(compile(code, f"README.md:{line}", "exec"), namespace)
            except Exception as e:
                raise AssertionError(f"README.md line {line}: the Python block failed: {e!r}") from e
            ran["python"] += 1
            continue
        if lang != "bash":
            continue
        for command in commands(code):
            words = shlex.split(command)
            where = f"README.md line {line}: {command}"
            if command.startswith(SETUP):
                continue
            if words[0] == "torchrun":
                argv = words[words.index("ctm") + 1:]
                build_parser(argv[0]).parse_args(argv)
                continue
            if words[0] == "python" and words[1].startswith("benchmarks/"):
                assert (REPO / words[1]).is_file(), where
                if "--quick" in words:
                    assert main(["bench", *words[2:]]) == 0, where
                continue
            assert words[0] == "ctm", f"{where}: a command the docs test does not know how to run"
            if words[1:2] == ["convert-official"] and not (sandbox / "official_ctm.pt").exists():
                continue
            capsys.readouterr()
            code_ = main(small(words[1:]))
            captured = capsys.readouterr()
            assert code_ == 0, f"{where} exited {code_}: {captured.err.strip()[-500:]}"
            ran["ctm"] += 1
    assert ran["ctm"] >= 15 and ran["python"] >= 3, ran
