// The parity task's renderer for the ctm tick viewer (kind "parity"; its data: ctm/tasks/parity/viewer.py):
// the sequence, the attention over its positions and the predicted parity against the truth at this tick,
// and every position's answer over all ticks.
CTM.renderers.parity = (function () {
  const { el, span, decode, panel } = CTM;
  const PLUS = "#d9e7f5", MINUS = "#e8833a", EVEN = "#f4f4f4", ODD = "#3b3b3b";
  const RIGHT = "#2e9d4a", WRONG = "#d0453a";
  let L, T, N, seqSvg, info, gridSvg;

  const mark = (right) => (right ? "\u2713" : "\u2717");
  // the answer at position i and tick t: 1 (odd) where the probability of odd is at least 128/255
  const odd = (s, t, i) => s.oddU8[t * L + i];
  const answerAt = (s, t, i) => (odd(s, t, i) >= 128 ? 1 : 0);
  function hits(s, t) {
    let n = 0;
    for (let i = 0; i < L; i++) n += answerAt(s, t, i) === s.truth[i] ? 1 : 0;
    return n;
  }
  function grey(v) { const g = Math.round(244 - (244 - 59) * v); return `rgb(${g},${g},${g})`; }

  // Rows of cells, one column per position: the input, the attention, the truth, the answer at tick t.
  const ROWS = ["input", "attention", "truth", "answer"];
  function drawSequence(s, t) {
    const W = 560, left = 70, cw = Math.min(28, (W - left - 4) / L), ch = 22, gap = 6;
    const H = ROWS.length * (ch + gap) + 34;
    seqSvg.textContent = "";
    seqSvg.setAttribute("height", H);
    seqSvg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    ROWS.forEach((name, r) => {
      el("text", { x: left - 6, y: r * (ch + gap) + 15, "text-anchor": "end" }, seqSvg).textContent = name;
    });
    const top = s.attention_max[t], x = (i) => left + i * cw;
    let lo = 255;  // the attention is shaded over this tick's range: its least weight blank, its largest full
    for (let i = 0; i < N; i++) lo = Math.min(lo, s.attn[t * N + i]);
    for (let i = 0; i < L; i++) {
      const sign = s.sequence[i], truth = s.truth[i], ans = answerAt(s, t, i), p = odd(s, t, i) / 255;
      el("rect", { class: "seq-cell", "data-pos": i, x: x(i), y: 0, width: cw - 1, height: ch,
                   fill: sign === "-" ? MINUS : PLUS }, seqSvg);
      if (cw >= 10) {
        el("text", { x: x(i) + cw / 2 - 0.5, y: 15, "text-anchor": "middle" }, seqSvg).textContent =
          sign === "-" ? "\u2212" : "+";
      }
      const a = i < N ? (s.attn[t * N + i] - lo) / (255 - lo || 1) : 0;
      el("rect", { class: "attn-cell", "data-pos": i, "data-a": a.toFixed(3), x: x(i), y: ch + gap, width: cw - 1,
                   height: ch, fill: `rgba(230, 80, 20, ${(0.05 + 0.9 * a).toFixed(3)})` }, seqSvg);
      el("rect", { class: "truth-cell", "data-pos": i, x: x(i), y: 2 * (ch + gap), width: cw - 1, height: ch,
                   fill: truth ? ODD : EVEN }, seqSvg);
      el("rect", { class: "answer-cell", "data-pos": i, "data-odd": p.toFixed(3), "data-answer": ans,
                   "data-right": ans === truth ? 1 : 0, x: x(i), y: 3 * (ch + gap), width: cw - 1, height: ch,
                   fill: grey(p), stroke: ans === truth ? "none" : WRONG, "stroke-width": 2 }, seqSvg);
      if (ans !== truth) {
        el("text", { class: "wrong-mark", x: x(i) + cw / 2 - 0.5, y: 4 * (ch + gap) + 10, "text-anchor": "middle",
                     fill: WRONG }, seqSvg).textContent = "\u2717";
      }
    }
    if (top < L) {
      el("rect", { id: "attn-top", x: x(top) + 0.5, y: ch + gap + 0.5, width: cw - 2, height: ch - 1, fill: "none",
                   stroke: "#1f5fbf", "stroke-width": 2.5 }, seqSvg);
    }
    const step = Math.max(1, Math.ceil(L / 16));
    for (let i = 0; i < L; i += step) {
      el("text", { x: x(i) + cw / 2, y: H - 4, "text-anchor": "middle" }, seqSvg).textContent = i;
    }
  }

  // Every position's answer at every tick: green right, red wrong (paler: less sure); this tick boxed.
  function drawGrid(s, t) {
    const W = 560, left = 36, top = 4, cw = Math.min(28, (W - left - 4) / L), ch = Math.max(3, Math.min(14, 240 / T));
    const H = top + T * ch + 22;
    gridSvg.textContent = "";
    gridSvg.setAttribute("height", H);
    gridSvg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    for (let k = 0; k < T; k++) {
      for (let i = 0; i < L; i++) {
        const p = odd(s, k, i) / 255, sure = Math.abs(2 * p - 1), right = answerAt(s, k, i) === s.truth[i];
        el("rect", { x: left + i * cw, y: top + k * ch, width: cw - 1, height: Math.max(1, ch - 1),
                     fill: right ? RIGHT : WRONG, "fill-opacity": (0.25 + 0.75 * sure).toFixed(3) }, gridSvg);
      }
    }
    for (const k of [0, Math.floor((T - 1) / 2), T - 1]) {
      el("text", { x: left - 4, y: top + k * ch + Math.min(ch, 11), "text-anchor": "end" }, gridSvg).textContent = k + 1;
    }
    el("rect", { id: "grid-tick", x: left - 1, y: top + t * ch - 0.5, width: L * cw + 1, height: ch, fill: "none",
                 stroke: "#1f5fbf", "stroke-width": 1.5 }, gridSvg);
    el("text", { x: left, y: H - 6 }, gridSvg).textContent = "positions \u2192, ticks \u2193";
  }

  return {
    init(data) {
      L = data.length; T = data.ticks; N = data.tokens;
      for (const s of data.samples) {
        s.oddU8 = decode(s.odd); s.attn = decode(s.attention);
        s.truth = Array.from(s.target, (c) => (c === "1" ? 1 : 0));
      }
      const seq = panel("Sequence, attention and parity at this tick",
                        "input: + and \u2212 (the \u2212s flip the parity); attention: this tick's weights, " +
                        "shaded over their range (boxed: the most attended); truth and answer: dark is odd (the answer's shade: the " +
                        "probability of odd); \u2717 and a red edge: wrong");
      seqSvg = el("svg", { id: "sequence", width: 560, height: 160 }, seq.body);
      info = document.createElement("div");
      info.className = "note"; info.id = "parity-info";
      seq.body.append(info);
      const grid = panel("The answer at every position and tick",
                         "green: right, red: wrong; paler: less sure; boxed: this tick");
      gridSvg = el("svg", { id: "answers", width: 560, height: 200 }, grid.body);
    },
    thumbnail(s) {
      const cols = Math.ceil(Math.sqrt(L)), rows = Math.ceil(L / cols), c = document.createElement("canvas");
      c.width = cols; c.height = rows;
      const ctx = c.getContext("2d");
      for (let i = 0; i < L; i++) {
        ctx.fillStyle = s.sequence[i] === "-" ? MINUS : PLUS;
        ctx.fillRect(i % cols, Math.floor(i / cols), 1, 1);
      }
      return c;
    },
    summary(s) {
      return span(s.right ? "" : "wrong", `${s.right_positions}/${L} right ${mark(s.right)}`);
    },
    heading(s, t) {
      const n = hits(s, t);
      return [`${L} positions \u00b7 tick ${t + 1}: `, span(n === L ? "ok" : "bad", `${n} of ${L} right ${mark(n === L)}`)];
    },
    answer(s, t) {
      let bits = "";
      for (let i = 0; i < L; i++) bits += answerAt(s, t, i);
      const n = hits(s, t);
      return `${bits} (${n} of ${L} right) ${mark(n === L)}`;
    },
    draw(s, t) {
      drawSequence(s, t);
      drawGrid(s, t);
      const top = s.attention_max[t], n = hits(s, t);
      info.dataset.top = top; info.dataset.right = n;
      info.textContent = `tick ${t + 1}: most attended position ${top} (weight ${s.attention_peak[t].toFixed(3)}); ` +
        `${n} of ${L} positions right`;
    },
  };
})();
