"""The QAMNIST task's viewer panel in a real browser (headless Chromium driven by Playwright, as tests/test_browser.py):
`ctm view` of a tiny QAMNIST run steps through each question, its own number of ticks, with the input of the tick
boxed, the attention on digit ticks, the answer decoded at each tick against the true running value, and the
verdict read at the most certain answer tick; strings from the data reach the page as text only."""

from __future__ import annotations

import json
import re

import pytest
from helpers import run_cli
from test_qamnist_pictures import tiny_run

SAMPLES = 8


def page_data(path):
    """The data block a page inlines (ctm.pictures.viewer escapes <, > and & in it)."""
    match = re.search(r'<script id="ctm-data" type="application/json">(.*?)</script>',
                      path.read_text(encoding="utf-8"), re.S)
    return json.loads(match.group(1)) if match else None


@pytest.fixture(scope="module")
def qa_view(tmp_path_factory):
    """`ctm view` of a tiny QAMNIST run (1-2 digits, 1-2 operations) on 8 test questions: the page and its data."""
    run, _ = tiny_run(tmp_path_factory.mktemp("qamnist-view"))
    assert run_cli("view", run, "--samples", SAMPLES, "--threads", "1") == 0
    page = run / "viewer.html"
    return page, page_data(page)


def open_page(browser, path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    page.wait_for_selector("#samples li")
    return page, errors


def state(s, t):
    return "none" if s["truth"][t] < 0 else "right" if s["decoded"][t] == s["truth"][t] else "wrong"


def test_the_qamnist_page_steps_through_each_question_at_its_own_length(browser, qa_view):
    path, payload = qa_view
    assert payload is not None and payload["kind"] == "qamnist"
    samples = payload["samples"]
    lengths = [s["ticks"] for s in samples]
    assert min(lengths) < max(lengths) == payload["ticks"]
    page, errors = open_page(browser, path)
    try:
        assert page.locator("#samples li").count() == SAMPLES
        assert f"{min(lengths)} to {max(lengths)} ticks" in page.text_content("#meta")
        for pos, s in enumerate(samples):
            said = page.text_content(f"#samples li[data-pos='{pos}']")
            mark = "\u2713" if s["right"] else "\u2717"
            assert f"{s['text']} \u2192 {s['decoded'][s['answer_tick']]} {mark}" in said
            assert f"{s['ticks']} tick" in said
        pos = lengths.index(max(lengths))
        s = samples[pos]
        page.click(f"#samples li[data-pos='{pos}']")
        n, D = s["ticks"], len(s["digits"])
        assert page.locator("#qa-digits .qa-digit").count() == D
        assert page.locator("#qa-tokens .qa-token").count() == len(s["labels"]) - D
        assert page.text_content("#qa-arithmetic") == s["arithmetic"]
        pictures = []
        for t in range(n):
            page.fill("#tick-slider", str(t + 1))
            assert page.text_content("#tick-label") == f"tick {t + 1} / {n}"
            k = s["reads"][t]
            digit = k if s["kinds"][k] == "digit" else -1
            boxed = page.eval_on_selector_all(".qa-digit.now, .qa-token.now",
                                              "els => els.map(e => e.dataset.digit ?? 'input ' + e.dataset.input)")
            assert boxed == ([str(digit)] if digit >= 0 else [f"input {k}"])
            assert int(page.get_attribute("#qa-input", "data-digit")) == digit
            assert int(page.get_attribute("#qa-attn", "data-cell")) == s["attention_max"][t]
            info = page.locator("#qa-answer-info")
            assert int(info.get_attribute("data-decoded")) == s["decoded"][t]
            assert info.get_attribute("data-state") == state(s, t)
            dots = page.eval_on_selector_all("#qa-answers circle.qa-dot", "els => els.map(e => e.dataset.state)")
            assert dots == [state(s, k) for k in range(n)]
            title = page.text_content("#sample-title")
            assert f"tick {t + 1} reads {s['labels'][k]}: " in title
            assert f"judged at the most certain answer tick (tick {s['answer_tick'] + 1}): " in title
            assert page.text_content("#sample-verdict") == ("\u2713" if s["right"] else "\u2717")
            pictures.append((page.eval_on_selector("#qa-input", "c => c.toDataURL()"), page.inner_html("#qa-answers")))
        assert len(set(pictures)) == n  # every tick draws its own input and answers
        # a shorter question shown at the last tick of a longer one: its own last tick, its own slider
        short = lengths.index(min(lengths))
        page.click(f"#samples li[data-pos='{short}']")
        m = lengths[short]
        assert page.text_content("#tick-label") == f"tick {m} / {m}"
        assert page.get_attribute("#tick-slider", "max") == str(m)
        page.keyboard.press("ArrowRight")
        assert page.text_content("#tick-label") == f"tick {m} / {m}"
        page.select_option("#filter", "wrong")
        shown = page.eval_on_selector_all("#samples li[data-pos]", "els => els.map(e => +e.dataset.pos)")
        assert shown == [p for p, s in enumerate(samples) if not s["right"]]
    finally:
        page.close()
    assert errors == []


def test_strings_from_the_data_reach_the_page_as_text(browser, qa_view, tmp_path):
    from ctm.pictures import viewer as view
    from ctm.tasks import make_task

    _, payload = qa_view
    s = payload["samples"][0]
    markup = '<img src=x onerror="window.pwned = 1">'
    token = next(k for k, kind in enumerate(s["kinds"]) if kind == "operator")
    s["labels"][token] = markup
    s["arithmetic"] = f"<b>{s['arithmetic']}</b>"
    s["text"] = f"<i>{s['text']}</i>"
    path = view.write_viewer(payload, tmp_path / "marked.html", make_task("qamnist").viewer_script())
    page, errors = open_page(browser, path)
    try:
        page.click("#samples li[data-pos='0']")
        tick = s["reads"].index(token)
        page.fill("#tick-slider", str(tick + 1))
        assert page.locator("main img, main b, main i, aside img, aside i").count() == 0
        assert page.text_content("#qa-arithmetic") == s["arithmetic"]
        assert markup in page.text_content("#qa-tokens") and markup in page.text_content("#sample-title")
        assert s["text"] in page.text_content("#samples li[data-pos='0']")
        assert page.evaluate("window.pwned") is None
    finally:
        page.close()
    assert errors == []
