"""The viewer in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright.

Skips with the reason when Playwright or a Chromium executable is missing. `CTM_CHROMIUM` names the
executable when it is not `chromium` on PATH. Playwright's own browser download is never used.
"""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch
from helpers import TINY

import ctm
from ctm.pictures import viewer as view
from ctm.pretrained import pretrained_test_slice

N_SAMPLES = 100


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    """The viewer page of the bundled MNIST model on 100 samples of its shipped slice, and its data."""
    data = pretrained_test_slice("mnist")
    images, labels = data.batch(torch.arange(N_SAMPLES))
    payload = view.viewer_data(ctm.load_pretrained("mnist"), images, labels.tolist(), title="test viewer")
    path = view.write_viewer(payload, tmp_path_factory.mktemp("viewer") / "viewer.html")
    return path, payload


@pytest.fixture
def page(browser, viewer):
    """A fresh page on the viewer; fails the test on any console error or uncaught exception."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(viewer[0].as_uri())
    page.wait_for_selector("#samples li")
    yield page
    page.close()
    assert errors == []


def bars(page) -> list[float]:
    return [float(v) for v in page.eval_on_selector_all("#probs rect.bar", "els => els.map(e => e.dataset.p)")]


def listed(page, key: str) -> list[int]:
    """The picker's samples in their shown order: their position in the data ("pos") or dataset "index"."""
    return [int(v) for v in page.eval_on_selector_all("#samples li[data-pos]", f"els => els.map(e => e.dataset.{key})")]


def set_tick(page, tick: int) -> None:
    page.fill("#tick-slider", str(tick))  # fires the input event like a drag would


def pick(page, pos: int) -> None:
    page.click(f"#samples li[data-pos='{pos}']")


def changing_sample(payload) -> tuple[int, int, int]:
    """A sample whose probabilities and attention map both change between two ticks, its most-attended token
    too where one does (the bundled model's attention is steady): (pos, t1, t2)."""
    import base64

    def attention(s, t):  # the tick's row of the (T, N) uint8 map
        raw = base64.b64decode(s["attention"])
        n = len(raw) // payload["ticks"]
        return raw[t * n:(t + 1) * n]

    found = [(pos, 0, t, s["attention_max"][t] != s["attention_max"][0]) for pos, s in enumerate(payload["samples"])
             for t in range(1, payload["ticks"])
             if s["probs"][t] != s["probs"][0] and attention(s, t) != attention(s, 0)]
    if not found:
        pytest.fail("no sample changes its probabilities and its attention over the ticks")
    return max(found, key=lambda f: f[3])[:3]


def test_opens_fast_with_everything_drawn(page, viewer):
    payload = viewer[1]
    assert float(page.get_attribute("body", "data-ready-ms")) < 1000  # well under a second for 100 samples
    assert page.locator("#samples li").count() == N_SAMPLES
    assert page.text_content("#tick-label") == f"tick 1 / {payload['ticks']}"
    assert page.locator("#probs rect.bar").count() == 10
    assert page.text_content("#title") == "test viewer"


def test_slider_moves_tick_label_bars_and_attention(page, viewer):
    payload = viewer[1]
    pos, t1, t2 = changing_sample(payload)
    pick(page, pos)
    s = payload["samples"][pos]
    for t in (t1, t2):
        set_tick(page, t + 1)
        assert page.text_content("#tick-label") == f"tick {t + 1} / {payload['ticks']}"
        assert bars(page) == pytest.approx([v / 1000 for v in s["probs"][t]], abs=1e-9)
        assert int(page.get_attribute("#attn-info", "data-cell")) == s["attention_max"][t]
    set_tick(page, t1 + 1)
    before_bars, before_cell = bars(page), page.get_attribute("#attn-info", "data-cell")
    before_image = page.eval_on_selector("#image", "c => c.toDataURL()")
    set_tick(page, t2 + 1)
    assert bars(page) != before_bars
    if s["attention_max"][t2] != s["attention_max"][t1]:
        assert page.get_attribute("#attn-info", "data-cell") != before_cell  # the highlighted cell moved
    assert page.eval_on_selector("#image", "c => c.toDataURL()") != before_image  # the overlay was redrawn
    page.keyboard.press("ArrowLeft")
    assert page.text_content("#tick-label") == f"tick {t2} / {payload['ticks']}"


