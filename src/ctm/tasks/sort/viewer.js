// The sort task's renderer for the ctm tick viewer (kind "sort"; its data: ctm/tasks/sort/viewer.py):
// the numbers, the sorted list decoded up to this tick against the true one, and the class emitted at every tick.
CTM.renderers.sort = (function () {
  const { el, span, decode, panel } = CTM;
  const BAR = "#9bb0c9", FAINT = "#dcdcdc", RIGHT = "#2e9d4a", WRONG = "#d0453a", NOW = "#ff9f1c";
  const CURSOR = "#1f5fbf";
  let N, T, barsSvg, sortedSvg, rasterSvg, orderInfo, tickInfo;

  const mark = (right) => (right ? "\u2713" : "\u2717");
  const num = (v) => (Math.abs(v) >= 100 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(1) : v.toFixed(2));
  // elements emitted up to and at tick t (emitted_at is increasing)
  function emittedBy(s, t) {
    let k = 0;
    while (k < s.emitted_at.length && s.emitted_at[k] <= t) k++;
    return k;
  }
  const placedRight = (s, k) => k < N && s.order[k] === s.target[k];
  function placedBy(s, k) {
    let n = 0;
    for (let i = 0; i < k; i++) n += placedRight(s, i) ? 1 : 0;
    return n;
  }
  const sorted = (s, t) => { const k = emittedBy(s, t); return placedBy(s, k) === N && k === N; };
  // the index emitted at tick t, or -1
  function emittedAt(s, t) {
    for (let k = 0; k < s.emitted_at.length; k++) if (s.emitted_at[k] === t) return s.order[k];
    return -1;
  }
  function valueAxis(s) {
    let lo = 0, hi = 0;
    for (const v of s.numbers) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    const pad = 0.08 * (hi - lo || 1);
    return [lo - pad, hi + pad];
  }

  // Bars from 0 to each value, one per column; returns the column's x and the value's y.
  function frame(svg, cols, s, label) {
    const W = 560, H = 190, left = 40, right = 6, top = 6, bottom = 26;
    svg.textContent = "";
    svg.setAttribute("height", H);
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    const [lo, hi] = valueAxis(s), cw = (W - left - right) / cols;
    const x = (i) => left + i * cw, y = (v) => top + (1 - (v - lo) / (hi - lo)) * (H - top - bottom);
    for (const v of [lo, 0, hi]) {
      el("text", { x: left - 4, y: y(v) + 4, "text-anchor": "end" }, svg).textContent = num(v);
    }
    el("line", { class: "axis", x1: left, x2: W - right, y1: y(0), y2: y(0) }, svg);
    const step = Math.max(1, Math.ceil(cols / 16));
    for (let i = 0; i < cols; i += step) {
      el("text", { x: x(i) + cw / 2, y: H - 12, "text-anchor": "middle" }, svg).textContent = i;
    }
    el("text", { x: left + (W - left - right) / 2, y: H - 1, "text-anchor": "middle" }, svg).textContent = label;
    return { x, y, cw };
  }

  // The numbers by index: grey until emitted, then green at its place, red not; this tick's outlined.
  function drawBars(s, t) {
    const { x, y, cw } = frame(barsSvg, N, s, "index");
    const k = emittedBy(s, t), state = new Array(N).fill(0);
    for (let j = 0; j < k; j++) {
      const i = s.order[j];
      state[i] = placedRight(s, j) || state[i] === 1 ? 1 : 2;
    }
    const now = emittedAt(s, t);
    for (let i = 0; i < N; i++) {
      const v = s.numbers[i];
      el("rect", { class: "num-bar", "data-index": i, "data-state": ["none", "right", "wrong"][state[i]],
                   x: x(i) + 0.1 * cw, y: Math.min(y(v), y(0)), width: Math.max(1, 0.8 * cw),
                   height: Math.max(1, Math.abs(y(v) - y(0))), fill: [BAR, RIGHT, WRONG][state[i]],
                   stroke: i === now ? NOW : "none", "stroke-width": 3 }, barsSvg);
    }
  }

  // The sorted list so far: the emitted values in emitted order over the true sorted values (faint).
  function drawSorted(s, t) {
    const cols = Math.max(N, s.order.length), { x, y, cw } = frame(sortedSvg, cols, s, "place in the sorted order");
    for (let p = 0; p < N; p++) {
      const v = s.numbers[s.target[p]];
      el("rect", { x: x(p) + 0.1 * cw, y: Math.min(y(v), y(0)), width: Math.max(1, 0.8 * cw),
                   height: Math.max(1, Math.abs(y(v) - y(0))), fill: FAINT }, sortedSvg);
    }
    const k = emittedBy(s, t), r = Math.max(2, Math.min(5, cw / 3));
    const points = [];
    for (let j = 0; j < k; j++) points.push(`${(x(j) + cw / 2).toFixed(1)},${y(s.numbers[s.order[j]]).toFixed(1)}`);
    if (k > 1) el("polyline", { points: points.join(" "), fill: "none", stroke: "#888", "stroke-width": 1 }, sortedSvg);
    for (let j = 0; j < k; j++) {
      const ok = placedRight(s, j);
      el("circle", { class: "sorted-dot", "data-place": j, "data-index": s.order[j], "data-right": ok ? 1 : 0,
                     cx: x(j) + cw / 2, cy: y(s.numbers[s.order[j]]), r, fill: ok ? RIGHT : WRONG }, sortedSvg);
    }
  }

  // Every class at every tick: rows the indices, smallest value lowest, the blank on top; the shade is the
  // probability, emitted classes are dots (green: placed right, red: not); ticks after this one are dimmed.
  function drawRaster(s, t) {
    const W = 560, left = 44, top = 4, bottom = 22, cw = (W - left - 6) / T;
    const ch = Math.max(2, Math.min(14, 260 / (N + 1))), H = top + (N + 1) * ch + bottom;
    rasterSvg.textContent = "";
    rasterSvg.setAttribute("height", H);
    rasterSvg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    const rowOf = new Array(N + 1);
    s.target.forEach((i, r) => { rowOf[i] = r; });
    rowOf[N] = N;
    const yRow = (r) => top + (N - r) * ch;  // row 0 (the smallest) at the bottom, the blank (row N) on top
    for (let k = 0; k < T; k++) {
      for (let c = 0; c <= N; c++) {
        const p = s.p[k * (N + 1) + c];
        if (p < 3) continue;
        el("rect", { x: left + k * cw, y: yRow(rowOf[c]), width: Math.max(1, cw - 0.5), height: Math.max(1, ch - 0.5),
                     fill: "#1f4e9f", "fill-opacity": (p / 255).toFixed(3) }, rasterSvg);
      }
    }
    el("line", { class: "axis", x1: left, x2: W - 6, y1: yRow(N) + ch, y2: yRow(N) + ch }, rasterSvg);
    el("text", { x: left - 4, y: yRow(N) + ch - 2, "text-anchor": "end" }, rasterSvg).textContent = "blank";
    el("text", { x: left - 4, y: yRow(0) + ch - 1, "text-anchor": "end" }, rasterSvg).textContent = "min";
    el("text", { x: left - 4, y: yRow(N - 1) + ch, "text-anchor": "end" }, rasterSvg).textContent = "max";
    const r = Math.max(1.5, Math.min(4, Math.min(cw, ch) / 2.2));
    for (let j = 0; j < s.order.length; j++) {
      const ok = placedRight(s, j);
      el("circle", { class: "raster-mark", cx: left + (s.emitted_at[j] + 0.5) * cw, cy: yRow(rowOf[s.order[j]]) + ch / 2,
                     r, fill: ok ? RIGHT : WRONG }, rasterSvg);
    }
    if (t < T - 1) {
      el("rect", { x: left + (t + 1) * cw, y: top, width: (T - t - 1) * cw, height: (N + 1) * ch, fill: "#fff",
                   "fill-opacity": 0.7 }, rasterSvg);
    }
    el("rect", { id: "raster-tick", x: left + t * cw, y: top - 0.5, width: cw, height: (N + 1) * ch + 1, fill: "none",
                 stroke: CURSOR, "stroke-width": 1.5 }, rasterSvg);
    for (const k of [0, Math.floor((T - 1) / 2), T - 1]) {
      el("text", { x: left + (k + 0.5) * cw, y: H - 6, "text-anchor": "middle" }, rasterSvg).textContent = k + 1;
    }
  }

  function orderText(s, k) {
    const shown = s.order.slice(0, k);
    return shown.length ? shown.join(" ") : "nothing yet";
  }

  return {
    init(data) {
      N = data.n; T = data.ticks;
      for (const s of data.samples) s.p = decode(s.probs);
      const nums = panel("The numbers at this tick",
                         "bars by index: grey until emitted, then green at its place in the sorted order, red not; " +
                         "outlined: the index emitted at this tick");
      barsSvg = el("svg", { id: "numbers", width: 560, height: 190 }, nums.body);
      tickInfo = document.createElement("div");
      tickInfo.className = "note"; tickInfo.id = "sort-tick";
      nums.body.append(tickInfo);
      const done = panel("Sorted so far",
                         "the emitted values in emitted order (green: at their place, red: not) over the true sorted " +
                         "values (grey)");
      sortedSvg = el("svg", { id: "sorted", width: 560, height: 190 }, done.body);
      orderInfo = document.createElement("div");
      orderInfo.className = "note"; orderInfo.id = "sort-order";
      done.body.append(orderInfo);
      const out = panel("The output at every tick",
                        "rows: the indices, smallest value lowest, and the blank; shade: probability; dots: emitted " +
                        "(green: placed right, red: not); boxed: this tick, later ticks dimmed");
      rasterSvg = el("svg", { id: "emitted", width: 560, height: 200 }, out.body);
    },
    thumbnail(s) {
      const c = document.createElement("canvas"), H = 12, [lo, hi] = valueAxis(s);
      c.width = N; c.height = H;
      const ctx = c.getContext("2d");
      ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, N, H);
      ctx.fillStyle = s.right ? RIGHT : BAR;
      for (let i = 0; i < N; i++) {
        const h = Math.max(1, Math.round(((s.numbers[i] - lo) / (hi - lo)) * H));
        ctx.fillRect(i, H - h, 1, h);
      }
      return c;
    },
    judged: "after all ticks",
    judgedTick() { return T - 1; },
    // Sorting halts once the order is complete (N emitted) and the tick's certainty reaches tau (SortTask.halting).
    haltMet(s, tau, t) { return emittedBy(s, t) >= N && s.certainty[t] >= tau; },
    haltTick(s, tau) {
      for (let t = 0; t < T; t++) if (this.haltMet(s, tau, t)) return t;
      return T - 1;
    },
    summary(s) {
      return span(s.right ? "" : "wrong", `${s.placed}/${N} placed ${mark(s.right)}`);
    },
    heading(s, t) {
      const n = placedBy(s, emittedBy(s, t)), ok = sorted(s, t);
      return [`${N} numbers \u00b7 tick ${t + 1}: `, span(ok ? "ok" : "bad", `${n} of ${N} placed right ${mark(ok)}`)];
    },
    answer(s, t) {
      const k = emittedBy(s, t), n = placedBy(s, k);
      return `order ${orderText(s, k)} (${n} of ${N} placed right) ${mark(sorted(s, t))}`;
    },
    draw(s, t) {
      drawBars(s, t);
      drawSorted(s, t);
      drawRaster(s, t);
      const k = emittedBy(s, t), n = placedBy(s, k), now = emittedAt(s, t), best = s.best[t];
      orderInfo.dataset.emitted = k; orderInfo.dataset.right = n;
      orderInfo.textContent = `order so far: ${orderText(s, k)} (${k} emitted, ${n} of ${N} placed right)`;
      tickInfo.dataset.now = now;
      tickInfo.textContent = now >= 0 ? `tick ${t + 1} emits index ${now} (${num(s.numbers[now])})`
        : best === N ? `tick ${t + 1} emits nothing (blank)` : `tick ${t + 1} repeats index ${best}: nothing new`;
    },
  };
})();
