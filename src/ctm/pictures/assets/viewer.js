// The ctm tick viewer: plain JS, no libraries. Data comes from the JSON block that ctm.view inlines.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("ctm-data").textContent);
  const T = DATA.ticks, CLASSES = DATA.classes, GRID = DATA.token_grid, SHAPE = DATA.input.shape;
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  function decode(b64) {
    const s = atob(b64), out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }
  const samples = DATA.samples.map((s, pos) => ({ ...s, pos, pixels: decode(s.image), attn: decode(s.attention) }));

  const state = { pos: 0, tick: 0, playing: null, threshold: DATA.threshold, filter: "all" };

  // Halting: the first tick whose certainty reaches the threshold (else the last), 0-based.
  function haltTick(s, tau) {
    for (let t = 0; t < T; t++) if (s.certainty[t] >= tau) return t;
    return T - 1;
  }
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

  // ------------------------------------------------------------------ input image (+ attention)
  function drawImage(canvas, s, tick, withAttention) {
    const [C, H, W] = SHAPE, ctx = canvas.getContext("2d");
    const img = ctx.createImageData(W, H), px = s.pixels, plane = H * W;
    for (let i = 0; i < plane; i++) {
      let r, g, b;
      if (C === 3) { r = px[i]; g = px[plane + i]; b = px[2 * plane + i]; }
      else { let m = 0; for (let c = 0; c < C; c++) m += px[c * plane + i]; r = g = b = 255 - m / C; }
      img.data[4 * i] = r; img.data[4 * i + 1] = g; img.data[4 * i + 2] = b; img.data[4 * i + 3] = 255;
    }
    const small = document.createElement("canvas");
    small.width = W; small.height = H;
    small.getContext("2d").putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
    if (!withAttention) return;
    const [gh, gw] = GRID, n = gh * gw, cw = canvas.width / gw, ch = canvas.height / gh;
    for (let k = 0; k < n; k++) {
      const a = s.attn[tick * n + k] / 255;
      ctx.fillStyle = `rgba(230, 80, 20, ${(0.6 * a).toFixed(3)})`;
      ctx.fillRect((k % gw) * cw, Math.floor(k / gw) * ch, cw, ch);
    }
    const top = s.attention_max[tick];
    ctx.strokeStyle = "#1f5fbf"; ctx.lineWidth = 3;
    ctx.strokeRect((top % gw) * cw + 1.5, Math.floor(top / gw) * ch + 1.5, cw - 3, ch - 3);
  }

  // ------------------------------------------------------------------ sample list
  function order() {
    const tau = state.threshold;
    let list = samples.slice();
    if (state.filter === "wrong") list = list.filter((s) => s.prediction !== s.target);
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
      const c = document.createElement("canvas");
      c.width = SHAPE[2]; c.height = SHAPE[1];
      drawImage(c, s, 0, false);
      const right = s.prediction === s.target;
      const text = document.createElement("span");
      const ticks = haltTick(s, state.threshold) + 1;
      text.append(`#${s.index}: ${CLASSES[s.target]} \u2192 `,
                  span(right ? "" : "wrong", `${CLASSES[s.prediction]} ${right ? "\u2713" : "\u2717"}`),
                  ` \u00b7 ${ticks} tick${ticks === 1 ? "" : "s"}`);
      li.title = `sample ${s.index}: target ${CLASSES[s.target]}, answer ${CLASSES[s.prediction]} at its most ` +
        `certain tick; halts after ${ticks} tick${ticks === 1 ? "" : "s"} at threshold ${state.threshold}`;
      li.append(c, text);
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
    markSelected();
    render();
  }

  // ------------------------------------------------------------------ charts
  function drawProbs(s, t) {
    const svg = $("probs"), W = +svg.getAttribute("width"), rowH = 22, left = 70, barW = W - left - 50;
    svg.textContent = "";
    svg.setAttribute("height", CLASSES.length * rowH + 6);
    svg.setAttribute("viewBox", `0 0 ${W} ${CLASSES.length * rowH + 6}`);
    const p = s.probs[t], pred = argmax(p);
    CLASSES.forEach((name, k) => {
      const y = 3 + k * rowH, v = p[k] / 1000;
      const label = el("text", { x: left - 6, y: y + 15, "text-anchor": "end" }, svg);
      label.textContent = (k === s.target ? "\u25B6 " : "") + name;
      el("rect", { x: left, y: y + 3, width: barW, height: rowH - 6, fill: "#f2f2f2" }, svg);
      const colour = k === s.target ? "var(--target)" : k === pred ? "var(--wrong)" : "var(--bar)";
      el("rect", { id: `bar-${k}`, class: "bar", "data-p": v.toFixed(3), x: left, y: y + 3,
                   width: (v * barW).toFixed(1), height: rowH - 6, fill: colour }, svg);
      const val = el("text", { x: left + barW + 6, y: y + 15 }, svg);
      val.textContent = v.toFixed(3);
    });
  }

  function lineChart(svg, series, lo, hi, t, extra) {
    const W = +svg.getAttribute("width"), H = +svg.getAttribute("height"), L = 36, R = 8, TOP = 8, B = 22;
    const x = (i) => L + (T === 1 ? 0 : (i / (T - 1)) * (W - L - R));
    const y = (v) => TOP + (1 - (v - lo) / (hi - lo || 1)) * (H - TOP - B);
    svg.textContent = "";
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    for (const v of [lo, (lo + hi) / 2, hi]) {
      el("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }, svg);
      el("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end" }, svg).textContent = +v.toFixed(2);
    }
    el("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }, svg);
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

  const TRACE_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

  function render() {
    const s = samples[state.pos], t = state.tick, tau = state.threshold;
    const p = s.probs[t], pred = argmax(p), right = pred === s.target;
    $("tick-slider").value = t + 1;
    $("tick-label").textContent = `tick ${t + 1} / ${T}`;
    const answer = `${CLASSES[pred]} (p = ${(p[pred] / 1000).toFixed(2)}) ${right ? "\u2713" : "\u2717"}`;
    $("sample-title").replaceChildren(`sample #${s.index} \u00b7 target ${CLASSES[s.target]} \u00b7 tick ${t + 1}: `,
                                      span(right ? "ok" : "bad", answer));
    drawImage($("image"), s, t, true);
    const top = s.attention_max[t], [gh, gw] = GRID;
    const info = $("attn-info");
    info.dataset.cell = top;
    info.textContent = `most attended: token (${Math.floor(top / gw)}, ${top % gw}) of the ${gh}\u00d7${gw} grid, ` +
      `weight ${s.attention_peak[t].toFixed(3)}; boxed`;
    drawProbs(s, t);
    const h = haltTick(s, tau), hp = argmax(s.probs[h]);
    lineChart($("certainty"), [{ values: s.certainty, colour: "#333", width: 2 }], 0, 1, t, (svg, x, y) => {
      el("line", { class: "threshold", x1: x(0), x2: x(T - 1), y1: y(Math.min(tau, 1)), y2: y(Math.min(tau, 1)) }, svg);
      el("path", { d: `M${x(h)},${y(s.certainty[h]) - 7} l6,7 l-6,7 l-6,-7 z`, fill: "#c08a00", id: "halt-marker" }, svg);
    });
    const reached = s.certainty[h] >= tau;
    $("halt-info").textContent = `halts at tick ${h + 1}` + (reached ? "" : " (never reaches it: the last tick)") +
      `, answering ${CLASSES[hp]} ${hp === s.target ? "\u2713" : "\u2717"}`;
    const traces = DATA.neurons.map((_, k) => ({ values: s.traces.map((row) => row[k]),
                                                 colour: TRACE_COLOURS[k % TRACE_COLOURS.length], width: 1.2 }));
    const flat = s.traces.flat(), lo = Math.min(...flat), hi = Math.max(...flat), pad = 0.05 * (hi - lo || 1);
    lineChart($("traces"), traces, lo - pad, hi + pad, t);
    $("traces-note").textContent = `neurons ${DATA.neurons.join(", ")}: those varying most over ticks ` +
      "(this sample's range)";
  }

  // ------------------------------------------------------------------ controls
  function setTick(t) { state.tick = Math.max(0, Math.min(T - 1, t)); render(); }

  function stop() {
    if (state.playing !== null) clearInterval(state.playing);
    state.playing = null;
    $("play").textContent = "\u25B6 play";
  }
  function play() {
    if (state.tick >= T - 1) setTick(0);
    $("play").textContent = "\u275A\u275A pause";
    state.playing = setInterval(() => { if (state.tick >= T - 1) stop(); else setTick(state.tick + 1); }, 200);
  }

  $("title").textContent = DATA.title;
  const wrong = samples.filter((s) => s.prediction !== s.target).length;
  $("meta").textContent = `${samples.length} samples${DATA.source ? " of " + DATA.source : ""}, ${T} ticks; ` +
    `${wrong} wrong at the most certain tick`;
  $("tick-slider").max = T;
  $("tick-slider").addEventListener("input", (e) => { stop(); setTick(Number(e.target.value) - 1); });
  $("play").addEventListener("click", () => (state.playing === null ? play() : stop()));
  $("threshold").value = state.threshold;
  $("threshold").addEventListener("change", (e) => {
    const v = Number(e.target.value);
    if (!Number.isFinite(v) || v < 0) { e.target.value = state.threshold; return; }
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
})();
