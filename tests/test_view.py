"""ctm.pictures.viewer: the viewer's data, the self-contained page, the local server; the GIF's sample choice."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from helpers import TINY_FLAGS, cli_error, make_synthetic

import ctm
from ctm.cli import main
from ctm.data.images import ImageDataset
from ctm.pictures import viewer as view

CONFIG = ctm.CTMConfig(iterations=6, d_model=32, d_input=16, memory_length=4, heads=2, n_synch_out=8,
                       n_synch_action=8, memory_hidden_dims=4)


def tiny_model() -> ctm.CTM:
    torch.manual_seed(0)
    return ctm.CTM(CONFIG)


def page_data(html: str) -> dict:
    block = re.search(r'<script id="ctm-data" type="application/json">(.*?)</script>', html, re.S).group(1)
    return json.loads(block)


def test_viewer_data_holds_what_the_model_computed():
    model = tiny_model()
    model.train()
    x = torch.rand(5, 1, 28, 28)
    data = view.viewer_data(model, x, [1, 2, 3, 4, 5], indices=[10, 11, 12, 13, 14], n_neurons=3, batch_size=2)
    assert model.training  # mode restored
    model.eval()
    with torch.inference_mode():
        out = model(x, track=True)
    T, C, (gh, gw) = 6, 10, out.tracking.token_grid
    assert data["ticks"] == T and data["token_grid"] == [gh, gw] and len(data["neurons"]) == 3
    assert [s["index"] for s in data["samples"]] == [10, 11, 12, 13, 14]
    probs = out.predictions.softmax(1)  # (B, C, T)
    attention = out.tracking.attention.mean(2)  # (T, B, N)
    for b, s in enumerate(data["samples"]):
        p = np.array(s["probs"]) / 1000  # (T, C)
        assert p.shape == (T, C)
        np.testing.assert_allclose(p, probs[b].T.numpy(), atol=6e-4)
        np.testing.assert_allclose(s["certainty"], out.certainties[b, 1].numpy(), atol=6e-5)
        assert s["attention_max"] == attention[:, b].argmax(-1).tolist()
        att = np.frombuffer(base64.b64decode(s["attention"]), np.uint8).reshape(T, gh * gw)
        assert (att.max(axis=1) == 255).all()
        assert (att[np.arange(T), s["attention_max"]] == 255).all()  # the highlighted cell is the brightest
        pixels = np.frombuffer(base64.b64decode(s["image"]), np.uint8).reshape(1, 28, 28)
        np.testing.assert_allclose(pixels / 255, x[b].numpy(), atol=1 / 255)
        traces = np.array(s["traces"])  # (T, K)
        np.testing.assert_allclose(traces, out.tracking.post_activations[:, b, data["neurons"]].numpy(), atol=6e-4)
        assert s["most_certain_tick"] == int(out.certainties[b, 1].argmax())
        assert s["prediction"] == int(probs[b, :, s["most_certain_tick"]].argmax())
    assert not re.search(r"\d\.\d{6,}", json.dumps(data))  # rounded: short numbers keep the page small
    # The traced neurons are those that vary most over ticks.
    variation = out.tracking.post_activations.var(0).mean(0)  # (D,)
    assert sorted(data["neurons"]) == sorted(variation.argsort(descending=True)[:3].tolist())


def test_viewer_data_rejects_bad_input():
    model = tiny_model()
    with pytest.raises(ValueError, match="float"):
        view.viewer_data(model, torch.zeros(2, 1, 28, 28, dtype=torch.uint8), [0, 1])
    with pytest.raises(ValueError, match="one target"):
        view.viewer_data(model, torch.rand(2, 1, 28, 28), [0])
    with pytest.raises(ValueError, match="threshold"):
        view.viewer_data(model, torch.rand(2, 1, 28, 28), [0, 1], threshold=1.5)
    with pytest.raises(ValueError, match="class indices"):
        view.viewer_data(model, torch.rand(2, 1, 28, 28), [0, 10])


def test_page_is_self_contained_and_its_data_survives_script_breakers(tmp_path):
    data = view.viewer_data(tiny_model(), torch.rand(3, 1, 28, 28), [0, 1, 2], title="a </script><b>",
                            class_names=[f"</script>{k}" for k in range(10)])
    path = view.write_viewer(data, tmp_path / "v.html")
    html = path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing from the network
    assert "<script src" not in html and "<link" not in html and "@import" not in html
    assert html.count("</script>") == 2  # the data block and the script, nothing inside them ends them
    assert page_data(html) == json.loads(json.dumps(data))
    assert "<title>a &lt;/script>&lt;b></title>" in html


def test_page_source_holds_the_run_s_strings_only_as_text():
    """Class names, title and source (a folder's names, a run's path) never end, open or fill the page's blocks."""
    names = ["<!--<script>", "</script><script>x=1</script>", "<img src=x onerror=y>", "/*{{SCRIPT}}*/",
             "{{TITLE}}", "/*{{DATA}}*/", "a & b", "\u2028\u2029", "]]>", "plain"]
    title, source = "/*{{DATA}}*/ </title><script>x=2</script>", "<!-- /*{{SCRIPT}}*/"
    data = view.viewer_data(tiny_model(), torch.rand(3, 1, 28, 28), [0, 1, 2], title=title, source=source,
                            class_names=names)
    html = view.viewer_html(data)
    block = re.search(r'<script id="ctm-data" type="application/json">(.*?)</script>', html, re.S).group(1)
    assert not set(block) & set("<>&\u2028\u2029")  # nothing in the data block an HTML parser reads as markup
    assert json.loads(block) == json.loads(json.dumps(data))
    assert html.count("<script") == 2 and html.count("</script>") == 2
    shown = re.search("<title>(.*?)</title>", html, re.S).group(1)
    assert shown == "/*{{DATA}}*/ &lt;/title>&lt;script>x=2&lt;/script>"
    assert html.count("use strict") == 1  # the script is inlined once, never into a string that looks like its slot