def test_picking_another_sample_changes_image_and_label(page, viewer):
    payload = viewer[1]
    a, b = payload["samples"][0], next(s for s in payload["samples"] if s["target"] != payload["samples"][0]["target"])
    title = page.text_content("#sample-title")
    assert f"sample #{a['index']} · target {a['target']}" in title
    image = page.eval_on_selector("#image", "c => c.toDataURL()")
    pick(page, payload["samples"].index(b))
    assert f"sample #{b['index']} · target {b['target']}" in page.text_content("#sample-title")
    assert page.eval_on_selector("#image", "c => c.toDataURL()") != image
    assert page.get_attribute(f"#samples li[data-pos='{payload['samples'].index(b)}']", "class") == "selected"
    # The target's bar is marked.
    assert page.get_attribute(f"#bar-{b['target']}", "fill") == "var(--target)"


def test_play_advances_and_pauses(page, viewer):
    page.click("#play")
    page.wait_for_function("document.getElementById('tick-label').textContent.startsWith('tick 3 ')")
    page.click("#play")
    stopped = page.text_content("#tick-label")
    page.wait_for_timeout(500)
    assert page.text_content("#tick-label") == stopped
    assert "play" in page.text_content("#play")


def test_filters_and_halting_threshold(page, viewer):
    payload = viewer[1]
    wrong = [s["index"] for s in payload["samples"] if s["prediction"] != s["target"]]
    page.select_option("#filter", "wrong")
    shown = listed(page, "index")
    assert shown == wrong

    def halt(s, tau):
        return next((t for t, c in enumerate(s["certainty"]) if c >= tau), payload["ticks"] - 1) + 1

    page.select_option("#filter", "ticks")
    page.fill("#threshold", "0.999")
    page.dispatch_event("#threshold", "change")
    shown = listed(page, "pos")
    ticks = [halt(payload["samples"][p], 0.999) for p in shown]
    assert ticks == sorted(ticks, reverse=True) and len(shown) == N_SAMPLES
    top = payload["samples"][shown[0]]
    pick(page, shown[0])
    assert page.text_content("#halt-info").startswith(f"halts at tick {halt(top, 0.999)}")
    page.select_option("#filter", "uncertain")
    shown = listed(page, "pos")
    peaks = [max(payload["samples"][p]["certainty"]) for p in shown]
    assert peaks == sorted(peaks)


def mark(right: bool) -> str:
    return "\u2713" if right else "\u2717"


def test_each_verdict_names_the_tick_it_reads(page, viewer):
    """The list's right/wrong reads the most certain tick, the heading's the tick shown: each says which, and the
    heading repeats the list's beside its own, so the two never contradict silently."""
    payload = viewer[1]
    T, samples = payload["ticks"], payload["samples"]

    def last(s):  # the answer at the last tick
        return max(range(len(s["probs"][-1])), key=lambda c: s["probs"][-1][c])

    # A sample right at its most certain tick and wrong at the last (or the other way), else the first.
    pos = next((p for p, s in enumerate(samples) if s["right"] != (last(s) == s["target"])), 0)
    s = samples[pos]
    judged = f"at the most certain tick (tick {s['most_certain_tick'] + 1})"
    item = f"#samples li[data-pos='{pos}']"
    assert mark(s["right"]) in page.text_content(item)
    assert f"{mark(s['right'])} {judged}; halts after " in page.get_attribute(item, "title")
    assert "each sample's answer at the most certain tick" in page.text_content("#judged-note")
    assert page.text_content("#filter option[value='wrong']") == "wrong (at the most certain tick)"
    pick(page, pos)
    set_tick(page, T)
    title = page.text_content("#sample-title")
    at_tick, _, verdict = title.partition(" · judged ")
    assert f"tick {T}: {last(s)} (p = " in at_tick and at_tick.endswith(mark(last(s) == s["target"]))
    assert verdict == f"{judged}: {mark(s['right'])}"
    assert page.get_attribute("#sample-verdict", "class") == ("ok" if s["right"] else "bad")


