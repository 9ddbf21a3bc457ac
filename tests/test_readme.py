"""Every command and snippet of README.md runs, as written, in a sandbox.

The sandbox is a temporary folder holding what the README names: `runs/mnist-20261129-101500` (and `RUN_DIR`)
as a small trained run, `seven.png` and `two.jpg`, a `shapes/` image folder, `official_ctm.pt` with its
`args.json`, and `$CTM_DATA_DIR` with small MNIST-shaped datasets. Code blocks run in README order, so a run a command
trains is there for the commands after it. "With small sizes where needed": `ctm train` gets a tiny model
and a few steps appended (later flags win), and a resume's `--steps` is shrunk; nothing else is changed.
Set-up lines (`pip`, `make`, `sudo`) are what CI itself runs; `torchrun` lines are parsed, not launched.

What the README shows a command print is checked too (`test_the_figures_the_readme_prints_are_what_ctm_prints`):
an output block (```text or ```console) names each command on a `$ ` line, with what it printed below. The
figures fixed by the command's configuration are compared with what ctm prints for the configuration as written
(not the test size): a `ctm train`'s start-up lines (data, model: parameters, ticks, neurons, memory; training)
come from that command run up to its first step; what the bundled models print (`ctm pretrained`, `--pretrained`)
is run in full; the ticks an output of a README run names (`tick 6 of 10`, `full run: 10 ticks`, `5 frames`)
are its training command's. Figures of training length or time (losses, accuracies, seconds) are not checked. A
Python block's comment after a statement says what it gives: shapes `(8, 10, 5), (8, 2, 5)` of the tensors it
assigns or prints, or the printed text (`...` stands for any text).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tokenize
from pathlib import Path
from typing import NamedTuple
from unittest import mock

import pytest
import torch
from helpers import TINY, TINY_FLAGS, make_shapes, make_synthetic

import ctm
from ctm.cli import build_parser, main
from ctm.training import loop as tr

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# Where real datasets are found, as the test run was started (the sandbox points $CTM_DATA_DIR at small ones).
REAL_DATA_DIR = os.environ.get("CTM_DATA_DIR")
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
    if task != "image":  # its task fixes the token encoder (qamnist: also the ticks, its questions' length)
        image_flags = {"--positional-embedding", "--backbone", *(["--ticks"] if task == "qamnist" else [])}
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
    make_shapes(root / "shapes", n=200)  # "Your own images": 600 drawn shapes and a file that is not an image
    (root / "shapes" / "README.txt").write_text("600 drawn shapes\n")
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
            run_python_block(code, line, namespace)
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


# ------------------------------------------------------------------------------------------------------------
# Python blocks: what a statement's comment says it gives


def comments(code: str) -> dict[int, str]:
    """Line number (1-based in `code`) -> the text of the comment ending that line."""
    found = {}
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        if tok.type == tokenize.COMMENT:
            found[tok.start[0]] = tok.string.lstrip("#").strip()
    return found


SHAPES_SAID = re.compile(r"\((\d+(?:, \d+)*)\)")


def said_shapes(comment: str) -> list[tuple[int, ...]] | None:
    """The shapes a comment starts with, "(8, 10, 5) logits, (8, 2, 5), (8, 136) at the last tick", or None."""
    if not re.match(r"\(\d", comment):
        return None
    return [tuple(int(n) for n in m.split(", ")) for m in SHAPES_SAID.findall(comment)]


def flat(text: str) -> str:
    return " ".join(text.split())


def check_comment(stmt: ast.stmt, comment: str, printed: str, namespace: dict, where: str) -> None:
    """A comment after an assignment of tensors, or after a print, names what they are: shapes, or the text."""
    shapes = said_shapes(comment)
    is_print = isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and \
        getattr(stmt.value.func, "id", None) == "print"
    if shapes is not None and isinstance(stmt, ast.Assign):
        target = stmt.targets[0]
        names = [e.id for e in target.elts] if isinstance(target, ast.Tuple) else [target.id]
        got = [tuple(namespace[n].shape) for n in names if hasattr(namespace[n], "shape")]
        assert got == shapes[:len(got)] and len(got) == len(shapes), f"{where}: the comment says {shapes}, got {got}"
    elif shapes is not None and is_print:
        size = re.fullmatch(r"torch\.Size\(\[([\d, ]*)\]\)", printed.strip())
        assert size, f"{where}: the comment says shape {shapes[0]}, it printed {printed.strip()!r}"
        assert tuple(int(n) for n in size[1].split(", ")) == shapes[0], \
            f"{where}: the comment says {shapes[0]}, it printed {printed.strip()}"
    elif is_print and re.search(r"\d", comment):  # the printed text, "..." for any
        pattern = ".*".join(re.escape(part.strip()) for part in flat(comment).split("..."))
        assert re.fullmatch(pattern, flat(printed)), f"{where}: the comment says {comment!r}, it printed " \
                                                     f"{printed.strip()[:300]!r}"


def run_python_block(code: str, line: int, namespace: dict) -> None:
    """Run a README Python block a statement at a time (what it prints still shows), checking the comments."""
    tree = ast.parse(code)
    said = comments(code)
    for stmt in tree.body:
        end = stmt.end_lineno
        where = f"README.md line {line + end}"
        one = ast.Module([stmt], type_ignores=[])
        ast.increment_lineno(one, line)  # tracebacks name README lines
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(one, "README.md", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{where}: the Python block failed: {e!r}") from e
        print(out.getvalue(), end="")
        if end in said:
            check_comment(stmt, said[end], out.getvalue(), namespace, where)


def test_a_wrong_comment_in_a_python_block_fails():
    namespace: dict = {}
    run_python_block("import torch\nx = torch.zeros(2, 3)  # (2, 3) zeros\nprint(x.shape)  # (2, 3)\n"
                     "print(f'{1234:,} parameters')  # 1,234 parameters\nprint('a b c')  # ... b ...\n", 0, namespace)
    for wrong in ("y = torch.zeros(2, 4)  # (2, 3)\n", "print(x.shape)  # (3, 2)\n", "print('12 ticks')  # 13 ticks\n"):
        with pytest.raises(AssertionError, match="the comment says"):
            run_python_block(wrong, 10, namespace)


# ------------------------------------------------------------------------------------------------------------
# Output blocks: what the README shows ctm print


class Shown(NamedTuple):
    """A `$ ctm ...` line of an output block: its arguments (after `ctm`), the lines shown under it, where."""

    argv: list[str]
    lines: list[str]
    where: str


def shown_outputs(text: str) -> list[Shown]:
    """Every `$ ctm` command of the README's output blocks (```text, ```console) with the lines under it up to the
    next `$` line (a `\\` ending a `$` line continues it)."""
    shown = []
    for lang, code, line in code_blocks(text):
        if lang not in ("text", "console"):
            continue
        first = code.splitlines()[0] if code.strip() else ""
        assert first.startswith("$ ") or first.startswith("mode "), \
            f"README.md line {line}: an output block starts with the `$ ctm ...` line that printed it"
        current = None
        for k, row in enumerate(re.sub(r"\\\n\s*", " ", code).splitlines()):
            if row.startswith("$ "):
                words = shlex.split(row[2:])
                current = Shown(words[1:], [], f"README.md line {line + 1 + k}: {row}") if words[0] == "ctm" else None
                if current is not None:
                    shown.append(current)
            elif current is not None:
                current.lines.append(row)
    return shown


def masked(line: str) -> str:
    """A line with what differs between machines and runs left out: durations, absolute paths, sizes."""
    line = re.sub(r"file://\S+", "<url>", line)
    line = re.sub(r"(?<![\w.])/[^\s:;,()]+", "<path>", line)
    line = re.sub(r"\b\d+(\.\d+)? s\b", "<t> s", line)
    return re.sub(r"\b\d+ KB\b", "<n> KB", line)


def same_figures(shown: str, real: str) -> bool:
    """`shown` is `real` but for what `masked` leaves out, with sizes in KB within 10% (a page's script grows)."""
    if masked(shown) != masked(real):
        return False
    sizes = zip(re.findall(r"(\d+) KB", shown), re.findall(r"(\d+) KB", real), strict=True)
    return all(abs(int(a) - int(b)) <= 0.1 * int(b) for a, b in sizes)


def check_printed(shown: Shown, real: list[str]) -> None:
    """The shown lines are the real output, where a `...` line stands for lines left out."""
    chunks, chunk = [], []
    for row in [*shown.lines, "..."]:
        if row.strip() == "...":
            chunks.append(chunk)
            chunk = []
        else:
            chunk.append(row)
    open_end = bool(shown.lines) and shown.lines[-1].strip() == "..."
    at = 0
    for k, chunk in enumerate(chunks):
        if not chunk:
            continue
        starts = [i for i in range(at, len(real) - len(chunk) + 1)
                  if all(same_figures(s, r) for s, r in zip(chunk, real[i:i + len(chunk)], strict=True))]
        if k == 0:
            starts = starts[:1] if starts[:1] == [0] else []
        assert starts, f"{shown.where}: the README shows\n  " + "\n  ".join(chunk) + "\nctm prints\n  " + \
            "\n  ".join(real)
        at = starts[0] + len(chunk)
    assert open_end or at == len(real), f"{shown.where}: ctm prints more than the README shows (end it with ...):" \
                                        f"\n  " + "\n  ".join(real[at:])


class _FirstStep(Exception):
    """Raised where a training run would take its first step, with its start-up lines."""


def first_step(argv: list[str], out: Path) -> tuple[list[str], dict]:
    """The start-up lines of `ctm train ARGV` as written (its model, data and recipe) and its config.json, from the
    command run up to its first step, into `out` (for --out); --threads is left out (the process's stays)."""
    argv = list(argv)
    for flag in ("--threads", "--out"):
        if flag in argv:
            del argv[argv.index(flag):argv.index(flag) + 2]
    original = tr._startup_lines

    def stop(*args, **kwargs):
        raise _FirstStep(original(*args, **kwargs))

    with mock.patch.object(tr, "_startup_lines", stop), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([*argv, "--out", str(out)])
        except _FirstStep as e:
            lines = e.args[0]
        else:
            raise AssertionError(f"ctm {shlex.join(argv)} exited {code} before its first step")
    return lines, json.loads((out / "config.json").read_text())


#: figures a run's output names that its configuration fixes: pattern -> the config field (the tick count)
RUN_FIGURES = {r"\btick \d+ of (\d+)\b": "iterations", r"\bfull run: (\d+) ticks\b": "iterations",
               r"\b(\d+) frames\b": "iterations",
               r"; (\d+) ticks, certainty\b": "iterations"}
#: the start-up lines of `ctm train` that its flags and data fix
STARTUP = ("data:", "model:", "training:")


def check_run_figures(shown: Shown, payload: dict) -> None:
    for row in shown.lines:
        for pattern, field in RUN_FIGURES.items():
            for said in re.findall(pattern, row):
                if (payload.get("task") or {}).get("name") == "qamnist":  # a question's ticks are its own length
                    longest = payload["model"][field]
                    assert int(said) <= longest, f"{shown.where}: {row.strip()!r} says {said}; the run's longest " \
                                                 f"question is {longest}"
                    continue
                assert int(said) == payload["model"][field], \
                    f"{shown.where}: {row.strip()!r} says {said}; the run's {field} is {payload['model'][field]}"
        for said in re.findall(r"^Finished (\d+) steps", row):
            assert int(said) == payload["train"]["steps"], f"{shown.where}: {row!r}; the run has " \
                                                           f"{payload['train']['steps']} steps"


def real_files(dataset: str) -> bool:
    """Whether the real files of an IDX dataset are found where the test run was started to look."""
    from ctm.data.sources import DATASETS, find_dataset

    if dataset not in DATASETS:
        return False
    with mock.patch.dict(os.environ, {"CTM_DATA_DIR": REAL_DATA_DIR or ""}):
        return find_dataset(dataset) is not None


def option(argv: list[str], flag: str, default: str | None = None) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else default


def save_modules(root: Path) -> None:
    """The modules the README has you save (a task of your own), in `root`."""
    for lang, code, _ in code_blocks(README.read_text(encoding="utf-8")):
        if lang == "python" and re.match(r"# (\w+\.py)\b", code):
            (root / re.match(r"# (\w+\.py)\b", code)[1]).write_text(code, encoding="utf-8")


def test_the_figures_the_readme_prints_are_what_ctm_prints(sandbox, tmp_path, monkeypatch):
    save_modules(sandbox)
    shown = shown_outputs(README.read_text(encoding="utf-8"))
    runs: dict[str, dict] = {}  # run directory -> the config.json its README command writes
    checked = {"startup": 0, "printed": 0, "run": 0}
    for k, out in enumerate(o for o in shown if o.argv[:1] == ["train"] and "--resume" not in o.argv):
        task, dataset = option(out.argv, "--task", "image"), option(out.argv, "--dataset", "mnist")
        reads_mnist = task == "qamnist" or (task == "image" and not dataset.startswith("folder:"))
        real = not reads_mnist or real_files("mnist" if task == "qamnist" else dataset)
        with monkeypatch.context() as m:
            if real and reads_mnist:
                m.setenv("CTM_DATA_DIR", REAL_DATA_DIR or "")
            lines, payload = first_step(out.argv, tmp_path / f"run{k}")
        runs[option(out.argv, "--out")] = payload
        for row in out.lines:
            if row.startswith(STARTUP if real else ("model:",)):  # MNIST's figures need the real MNIST
                said = [line for line in lines if line.split(":")[0] == row.split(":")[0]]
                assert said and same_figures(row, said[0]), f"{out.where}: the README shows\n  {row}\nctm prints" \
                                                            f"\n  {said[0] if said else '(no such line)'}"
                checked["startup"] += 1
        check_run_figures(out, payload)
    monkeypatch.setenv("CTM_DATA_DIR", str(tmp_path / "no-data"))  # the bundled models on no data
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr("ctm.data.sources.SYSTEM_DATASETS_DIR", tmp_path / "no-system-data")
    (tmp_path / "cwd").mkdir()
    for out in shown:
        if out.argv[:1] == ["pretrained"] or "--pretrained" in out.argv:
            with monkeypatch.context() as m:
                m.chdir(tmp_path / "cwd")
                err, text = io.StringIO(), io.StringIO()
                with contextlib.redirect_stdout(text), contextlib.redirect_stderr(err):
                    assert main(out.argv) == 0, f"{out.where}: {err.getvalue()}"
            check_printed(out, [*err.getvalue().splitlines(), *text.getvalue().splitlines()])
            checked["printed"] += 1
        elif out.argv[0] != "train" and out.argv[0] != "bench":
            run = out.argv[1]
            assert run in runs, f"{out.where}: the README shows what {run} prints, not the command that trained it " \
                                f"(a `$ ctm train ... --out {run}` line)"
            check_run_figures(out, runs[run])
            checked["run"] += 1
    assert checked["startup"] >= 12 and checked["printed"] >= 5 and checked["run"] >= 10, checked


def test_the_figures_check_fails_on_a_wrong_figure():
    real = ["mnist: mnist, 173354 parameters; 1067 KB", "  trained with: ctm train", "  use: ..."]
    check_printed(Shown(["pretrained"], [real[0], "  ..."], "here"), real)
    check_printed(Shown(["pretrained"], real, "here"), real)
    check_printed(Shown(["view"], ["Wrote a.html (1100 KB) in 0.3 s: file:///tmp/a.html"], "here"),
                  ["Wrote a.html (1067 KB) in 0.1 s: file:///home/me/a.html"])
    for wrong in (["mnist: mnist, 173355 parameters; 1067 KB", "..."], ["mnist: mnist, 173354 parameters; 1500 KB"],
                  real[:2], real[1:]):
        with pytest.raises(AssertionError, match="README shows|more than the README shows"):
            check_printed(Shown(["pretrained"], wrong, "here"), real)
    with pytest.raises(AssertionError, match="the run's iterations is 10"):
        check_run_figures(Shown(["predict"], ["a: 1 (tick 3 of 30, certainty 1.000)"], "here"),
                          {"model": {"iterations": 10}, "train": {"steps": 5}})


def test_each_bundled_model_is_what_its_recorded_command_trains(sandbox, tmp_path):
    """`ctm pretrained` says how each bundled model was trained: that command, run today, builds the bundle's model
    with the bundle's recipe (its task, model and training configs)."""
    from ctm.pretrained import list_pretrained, pretrained_config

    for info in list_pretrained():
        words = shlex.split(info.record["command"])
        assert words[:2] == ["ctm", "train"], info.record["command"]
        _, payload = first_step(words[1:], tmp_path / info.name)
        bundled = pretrained_config(info.name)
        # configs compare as configs: a field added since the bundle was written reads as its default
        assert ctm.CTMConfig.from_dict(payload["model"]) == ctm.CTMConfig.from_dict(bundled["model"]), \
            f"{info.name}: {info.record['command']!r} builds {payload['model']}, the bundle {bundled['model']}"
        for part in ("train", "task", "model_kind", "model_options"):
            assert payload.get(part) == bundled.get(part), \
                f"{info.name}: `{info.record['command']}` builds {part} {payload.get(part)}, the bundle has " \
                f"{bundled.get(part)}"


# ------------------------------------------------------------------------------------------------------------
# A fresh shell: the quick start as a user runs it after `pip install`


def fresh_shell(home: Path, **variables: str) -> dict[str, str]:
    """The environment of a new shell after `pip install`: the `ctm` beside this interpreter on PATH, an empty HOME,
    no ctm variable but `variables`. The code under test is the one imported here (PYTHONPATH), one thread each (the
    machine is shared), and the C++ loops are the ones built for this test run (built once per machine)."""
    from ctm.nn import native

    env = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]), "HOME": str(home),
           "LANG": "C.UTF-8", "PYTHONPATH": str(Path(ctm.__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1",
           "CTM_NATIVE_DIR": str(native.build_directory().parent)}
    if "CTM_NATIVE" in os.environ:
        env["CTM_NATIVE"] = os.environ["CTM_NATIVE"]
    return env | variables


def printed_command(text: str, before: str) -> list[str]:
    """The command a line of `text` gives after `before`, as the shell splits it, `ctm` found on PATH."""
    found = re.findall(re.escape(before) + r"\s*(ctm .+?)\s*$", text, re.M)
    assert found, f"no {before!r} in:\n{text}"
    return shlex.split(found[-1])


def test_the_quick_start_in_a_fresh_shell_resumes_as_printed(tmp_path):
    """`ctm train` with $CTM_DATA_DIR set for it alone (as `make train` sets it), stopped by Ctrl-C once it saved a
    checkpoint; the resume command it prints, run as printed in a new shell without the variable, finishes the run,
    and `ctm eval` of the run works there too."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    make_synthetic(tmp_path / "data" / "mnist", n_train=160, n_test=40)
    shell = fresh_shell(home)
    if shutil.which("ctm", path=shell["PATH"]) is None:
        pytest.skip(f"no ctm command beside {sys.executable} (ctm is not pip-installed in this environment)")
    flags = ["--steps", "300", "--eval-every", "10", "--batch-size", "16", "--warmup-steps", "1", *TINY_FLAGS,
             "--no-progress"]
    first = subprocess.Popen(["ctm", "train", *flags], cwd=work, env=shell | {"CTM_DATA_DIR": str(tmp_path / "data")},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        head = first.stdout.readline()
        assert head.startswith("run directory: "), head + first.stderr.read()
        run = work / head.removeprefix("run directory: ").strip()
        deadline = time.monotonic() + 60
        while not (run / "checkpoint.json").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        first.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, out + err
    stopped = int(re.search(r"Stopped at step (\d+) by SIGINT; checkpoint saved", err)[1])
    assert 10 <= stopped < 300, err
    record = json.loads((run / "config.json").read_text())["dataset"]
    assert record["data_dir"] == str((tmp_path / "data" / "mnist").resolve())
    assert record["data_dir_from"] == "CTM_DATA_DIR"

    resume = printed_command(err, "Resume with:")  # a new shell: no CTM_DATA_DIR
    assert resume[:3] == ["ctm", "train", "--resume"], resume
    done = subprocess.run([shutil.which(resume[0], path=shell["PATH"]), *resume[1:]], cwd=work, env=shell,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"(resuming at step {stopped})" in done.stdout and "Finished 300 steps" in done.stdout, done.stdout
    evaluated = subprocess.run(["ctm", "eval", str(run.relative_to(work)), "--json"], cwd=work, env=shell,
                               capture_output=True, text=True, timeout=60)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["n"] == 40


# ------------------------------------------------------------------------------------------------------------
# `make train` (ctm train without --out) names the unfinished run it could continue


def test_a_new_run_names_the_latest_unfinished_run_of_its_data(tmp_path, monkeypatch, capsys):
    from ctm.runs import checkpoint as ckpt

    make_synthetic(tmp_path / "data" / "mnist", n_train=64, n_test=32)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CTM_DATA_DIR", str(tmp_path / "data"))
    recipe = tr.TrainConfig(steps=4, batch_size=16, eval_every=2, warmup_steps=1)
    runs = Path("runs")

    def stopped_at(name: str, step: int, steps: int = 4) -> Path:
        tr.train(runs / name, TINY, dataclasses.replace(recipe, steps=steps), stop=lambda s: s >= step)
        return runs / name

    older = stopped_at("mnist-20260101-000000", 2)
    latest = stopped_at("mnist-20260102-000000", 2)
    stopped_at("mnist-20260103-000000", 2, steps=2)  # finished
    shutil.copytree(older, runs / "fashion-mnist-20260104-000000")  # another dataset's
    other = json.loads((runs / "fashion-mnist-20260104-000000" / "config.json").read_text())
    other["train"]["dataset"] = "fashion-mnist"
    (runs / "fashion-mnist-20260104-000000" / "config.json").write_text(json.dumps(other))
    (runs / "mnist-junk").mkdir()  # not a run
    os.utime(ckpt.current_checkpoint(older).path, (1, 1))  # saved long ago
    flags = ["--dataset", "mnist", "--steps", "2", "--eval-every", "2", "--batch-size", "16", "--warmup-steps", "1",
             *TINY_FLAGS, "--no-progress", "--threads", "1"]

    capsys.readouterr()
    assert main(["train", *flags]) == 0
    note, head = capsys.readouterr().out.splitlines()[:2]
    new = head.removeprefix("run directory: ")
    assert re.fullmatch(r"runs/mnist-\d{8}-\d{6}", new), head
    assert note == (f"note: starting a new run in {new}. {latest} stopped at step 2 of 4 (the latest of 2 "
                    f"unfinished mnist runs there); to continue that one instead, stop this one (Ctrl-C) and run: "
                    f"ctm train --resume {latest}")
    assert main([*printed_command(note, "and run:")[1:], "--no-progress", "--threads", "1"]) == 0  # it resumes
    assert ckpt.checkpoint_step(latest) == 4
    capsys.readouterr()
    with ckpt.RunLock(older):  # a run another process is training is not named
        assert main(["train", *flags]) == 0
    assert not capsys.readouterr().out.startswith("note:")
    assert main(["train", *flags]) == 0
    assert f". {older} stopped at step 2 of 4; to continue" in capsys.readouterr().out.splitlines()[0]
    assert main(["train", *flags, "--out", "runs/chosen"]) == 0  # a folder of one's choosing: nothing said
    assert not capsys.readouterr().out.startswith("note:")