def test_serve_answers_with_the_page(tmp_path):
    path = view.write_viewer(view.viewer_data(tiny_model(), torch.rand(2, 1, 28, 28), [0, 1]), tmp_path / "v.html")
    server = view.serve(path, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.status == 200 and r.read() == path.read_bytes()
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
    finally:
        server.shutdown()
        server.server_close()


def test_pick_thinking_example_takes_the_most_changing_right_answer():
    model = tiny_model()
    rng = np.random.default_rng(0)
    data = ImageDataset(torch.from_numpy(rng.integers(0, 256, (40, 1, 28, 28), dtype=np.uint8)),
                        torch.from_numpy(rng.integers(0, 10, 40)).long(), 10, name="mnist", split="test")
    from ctm.tasks.image.pictures import pick_thinking_example

    pick = pick_thinking_example(model, data, limit=30, batch_size=7)
    model.eval()
    with torch.inference_mode():
        out = model(data.batch(torch.arange(30))[0])
    p = out.predictions.softmax(1)  # (B, C, T)
    score = 0.5 * (p[:, :, 1:] - p[:, :, :-1]).abs().sum((1, 2))
    tick = out.certainties[:, 1].argmax(1)
    right = p[torch.arange(30), :, tick].argmax(1) == data.labels[:30]
    expected = int(torch.where(right, score, -1.0).argmax()) if right.any() else int(score.argmax())
    assert pick.index == expected and pick.score == pytest.approx(float(score[expected]), rel=1e-5)
    assert pick.reason.startswith("of the first 30 test images, its probabilities change most over the ticks")


def test_view_of_a_run_writes_into_the_run(tmp_path, capsys):
    data = make_synthetic(tmp_path / "data", n_train=200, n_test=40)
    run = tmp_path / "run"
    assert main(["train", "--data-dir", str(data), "--out", str(run), "--steps", "2", "--batch-size", "16",
                 "--no-progress", *TINY_FLAGS]) == 0
    out = capsys.readouterr().out
    assert "Wrote " + str(run / "thinking.gif") + " (test image " in out and "probabilities change most" in out
    assert main(["view", str(run), "--samples", "7", "--threshold", "0.5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Wrote {run / 'viewer.html'} (") and "7 samples of mnist test" in out
    payload = page_data((run / "viewer.html").read_text())
    assert len(payload["samples"]) == 7 and payload["threshold"] == 0.5 and payload["ticks"] == 4
    assert main(["view", str(run), "--threshold", "2"]) == 2
    assert "--threshold is a certainty in [0, 1]" in capsys.readouterr().err
    assert main(["view", str(run), "--out", str(tmp_path / "missing" / "v.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["view", str(run), "--out", str(run / "model.safetensors")]) == 2  # never over the run's files
    assert "must end in .html" in capsys.readouterr().err


def test_view_serve_on_a_busy_port_says_so(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = cli_error(capsys, "view", "--pretrained", "mnist", "--samples", "2", "--out", tmp_path / "v.html",
                         "--serve", "--port", port, "--threads", "1")
    assert line == (f"ctm view: error: port {port} on 127.0.0.1 is in use ({tmp_path / 'v.html'} is written); serve "
                    f"on another with --port N, or --port 0 for any free one")


def test_view_serve_until_ctrl_c(tmp_path):
    """`ctm view --serve`: the page on 127.0.0.1, Ctrl-C stops it cleanly."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ctm", "view", "--pretrained", "mnist", "--samples", "3",
                             "--out", str(tmp_path / "v.html"), "--serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().startswith(f"Wrote {tmp_path / 'v.html'} (")
        line = proc.stdout.readline()
        url = re.match(r"Serving on (http://127\.0\.0\.1:\d+/) \(Ctrl-C stops\)", line).group(1)
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.read() == (tmp_path / "v.html").read_bytes()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.strip() == "Stopped."


# ------------------------------------------------------------------------------------------- any task

def tiny_parity(length: int = 6):
    """A tiny untrained parity CTM and its task."""
    from ctm.tasks import make_task

    task = make_task("parity", length=length)
    torch.manual_seed(0)
    config = ctm.CTMConfig(iterations=5, d_model=32, d_input=16, memory_length=4, heads=2, n_synch_out=8,
                           n_synch_action=8, memory_hidden_dims=4, **task.model_fields(None))
    return ctm.CTM(config), task


def test_parity_page_data_has_kind_parity_and_what_the_model_computed():
    from ctm.tasks.parity import parity_targets
    from ctm.training.loop import TrainConfig

    model, task = tiny_parity(6)
    data = task.load("test", TrainConfig())
    page = task.viewer_data(model, data, 7, threshold=0.6)
    assert page["kind"] == "parity" and page["format"] == 2 and page["threshold"] == 0.6
    assert page["length"] == 6 and page["tokens"] == 6 and page["ticks"] == 5 and len(page["samples"]) == 7
    x, y = data.batch(torch.arange(7))
    model.eval()
    with torch.inference_mode():
        out = model(x, track=True)
    pairs = out.predictions.reshape(7, 6, 2, 5)  # positions x (even, odd) per tick
    odd = pairs.softmax(2)[:, :, 1]  # (B, L, T)
    answers = pairs.argmax(2)  # (B, L, T)
    for b, s in enumerate(page["samples"]):
        assert s["index"] == b
        assert s["sequence"] == "".join("-" if v < 0 else "+" for v in x[b].tolist())
        assert s["target"] == "".join(map(str, parity_targets(x[b:b + 1])[0].tolist()))
        u8 = np.frombuffer(base64.b64decode(s["odd"]), np.uint8).reshape(5, 6)
        np.testing.assert_allclose(u8 / 255, odd[b].T.numpy(), atol=1 / 255 + 1e-6)
        assert ((u8 >= 128) == (answers[b].T.numpy() == 1)).all()  # the page's answer is the model's
        tick = s["most_certain_tick"]
        assert tick == int(out.certainties[b, 1].argmax())
        assert s["prediction"] == "".join(map(str, answers[b, :, tick].tolist()))
        hits = sum(p == t for p, t in zip(s["prediction"], s["target"], strict=True))
        assert s["right_positions"] == hits and s["right"] == (hits == 6)
        att = np.frombuffer(base64.b64decode(s["attention"]), np.uint8).reshape(5, 6)
        assert s["attention_max"] == out.tracking.attention.mean(2)[:, b].argmax(-1).tolist()
        assert (att[np.arange(5), s["attention_max"]] == 255).all()
        np.testing.assert_allclose(s["certainty"], out.certainties[b, 1].numpy(), atol=6e-5)
        assert np.array(s["traces"]).shape == (5, len(page["neurons"]))
    html = view.viewer_html(page)  # the parity renderer comes with the kind
    assert "CTM.renderers.parity" in html and "CTM.renderers.image" not in html
    assert page_data(html) == json.loads(json.dumps(page))
    assert html.count("<script") == 2 and html.count("</script>") == 2 and html.count("use strict") == 1


def test_the_common_part_and_a_task_s_own_renderer():
    """`track` gives what every task has; `viewer_html(data, script)` inlines the renderer a task registers."""
    model = tiny_model()
    page, tracked = view.track(model, torch.rand(3, 1, 28, 28), "toy", indices=[7, 8, 9], title="t", n_neurons=4)
    assert page["kind"] == "toy" and [s["index"] for s in page["samples"]] == [7, 8, 9]
    assert set(page["samples"][0]) == {"index", "certainty", "traces", "most_certain_tick"}
    assert tracked.logits.shape == (3, 6, 10) and tracked.attention.shape[:2] == (3, 6)
    script = 'CTM.renderers.toy = {init() {}, draw() {}, summary() { return "x"; }, heading() { return "y"; }, ' \
             'answer() { return "</script>"; }};'
    html = view.viewer_html(page, script)
    assert "CTM.renderers.toy" in html and html.count("</script>") == 2  # the script cannot end its block
    assert "CTM.renderers.image" not in view.viewer_html(page)  # no task named toy: no renderer, the common part
    with pytest.raises(ValueError, match="kind"):
        view.track(model, torch.rand(1, 1, 28, 28), "")


def test_the_image_page_names_its_kind():
    data = view.viewer_data(tiny_model(), torch.rand(2, 1, 28, 28), [0, 1])
    assert data["kind"] == "image" and [s["right"] for s in data["samples"]] == [
        s["prediction"] == s["target"] for s in data["samples"]]
    html = view.viewer_html(data)
    assert "CTM.renderers.image" in html and "CTM.renderers.parity" not in html