def y_labels(page, chart: str) -> tuple[list[tuple[str, float, float]], float]:
    """The y axis's labels of a line chart (text, left and right x of their boxes) and the plot's left x."""
    return page.eval_on_selector(f"#{chart}", """svg => [
        [...svg.querySelectorAll("text[text-anchor='end']")].map(t => {
            const b = t.getBBox();
            return [t.textContent, b.x, b.x + b.width];
        }),
        +svg.querySelector("line.axis").getAttribute("x1")]""")


def test_y_labels_fit_left_of_the_plot_whatever_their_width(browser, page, viewer, tmp_path):
    torch.manual_seed(0)
    payload, _ = view.track(ctm.CTM(TINY), torch.rand(2, 1, 12, 12), "toy")
    K = len(payload["neurons"])
    for s in payload["samples"]:  # wide negative values: "-12963.7" needs far more than a fixed margin
        s["traces"] = [[-12345.678 + 10 * t + k for k in range(K)] for t in range(payload["ticks"])]
    wide, errors = open_page(browser, view.write_viewer(payload, tmp_path / "wide.html"))
    try:
        for shown in (page, wide):
            for chart in ("traces", "certainty"):
                labels, left = y_labels(shown, chart)
                assert len(labels) == 3
                for text, x0, x1 in labels:
                    assert x0 >= 0 and x1 <= left, (chart, text, x0, x1, left)  # whole, minus sign included
        labels, _ = y_labels(wide, "traces")
        assert labels[0][0].startswith("-1234")
    finally:
        wide.close()
    assert errors == []


def test_the_certainty_chart_s_1_stays_clear_of_the_halting_marker(page, viewer):
    """A sample certain at its first tick halts there: its marker sits on the plot's left edge, level with 1."""
    samples = viewer[1]["samples"]
    pos = max(range(len(samples)), key=lambda p: samples[p]["certainty"][0])
    assert samples[pos]["certainty"][0] >= viewer[1]["threshold"]  # it halts at the first tick
    pick(page, pos)
    for threshold in (None, "0"):
        if threshold is not None:
            page.fill("#threshold", threshold)
            page.dispatch_event("#threshold", "change")
        boxes = page.eval_on_selector("#certainty", """svg => {
            const one = [...svg.querySelectorAll("text[text-anchor='end']")].find(t => t.textContent === "1");
            return [one, svg.querySelector("#halt-marker")].map(e => {
                const b = e.getBBox();
                return [b.x, b.y, b.x + b.width, b.y + b.height];
            });
        }""")
        (a0, a1, a2, a3), (b0, b1, b2, b3) = boxes
        assert a2 <= b0 or b2 <= a0 or a3 <= b1 or b3 <= a1, boxes  # apart on x or on y


