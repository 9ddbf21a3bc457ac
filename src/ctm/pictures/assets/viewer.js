// The ctm tick viewer: plain JS, no libraries. Data comes from the JSON block that ctm.pictures.viewer inlines.
//
// This script draws what every task has: the sample picker, the tick slider and play, the certainty curve
// with the halting threshold, the neuron traces. The task's own panels come from a renderer that the task's
// script (inlined after this one) registers under the kind of data it builds, DATA.kind:
//
//   CTM.renderers[kind] = {
//     init(data),      // once, before anything is drawn: add the task's panels (CTM.panel) and prepare its
//                      // per-sample data (e.g. decode base64 arrays with CTM.decode)
//     draw(s, t),      // draw those panels for sample s at tick t (0-based)
//     summary(s),      // the picker's text for s, its answer at its most certain tick
//     heading(s, t),   // the title line after "sample #N · ": what was asked and the answer at tick t
//     answer(s, t),    // the answer at tick t, short: "halts at tick 5, answering <answer>"
//     thumbnail(s),    // optional: a small <canvas> for the picker
//     haltTick(s, tau), // optional: the tick (0-based) s stops at with threshold tau, when the task halts by
//                      // more than its certainty (default: the first tick whose certainty reaches tau, else the last)
//     haltMet(s, tau, t), // optional, with haltTick: whether tick t meets the task's halting rule (else the page
//                      // says the sample never does and stops at the last tick)
//     judged,          // optional: how the task's "right" is judged (default "at the most certain tick")
//     judgedTick(s),   // optional, with judged: the tick (0-based) that "right" reads (default s.most_certain_tick)
//   };
//
// summary, heading and answer return text: a string, a Node, or an array of them.
//
// s is an element of DATA.samples (its JSON fields: index, certainty, traces, most_certain_tick, and
// right, true/false, when the task says whether the answer at the most certain tick is right, which the
// "wrong" filter reads; ticks, its own tick count, where samples differ in length: DATA.ticks is then the
// longest) with pos, its place in DATA.samples, added. Strings from the run reach the page
// as text only: return strings or nodes made with CTM.span / textContent, never markup (no innerHTML).
"use strict";
const CTM = (function () {
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  function decode(b64) {
    const s = atob(b64), out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }
  const parts = (v) => (Array.isArray(v) ? v : [v]);  // a renderer's text: a string, a node, or a list of them
  function argmax(a) { let k = 0; for (let i = 1; i < a.length; i++) if (a[i] > a[k]) k = i; return k; }

  function el(tag, attrs, parent) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  // Strings from the run (class names, title, source) only ever reach the page as text: no innerHTML.
  function span(className, text) {
    const node = document.createElement("span");
    if (className) node.className = className;
    node.textContent = text;
    return node;
  }

  // A new panel before the common ones: {box, body, note}; body is where the renderer draws.
  const taskPanels = [];
  function panel(title, note) {
    const box = document.createElement("div"), h = document.createElement("h2");
    const body = document.createElement("div"), noteEl = document.createElement("div");
    box.className = "panel"; h.textContent = title; noteEl.className = "note";
    if (note) noteEl.textContent = note;
    box.append(h, body, noteEl);
    taskPanels.push(box);
    return { box, body, note: noteEl };
  }

  const renderers = {};

  // What a page of a kind without a renderer shows: what every task has, and why nothing more.
  function fallback(kind) {
    return {
      init() { panel("Task panels", `no renderer for kind "${kind}" in this page: only what every task has is drawn`); },
      draw() {},
      summary(s) { return s.right === undefined ? [] : [span(s.right ? "" : "wrong", s.right ? "\u2713" : "\u2717")]; },
      heading(s, t) { return [`tick ${t + 1}`]; },
      answer() { return "its answer"; },
    };
  }

  function start() {
    const DATA = JSON.parse($("ctm-data").textContent);
    const T = DATA.ticks, KIND = DATA.kind;
    const ticksOf = (s) => s.ticks || T;  // a sample's own tick count (questions differ in length)
    const R = renderers[KIND] || fallback(KIND);
    const samples = DATA.samples.map((s, pos) => Object.assign(s, { pos }));
    const state = { pos: 0, tick: 0, playing: null, threshold: DATA.threshold, filter: "all" };
    R.init(DATA);
    const panels = $("panels");
    panels.prepend(...taskPanels);

    // Halting: the first tick whose certainty reaches the threshold (else the last), 0-based.
    function haltTick(s, tau) {
      if (R.haltTick) return R.haltTick(s, tau);
      const n = ticksOf(s);
      for (let t = 0; t < n; t++) if (s.certainty[t] >= tau) return t;
      return n - 1;
    }
    const judgedAt = R.judged || "at the most certain tick";
    const judgedTick = (s) => (R.judgedTick ? R.judgedTick(s) : s.most_certain_tick);
    const judgedText = (s) => `${judgedAt} (tick ${judgedTick(s) + 1})`;

    // ---------------------------------------------------------------- sample list
    function order() {
      const tau = state.threshold;
      let list = samples.slice();
      if (state.filter === "wrong") list = list.filter((s) => s.right === false);
      else if (state.filter === "uncertain") list.sort((a, b) => Math.max(...a.certainty) - Math.max(...b.certainty));
      else if (state.filter === "ticks") list.sort((a, b) => haltTick(b, tau) - haltTick(a, tau));
      return list;
    }

    function buildList() {
      const ul = $("samples"), list = order();
      ul.textContent = "";
      if (!list.length) {
        const li = document.createElement("li");
        li.className = "empty"; li.textContent = "no sample matches";
        ul.appendChild(li);
        return;
      }
      for (const s of list) {
        const li = document.createElement("li");
        li.dataset.pos = s.pos; li.dataset.index = s.index;
        const thumb = R.thumbnail ? R.thumbnail(s) : null;
        const text = document.createElement("span"), summary = document.createElement("span");
        const ticks = haltTick(s, state.threshold) + 1, plural = ticks === 1 ? "" : "s";
        summary.append(...parts(R.summary(s)));
        text.append(`#${s.index}: `, summary, ` \u00b7 ${ticks} tick${plural}`);
        li.title = `sample ${s.index}: ${summary.textContent} ${judgedText(s)}; halts after ${ticks} ` +
          `tick${plural} at threshold ${state.threshold}`;
        if (thumb) li.append(thumb);
        li.append(text);
        li.addEventListener("click", () => select(s.pos));
        ul.appendChild(li);
      }
      if (!list.some((s) => s.pos === state.pos)) select(list[0].pos);
      else markSelected();
    }

    function markSelected() {
      for (const li of $("samples").children) li.classList.toggle("selected", Number(li.dataset.pos) === state.pos);
    }

    function select(pos) {
      state.pos = pos;
      state.tick = Math.min(state.tick, ticksOf(samples[pos]) - 1);
      markSelected();
      render();
    }

    // ---------------------------------------------------------------- charts
    // The y axis's labels end GAP left of the plot, past the halting marker's half width (6): a sample halting
    // at the first tick has its marker on the plot's left edge, beside the "1".
    const GAP = 10;

    // The y axis's labels for values vs, measured: the plot's left margin fits the widest (a minus sign too).
    function yLabels(svg, vs) {
      const labels = vs.map((v) => {
        const text = el("text", { class: "y-label", "text-anchor": "end" }, svg);
        text.textContent = +v.toFixed(2);
        return text;
      });
      const widest = Math.max(...labels.map((l) => l.getComputedTextLength() || 7 * l.textContent.length));
      return { labels, L: Math.ceil(widest) + 2 + GAP };
    }

    function lineChart(svg, series, lo, hi, t, T, extra) {
      const W = +svg.getAttribute("width"), H = +svg.getAttribute("height"), Rm = 8, TOP = 8, B = 22;
      svg.textContent = "";
      svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
      const values = [lo, (lo + hi) / 2, hi], { labels, L } = yLabels(svg, values);
      const x = (i) => L + (T === 1 ? 0 : (i / (T - 1)) * (W - L - Rm));
      const y = (v) => TOP + (1 - (v - lo) / (hi - lo || 1)) * (H - TOP - B);
      values.forEach((v, k) => {
        el("line", { class: "grid", x1: L, x2: W - Rm, y1: y(v), y2: y(v) }, svg);
        labels[k].setAttribute("x", L - GAP);
        labels[k].setAttribute("y", y(v) + 4);
      });
      el("line", { class: "axis", x1: L, x2: W - Rm, y1: H - B, y2: H - B }, svg);
      for (const i of [0, Math.floor((T - 1) / 2), T - 1]) {
        el("text", { x: x(i), y: H - 6, "text-anchor": "middle" }, svg).textContent = i + 1;
      }
      if (extra) extra(svg, x, y);
      for (const { values, colour, width } of series) {
        el("polyline", { points: values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" "),
                         fill: "none", stroke: colour, "stroke-width": width || 1.5 }, svg);
      }
      el("line", { class: "cursor", id: `${svg.id}-cursor`, x1: x(t), x2: x(t), y1: TOP, y2: H - B }, svg);
      for (const { values, colour } of series) el("circle", { cx: x(t), cy: y(values[t]), r: 3.5, fill: colour }, svg);
    }

    // The sample's right or wrong, as the list marks it, with the tick it reads: the heading's answer is that of
    // the tick shown, which may differ.
    function verdict(s) {
      if (s.right === undefined) return [];
      const mark = span(s.right ? "ok" : "bad", s.right ? "\u2713" : "\u2717");
      mark.id = "sample-verdict";
      return [` \u00b7 judged ${judgedText(s)}: `, mark];
    }

    const TRACE_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

    function render() {
      const s = samples[state.pos], t = state.tick, tau = state.threshold, n = ticksOf(s);
      $("tick-slider").max = n;
      $("tick-slider").value = t + 1;
      $("tick-label").textContent = `tick ${t + 1} / ${n}`;
      $("sample-title").replaceChildren(`sample #${s.index} \u00b7 `, ...parts(R.heading(s, t)), ...verdict(s));
      R.draw(s, t);
      const h = haltTick(s, tau);
      lineChart($("certainty"), [{ values: s.certainty, colour: "#333", width: 2 }], 0, 1, t, n, (svg, x, y) => {
        el("line", { class: "threshold", x1: x(0), x2: x(n - 1), y1: y(Math.min(tau, 1)), y2: y(Math.min(tau, 1)) }, svg);
        el("path", { d: `M${x(h)},${y(s.certainty[h]) - 7} l6,7 l-6,7 l-6,-7 z`, fill: "#c08a00", id: "halt-marker" }, svg);
      });
      const reached = s.certainty[h] >= tau;
      const never = R.haltMet ? !R.haltMet(s, tau, h) : !reached;
      $("halt-info").replaceChildren(`halts at tick ${h + 1}` + (never ? " (never reaches it: the last tick)" : "") +
        ", answering ", ...parts(R.answer(s, h)));
      const traces = DATA.neurons.map((_, k) => ({ values: s.traces.map((row) => row[k]),
                                                   colour: TRACE_COLOURS[k % TRACE_COLOURS.length], width: 1.2 }));
      const flat = s.traces.flat(), lo = Math.min(...flat), hi = Math.max(...flat), pad = 0.05 * (hi - lo || 1);
      lineChart($("traces"), traces, lo - pad, hi + pad, t, n);
      $("traces-note").textContent = `neurons ${DATA.neurons.join(", ")}: those varying most over ticks ` +
        "(this sample's range)";
    }

    // ---------------------------------------------------------------- controls
    function setTick(t) { state.tick = Math.max(0, Math.min(ticksOf(samples[state.pos]) - 1, t)); render(); }

    function stop() {
      if (state.playing !== null) clearInterval(state.playing);
      state.playing = null;
      $("play").textContent = "\u25B6 play";
    }
    function play() {
      const last = () => ticksOf(samples[state.pos]) - 1;
      if (state.tick >= last()) setTick(0);
      $("play").textContent = "\u275A\u275A pause";
      state.playing = setInterval(() => { if (state.tick >= last()) stop(); else setTick(state.tick + 1); }, 200);
    }

    $("title").textContent = DATA.title;
    const judged = samples.filter((s) => s.right !== undefined);
    const wrong = judged.filter((s) => s.right === false).length;
    const shortest = Math.min(...samples.map(ticksOf));
    $("meta").textContent = `${samples.length} samples${DATA.source ? " of " + DATA.source : ""}, ` +
      (shortest < T ? `${shortest} to ${T} ticks` : `${T} ticks`) +
      (judged.length ? `; ${wrong} wrong ${judgedAt}` : "");
    $("judged-note").textContent = judged.length
      ? `\u2713 \u2717: each sample's answer ${judgedAt} (hover one for its tick)` : "";
    $("filter").querySelector("option[value='wrong']").textContent = `wrong (${judgedAt})`;
    $("tick-slider").max = ticksOf(samples[state.pos]);
    $("tick-slider").addEventListener("input", (e) => { stop(); setTick(Number(e.target.value) - 1); });
    $("play").addEventListener("click", () => (state.playing === null ? play() : stop()));
    $("threshold").value = state.threshold;
    $("threshold").addEventListener("change", (e) => {
      const v = Number(e.target.value);
      if (!Number.isFinite(v) || v < 0) { e.target.value = state.threshold; return; }
      if (v === state.threshold) return;  // the change a blur repeats: rebuilding the list would swallow a click
      state.threshold = v;
      buildList();
      render();
    });
    $("filter").addEventListener("change", (e) => { state.filter = e.target.value; buildList(); });
    document.addEventListener("keydown", (e) => {
      if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
      if (e.key === "ArrowRight") { stop(); setTick(state.tick + 1); }
      else if (e.key === "ArrowLeft") { stop(); setTick(state.tick - 1); }
      else if (e.key === " ") { e.preventDefault(); $("play").click(); }
    });
    buildList();
    render();
    document.body.dataset.readyMs = performance.now().toFixed(0);  // since navigation start: the page's open time
  }

  return { renderers, start, decode, argmax, el, span, panel, $ };
})();
