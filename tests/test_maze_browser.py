"""The maze task's viewer panel in a real browser (headless Chromium driven by Playwright, as tests/test_browser.py):
`ctm view` of a tiny maze run draws the maze, the attention and each tick's route, wrong moves marked."""

from __future__ import annotations

import base64
import json
import re

import pytest
from helpers import run_cli
from test_maze_pictures import TRAIN

SAMPLES = 12


@pytest.fixture(scope="module")
def maze_view(tmp_path_factory):
    """`ctm view` of a tiny maze run on 12 test mazes: the page and its data."""
    run = tmp_path_factory.mktemp("maze-view") / "run"
    assert run_cli(*TRAIN, "--out", run) == 0
    page = run / "viewer.html"
    assert run_cli("view", run, "--samples", SAMPLES, "--threads", "1") == 0
    text = page.read_text(encoding="utf-8")
    # the data block the page inlines (ctm.pictures.viewer escapes <, > and & in it)
    match = re.search(r'<script id="ctm-data" type="application/json">(.*?)</script>', text, re.S)
    payload = json.loads(match.group(1)) if match else None
    return page, payload


def set_tick(page, tick: int) -> None:
    page.fill("#tick-slider", str(tick))


def test_the_maze_page_draws_the_route_of_each_tick(browser, maze_view):
    path, payload = maze_view
    assert payload is not None and payload["kind"] == "maze"
    T = payload["ticks"]
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(path.as_uri())
        page.wait_for_selector("#samples li")
        assert page.locator("#samples li").count() == SAMPLES
        for pos, s in enumerate(payload["samples"]):
            said = page.text_content(f"#samples li[data-pos='{pos}']")
            assert ("solved \u2713" in said) if s["right"] else ("not solved" in said)
        # the sample whose routes differ most over the ticks
        pos = max(range(SAMPLES), key=lambda p: len(set(zip(payload["samples"][p]["drawn"],
                                                             payload["samples"][p]["prefix"], strict=True))))
        page.click(f"#samples li[data-pos='{pos}']")
        s = payload["samples"][pos]
        walls = sum(1 for c in base64.b64decode(s["maze"]) if c == 0)
        pictures = []
        for t in range(T):
            set_tick(page, t + 1)
            assert page.text_content("#tick-label") == f"tick {t + 1} / {T}"
            assert page.locator("#maze-route rect.wall").count() == walls
            assert page.locator("#maze-route line.route-move").count() == s["drawn"][t]
            wrong = max(0, s["drawn"][t] - s["prefix"][t])
            assert page.locator("#maze-route line.route-move[data-wrong='1']").count() == wrong
            assert page.locator("#maze-route line.wall-mark").count() == (2 if s["wall"][t] else 0)
            info = page.locator("#maze-route-info")
            assert int(info.get_attribute("data-drawn")) == s["drawn"][t]
            assert int(info.get_attribute("data-solved")) == int(s["solved"][t])
            assert int(page.get_attribute("#maze-attn", "data-cell")) == s["attention_max"][t]
            assert f"tick {t + 1}: " in page.text_content("#sample-title")
            pictures.append((page.eval_on_selector("#maze", "c => c.toDataURL()"),
                             page.inner_html("#maze-route")))
        assert len(set(pictures)) > 1  # stepping the ticks changes the panel
        page.keyboard.press("ArrowLeft")
        assert page.text_content("#tick-label") == f"tick {T - 1} / {T}"
        page.select_option("#filter", "wrong")
        shown = page.eval_on_selector_all("#samples li[data-pos]", "els => els.map(e => +e.dataset.pos)")
        assert shown == [p for p, s in enumerate(payload["samples"]) if not s["right"]]
    finally:
        page.close()
    assert errors == []