def test_served_page_works_too(browser, viewer):
    server = view.serve(viewer[0], port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        page.wait_for_selector("#samples li")
        set_tick(page, 5)
        assert page.text_content("#tick-label").startswith("tick 5 / ")
    finally:
        page.close()
        server.shutdown()
        server.server_close()
    assert errors == []


# Strings a run can carry (folder names become class names; paths become titles and sources) that would run
# script or break the page if any of them reached it as HTML.
HOSTILE_CLASSES = ['<img src=x onerror="window.__pwned=1">', "</script><script>window.__pwned=2</script>",
                   '<svg onload="window.__pwned=3"></svg>', "<!--<script>", "/*{{SCRIPT}}*/", "&lt;b&gt; \u2028"]
HOSTILE_TITLE = '<img src=x onerror="window.__pwned=4"> {{TITLE}} /*{{DATA}}*/'
HOSTILE_SOURCE = "</title><script>window.__pwned=5</script>"


def test_strings_from_the_run_are_shown_as_text_and_never_run(browser, tmp_path):
    torch.manual_seed(0)
    model = ctm.CTM(dataclasses.replace(TINY, out_dims=len(HOSTILE_CLASSES)))
    targets = list(range(len(HOSTILE_CLASSES)))
    payload = view.viewer_data(model, torch.rand(len(targets), 1, 12, 12), targets, title=HOSTILE_TITLE,
                               source=HOSTILE_SOURCE, class_names=HOSTILE_CLASSES)
    path = view.write_viewer(payload, tmp_path / "hostile.html")
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(path.as_uri())
        page.wait_for_selector("#samples li")
        page.wait_for_timeout(300)  # an injected <img> would have failed to load and run its onerror by now
        assert page.evaluate("window.__pwned") is None
        assert page.locator("#samples img, #samples svg, #sample-title img, #title img, #meta script").count() == 0
        assert page.title() == HOSTILE_TITLE
        assert page.text_content("#title") == HOSTILE_TITLE
        assert HOSTILE_SOURCE in page.text_content("#meta")
        labels = page.eval_on_selector_all("#probs text[text-anchor='end']", "els => els.map(e => e.textContent)")
        assert [label.removeprefix("\u25B6 ") for label in labels] == HOSTILE_CLASSES
        for pos, name in enumerate(HOSTILE_CLASSES):
            pick(page, pos)
            assert f"target {name} \u00b7 tick 1:" in page.text_content("#sample-title")
            assert page.text_content(f"#samples li[data-pos='{pos}']").startswith(f"#{pos}: {name} \u2192 ")
        page.wait_for_timeout(300)
        assert page.evaluate("window.__pwned") is None
    finally:
        page.close()
    assert errors == []


# ------------------------------------------------------------------------------------- other tasks

def open_page(browser, path):
    """A page on `path` and the list its console errors and uncaught exceptions go to."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    page.wait_for_selector("#samples li")
    return page, errors


@pytest.fixture(scope="module")
def parity_viewer(tmp_path_factory):
    """The page of a tiny parity CTM (length 8) on 12 test sequences, through the task's hooks."""
    from ctm.tasks import make_task
    from ctm.training.loop import TrainConfig

    task = make_task("parity", length=8)
    torch.manual_seed(0)
    model = ctm.CTM(dataclasses.replace(TINY, iterations=6, heads=2, **task.model_fields(None)))
    payload = task.viewer_data(model, task.load("test", TrainConfig()), 12, threshold=0.5)
    payload["title"] = HOSTILE_TITLE
    path = view.write_viewer(payload, tmp_path_factory.mktemp("parity") / "viewer.html", task.viewer_script())
    return path, payload


def test_parity_page_shows_the_sequence_and_steps_through_ticks(browser, parity_viewer):
    import base64

    import numpy as np

    path, payload = parity_viewer
    T, L = payload["ticks"], payload["length"]
    page, errors = open_page(browser, path)
    try:
        assert page.locator("#samples li").count() == 12
        assert page.title() == HOSTILE_TITLE and page.text_content("#title") == HOSTILE_TITLE
        assert page.evaluate("window.__pwned") is None
        for pos in (0, 5):
            pick(page, pos)
            s = payload["samples"][pos]
            fills = page.eval_on_selector_all("#sequence rect.seq-cell", "els => els.map(e => e.getAttribute('fill'))")
            assert fills == ["#e8833a" if c == "-" else "#d9e7f5" for c in s["sequence"]]  # - and + cells
            odd = np.frombuffer(base64.b64decode(s["odd"]), np.uint8).reshape(T, L)
            for t in range(T):
                set_tick(page, t + 1)
                assert page.text_content("#tick-label") == f"tick {t + 1} / {T}"
                shown = page.eval_on_selector_all("#sequence rect.answer-cell",
                                                  "els => els.map(e => [+e.dataset.odd, +e.dataset.answer])")
                assert [a for _, a in shown] == (odd[t] >= 128).astype(int).tolist()
                assert [p for p, _ in shown] == pytest.approx((odd[t] / 255).tolist(), abs=6e-4)
                right = sum(int(a) == int(c) for a, c in zip((odd[t] >= 128).astype(int), s["target"], strict=True))
                assert int(page.get_attribute("#parity-info", "data-right")) == right
                assert int(page.get_attribute("#parity-info", "data-top")) == s["attention_max"][t]
                assert page.locator("#sequence .wrong-mark").count() == L - right
                assert f"sample #{s['index']} · {L} positions · tick {t + 1}: {right} of {L} right" in \
                    page.text_content("#sample-title")
            assert page.locator("#answers rect").count() == T * L + 1  # every position at every tick, and the box
            assert page.text_content("#halt-info").startswith("halts at tick ")
        page.click("#play")
        page.wait_for_function("document.getElementById('tick-label').textContent.startsWith('tick 1 ')")
        page.wait_for_function(f"document.getElementById('tick-label').textContent.startsWith('tick {T} ')")
        page.wait_for_function("document.getElementById('play').textContent.includes('play')")  # stops itself
        assert page.text_content("#tick-label") == f"tick {T} / {T}"
        page.select_option("#filter", "wrong")
        assert listed(page, "pos") == [p for p, s in enumerate(payload["samples"]) if not s["right"]]
    finally:
        page.close()
    assert errors == []


def test_a_task_s_own_renderer_draws_its_panel_and_a_kind_without_one_still_opens(browser, tmp_path):
    torch.manual_seed(0)
    model = ctm.CTM(TINY)
    payload, _ = view.track(model, torch.rand(4, 1, 12, 12), "toy", source=HOSTILE_SOURCE)
    for s in payload["samples"]:
        s["word"] = "<b>" + "abcd"[s["index"]]  # a task's own string: text only
        s["right"] = s["index"] % 2 == 0
    script = """
CTM.renderers.toy = (function () {
  let box;
  return {
    init(data) { box = CTM.panel("Toy panel", "a user's task").body; box.id = "toy"; },
    draw(s, t) { box.textContent = `${s.word} at ${t + 1}`; },
    summary(s) { return s.word; },
    heading(s, t) { return [`word ${s.word} \\u00b7 tick ${t + 1}`]; },
    answer(s, t) { return CTM.span("", s.word); },
  };
})();"""
    page, errors = open_page(browser, view.write_viewer(payload, tmp_path / "toy.html", script))
    try:
        pick(page, 1)
        set_tick(page, 3)
        assert page.text_content("#toy") == "<b>b at 3" and page.locator("#toy b").count() == 0
        mc = payload["samples"][1]["most_certain_tick"]
        assert page.text_content("#sample-title") == \
            f"sample #1 · word <b>b · tick 3 · judged at the most certain tick (tick {mc + 1}): \u2717"
        assert page.text_content("#samples li[data-pos='2']").startswith("#2: <b>c · ")
        assert page.text_content("#meta").endswith("2 wrong at the most certain tick")
        assert page.text_content("#halt-info").endswith("answering <b>b")
    finally:
        page.close()
    assert errors == []
    page, errors = open_page(browser, view.write_viewer(payload, tmp_path / "bare.html"))  # no task "toy": no script
    try:
        assert 'no renderer for kind "toy"' in page.text_content("#panels")
        set_tick(page, 2)
        assert page.text_content("#tick-label") == f"tick 2 / {TINY.iterations}"
        assert page.locator("#certainty polyline").count() == 1
    finally:
        page.close()
    assert errors == []
