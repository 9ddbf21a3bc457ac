// The QAMNIST task's renderer for the ctm tick viewer (kind "qamnist"; its data: ctm/tasks/qamnist/viewer.py):
// the question's digits and tokens with the input of the tick boxed, the digit attended with the attention over
// it (else the token), and the answer decoded at every tick against the true running value.
CTM.renderers.qamnist = (function () {
  const { el, span, decode, panel } = CTM;
  const NOW = "#ff9f1c", RIGHT = "#2e9d4a", WRONG = "#d0453a", FREE = "#8c8c8c", TRUTH = "#2ca02c";
  const DIGIT_BAND = "#eef3fa", ANSWER_BAND = "#fff4dc", CURSOR = "#1f5fbf";
  const SIDE = 224, RASTER_W = 560, ROW = 22;
  let GRID, IH, IW, shown = null;
  let digitsRow, tokensRow, readingInfo, arithInfo, inputCanvas, attnInfo, rasterSvg, answerInfo;

  const mark = (ok) => (ok ? "\u2713" : "\u2717");
  const kindAt = (s, t) => s.kinds[s.reads[t]];
  const labelAt = (s, t) => s.labels[s.reads[t]];
  const digitAt = (s, t) => (kindAt(s, t) === "digit" ? s.reads[t] : -1);
  const operations = (s) => s.kinds.filter((k) => k === "operator").length;
  const isAnswer = (s, t) => kindAt(s, t) === "answer";
  // "right", "wrong" or "none" (no running value yet): the decoded answer of tick t against the truth
  const stateAt = (s, t) => (s.truth[t] < 0 ? "none" : s.decoded[t] === s.truth[t] ? "right" : "wrong");
  const tokenText = (label) => (label.startsWith("index ") ? label.slice(6) : label === "answer" ? "= ?" : label);

  // Digit i of s drawn into a canvas context at (x, y), w x h, ink dark on white.
  function drawDigit(ctx, s, i, x, y, w, h) {
    const img = ctx.createImageData(IW, IH), n = IH * IW;
    for (let k = 0; k < n; k++) {
      const v = 255 - s.img[i * n + k];
      img.data[4 * k] = v; img.data[4 * k + 1] = v; img.data[4 * k + 2] = v; img.data[4 * k + 3] = 255;
    }
    const small = document.createElement("canvas");
    small.width = IW; small.height = IH;
    small.getContext("2d").putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(small, x, y, w, h);
  }

  // The question's row of digits and row of tokens, built once per sample shown.
  function buildQuestion(s) {
    digitsRow.textContent = ""; tokensRow.textContent = "";
    const D = s.digits.length, side = Math.max(28, Math.min(64, Math.floor(440 / D) - 8));
    for (let i = 0; i < D; i++) {
      const box = document.createElement("div"), c = document.createElement("canvas"), cap = document.createElement("div");
      box.className = "qa-digit"; box.dataset.digit = i;
      Object.assign(box.style, { display: "inline-block", textAlign: "center", margin: "2px", padding: "2px",
                                 border: "3px solid transparent", borderRadius: "4px" });
      c.width = side; c.height = side;
      Object.assign(c.style, { width: `${side}px`, height: `${side}px`, display: "block", imageRendering: "pixelated" });
      drawDigit(c.getContext("2d"), s, i, 0, 0, side, side);
      cap.className = "note"; cap.textContent = `digit ${i}`;
      box.append(c, cap);
      digitsRow.append(box);
    }
    s.kinds.forEach((kind, k) => {
      if (kind === "digit") return;
      const tok = span("qa-token", tokenText(s.labels[k]));
      tok.dataset.input = k; tok.dataset.kind = kind;
      Object.assign(tok.style, { display: "inline-block", minWidth: "26px", textAlign: "center", padding: "2px 5px",
                                 margin: "2px", fontSize: "18px", border: "3px solid transparent", borderRadius: "4px",
                                 fontWeight: kind === "operator" ? "700" : "400" });
      tokensRow.append(tok);
    });
    arithInfo.textContent = s.arithmetic;
    shown = s;
  }

  function highlight(s, t) {
    const k = s.reads[t];
    for (const box of digitsRow.children) {
      const now = Number(box.dataset.digit) === k && kindAt(s, t) === "digit";
      box.style.borderColor = now ? NOW : "transparent";
      box.classList.toggle("now", now);
    }
    for (const tok of tokensRow.children) {
      const now = Number(tok.dataset.input) === k;
      tok.style.borderColor = now ? NOW : "transparent";
      tok.classList.toggle("now", now);
    }
    const d = digitAt(s, t), label = labelAt(s, t);
    readingInfo.dataset.input = k;
    if (d >= 0) readingInfo.textContent = `tick ${t + 1} reads digit ${d} (a ${s.digits[d]})`;
    else if (label.startsWith("index ")) {
      const i = Number(label.slice(6));
      readingInfo.textContent = `tick ${t + 1} reads index ${i}: digit ${i} is a ${s.digits[i]}`;
    } else if (label === "answer") readingInfo.textContent = `tick ${t + 1} reads nothing: it answers`;
    else readingInfo.textContent = `tick ${t + 1} reads the operator ${label}`;
  }

  // The digit of tick t with the attention over its tokens stretched over it, the most attended boxed; on the
  // other ticks the token, as text.
  function drawInput(s, t) {
    const ctx = inputCanvas.getContext("2d"), d = digitAt(s, t);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, SIDE, SIDE);
    if (d < 0) {
      const label = labelAt(s, t);
      ctx.fillStyle = "#222"; ctx.textAlign = "center"; ctx.textBaseline = "middle";
      ctx.font = `bold ${label.length > 2 ? 34 : 64}px system-ui, sans-serif`;
      ctx.fillText(label, SIDE / 2, SIDE / 2);
      inputCanvas.dataset.digit = -1;
      attnInfo.dataset.cell = -1;
      attnInfo.textContent = label === "answer" ? "nothing to read: the answer ticks"
        : `no image at this tick: the token ${label}`;
      return;
    }
    drawDigit(ctx, s, d, 0, 0, SIDE, SIDE);
    const [gh, gw] = GRID, n = gh * gw, cw = SIDE / gw, ch = SIDE / gh;
    for (let k = 0; k < n; k++) {
      const a = s.attn[t * n + k] / 255;
      ctx.fillStyle = `rgba(230, 80, 20, ${(0.6 * a).toFixed(3)})`;
      ctx.fillRect((k % gw) * cw, Math.floor(k / gw) * ch, cw, ch);
    }
    const top = s.attention_max[t];
    ctx.strokeStyle = CURSOR; ctx.lineWidth = 3;
    ctx.strokeRect((top % gw) * cw + 1.5, Math.floor(top / gw) * ch + 1.5, cw - 3, ch - 3);
    inputCanvas.dataset.digit = d;
    attnInfo.dataset.cell = top;
    attnInfo.textContent = `digit ${d}: most attended token (${Math.floor(top / gw)}, ${top % gw}) of the ` +
      `${gh}\u00d7${gw} grid; boxed`;
  }

  // Every value's probability at every tick of s (0 at the bottom), the decoded value a dot, the true running
  // value a faint step line; digit ticks and answer ticks banded, ticks after t dimmed, t boxed.
  function drawRaster(s, t) {
    const n = s.ticks, left = 26, top = 12, bottom = 22, cw = (RASTER_W - left - 6) / n, ch = ROW;
    const H = top + 10 * ch + bottom, x = (k) => left + k * cw, y = (v) => top + (9 - v) * ch;
    rasterSvg.textContent = "";
    rasterSvg.setAttribute("height", H);
    rasterSvg.setAttribute("viewBox", `0 0 ${RASTER_W} ${H}`);
    for (let k = 0; k < n; k++) {
      const band = kindAt(s, k) === "digit" ? DIGIT_BAND : isAnswer(s, k) ? ANSWER_BAND : null;
      if (band) el("rect", { x: x(k), y: top, width: cw, height: 10 * ch, fill: band }, rasterSvg);
      for (let v = 0; v < 10; v++) {
        const p = s.p[k * 10 + v];
        if (p < 3) continue;
        el("rect", { x: x(k), y: y(v), width: Math.max(1, cw - 0.5), height: ch - 0.5, fill: "#1f4e9f",
                     "fill-opacity": (p / 255).toFixed(3) }, rasterSvg);
      }
    }
    for (let v = 0; v < 10; v++) {
      el("text", { x: left - 5, y: y(v) + ch / 2 + 4, "text-anchor": "end" }, rasterSvg).textContent = v;
    }
    let path = "";
    for (let k = 0; k < n; k++) {
      if (s.truth[k] < 0) continue;
      const yy = (y(s.truth[k]) + ch / 2).toFixed(1);
      path += `${path && s.truth[k - 1] >= 0 ? "L" : "M"}${x(k).toFixed(1)},${yy} L${(x(k) + cw).toFixed(1)},${yy} `;
    }
    if (path) el("path", { id: "qa-truth", d: path, fill: "none", stroke: TRUTH, "stroke-opacity": 0.45,
                           "stroke-width": Math.min(6, ch / 3) }, rasterSvg);
    const r = Math.max(2, Math.min(5, Math.min(cw, ch) / 2.6));
    for (let k = 0; k < n; k++) {
      const state = stateAt(s, k);
      el("circle", { class: "qa-dot", "data-tick": k, "data-state": state, cx: x(k) + cw / 2,
                     cy: y(s.decoded[k]) + ch / 2, r, fill: state === "right" ? RIGHT : state === "wrong" ? WRONG : FREE },
         rasterSvg);
    }
    if (t < n - 1) {
      el("rect", { x: x(t + 1), y: top, width: (n - t - 1) * cw, height: 10 * ch, fill: "#fff", "fill-opacity": 0.7 },
         rasterSvg);
    }
    el("rect", { id: "qa-tick", x: x(t), y: top - 0.5, width: cw, height: 10 * ch + 1, fill: "none", stroke: CURSOR,
                 "stroke-width": 1.5 }, rasterSvg);
    const at = s.answer_tick;
    el("path", { id: "qa-answer-tick", d: `M${x(at) + cw / 2 - 5},${top - 10} l10,0 l-5,8 z`, fill: NOW }, rasterSvg);
    for (const k of [0, Math.floor((n - 1) / 2), n - 1]) {
      el("text", { x: x(k) + cw / 2, y: H - 6, "text-anchor": "middle" }, rasterSvg).textContent = k + 1;
    }
  }

  function tickText(s, t) {
    const v = s.decoded[t], state = stateAt(s, t);
    if (state === "none") return `decodes ${v}; no running value yet`;
    const what = isAnswer(s, t) ? "answer" : "running value";
    return `${what} ${v}, true ${s.truth[t]} ${mark(state === "right")}`;
  }

  return {
    init(data) {
      GRID = data.token_grid; [IH, IW] = data.image_size;
      for (const s of data.samples) { s.img = decode(s.images); s.p = decode(s.probs); s.attn = decode(s.attention); }
      const q = panel("The question", "the digits, then the question's tokens (an index names a digit), then the " +
                      "answer ticks; boxed: the input of this tick");
      digitsRow = document.createElement("div"); digitsRow.id = "qa-digits";
      tokensRow = document.createElement("div"); tokensRow.id = "qa-tokens";
      arithInfo = document.createElement("div"); arithInfo.className = "note"; arithInfo.id = "qa-arithmetic";
      readingInfo = document.createElement("div"); readingInfo.id = "qa-reading";
      q.body.append(digitsRow, tokensRow, arithInfo, readingInfo);
      const inp = panel("Input at this tick", "a digit tick: shade, the attention of this tick over the digit's " +
                        "tokens (the backbone's grid stretched over it); boxed: the most attended");
      inputCanvas = document.createElement("canvas");
      inputCanvas.id = "qa-input"; inputCanvas.width = SIDE; inputCanvas.height = SIDE;
      Object.assign(inputCanvas.style, { width: `${SIDE}px`, height: `${SIDE}px`, imageRendering: "pixelated",
                                         display: "block", border: "1px solid #ddd" });
      inp.body.append(inputCanvas);
      attnInfo = inp.note; attnInfo.id = "qa-attn";
      const ans = panel("Answer at each tick", "rows: the values 0-9; shade: probability; dots: the value decoded " +
                        "(green: the true running value of that tick, red: not, grey: none yet); green line: the " +
                        "true running value; bands: blue the digits, yellow the answer ticks; \u25bc the most " +
                        "certain answer tick, where the answer is read");
      rasterSvg = el("svg", { id: "qa-answers", width: RASTER_W, height: 200 }, ans.body);
      answerInfo = document.createElement("div"); answerInfo.className = "note"; answerInfo.id = "qa-answer-info";
      ans.body.append(answerInfo);
    },
    thumbnail(s) {
      const D = s.digits.length, c = document.createElement("canvas");
      c.width = D * IW; c.height = IH;
      const ctx = c.getContext("2d");
      for (let i = 0; i < D; i++) drawDigit(ctx, s, i, i * IW, 0, IW, IH);
      return c;
    },
    judged: "at the most certain answer tick",
    judgedTick(s) { return s.answer_tick; },
    // The answer comes after the question: halting reads the answer ticks only.
    haltMet(s, tau, t) { return isAnswer(s, t) && s.certainty[t] >= tau; },
    haltTick(s, tau) {
      for (let t = 0; t < s.ticks; t++) if (this.haltMet(s, tau, t)) return t;
      return s.ticks - 1;
    },
    summary(s) {
      return span(s.right ? "" : "wrong", `${s.text} \u2192 ${s.decoded[s.answer_tick]} ${mark(s.right)}`);
    },
    heading(s, t) {
      const D = s.digits.length, O = operations(s), state = stateAt(s, t);
      return [`${D} digit${D === 1 ? "" : "s"}, ${O} operation${O === 1 ? "" : "s"}: ${s.text} = ${s.answer} \u00b7 ` +
              `tick ${t + 1} reads ${labelAt(s, t)}: `,
              span(state === "right" ? "ok" : state === "wrong" ? "bad" : "", tickText(s, t))];
    },
    answer(s, t) {
      const state = stateAt(s, t);
      return `${s.decoded[t]}` + (state === "none" ? " (no running value yet)"
        : ` (true ${s.truth[t]}) ${mark(state === "right")}`);
    },
    draw(s, t) {
      if (shown !== s) buildQuestion(s);
      highlight(s, t);
      drawInput(s, t);
      drawRaster(s, t);
      answerInfo.dataset.decoded = s.decoded[t]; answerInfo.dataset.truth = s.truth[t];
      answerInfo.dataset.state = stateAt(s, t);
      answerInfo.textContent = `tick ${t + 1}: ${tickText(s, t)}`;
    },
  };
})();
