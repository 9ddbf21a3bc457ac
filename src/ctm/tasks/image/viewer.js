// The image task's renderer for the ctm tick viewer (kind "image"; its data: ctm/tasks/image/viewer.py):
// the input with the attention over its token grid, and the class probabilities at the tick.
CTM.renderers.image = (function () {
  const { el, span, decode, argmax, panel } = CTM;
  let CLASSES, GRID, SHAPE, image, attnInfo, probs;

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

  function drawProbs(s, t) {
    const W = +probs.getAttribute("width"), rowH = 22, left = 70, barW = W - left - 50;
    probs.textContent = "";
    probs.setAttribute("height", CLASSES.length * rowH + 6);
    probs.setAttribute("viewBox", `0 0 ${W} ${CLASSES.length * rowH + 6}`);
    const p = s.probs[t], pred = argmax(p);
    CLASSES.forEach((name, k) => {
      const y = 3 + k * rowH, v = p[k] / 1000;
      const label = el("text", { x: left - 6, y: y + 15, "text-anchor": "end" }, probs);
      label.textContent = (k === s.target ? "\u25B6 " : "") + name;
      el("rect", { x: left, y: y + 3, width: barW, height: rowH - 6, fill: "#f2f2f2" }, probs);
      const colour = k === s.target ? "var(--target)" : k === pred ? "var(--wrong)" : "var(--bar)";
      el("rect", { id: `bar-${k}`, class: "bar", "data-p": v.toFixed(3), x: left, y: y + 3,
                   width: (v * barW).toFixed(1), height: rowH - 6, fill: colour }, probs);
      const val = el("text", { x: left + barW + 6, y: y + 15 }, probs);
      val.textContent = v.toFixed(3);
    });
  }

  const mark = (right) => (right ? "\u2713" : "\u2717");

  return {
    init(data) {
      CLASSES = data.classes; GRID = data.token_grid; SHAPE = data.input.shape;
      for (const s of data.samples) {
        s.pixels = decode(s.image); s.attn = decode(s.attention);
        if (s.right === undefined) s.right = s.prediction === s.target;
      }
      const input = panel("Input and attention");
      image = document.createElement("canvas");
      image.id = "image"; image.width = 280; image.height = 280;
      Object.assign(image.style, { width: "280px", height: "280px", imageRendering: "pixelated", display: "block" });
      input.body.append(image);
      attnInfo = input.note; attnInfo.id = "attn-info";
      const classes = panel("Class probabilities at this tick", "green: the target; red: a wrong prediction");
      probs = el("svg", { id: "probs", width: 440, height: 250 }, classes.body);
    },
    thumbnail(s) {
      const c = document.createElement("canvas");
      c.width = SHAPE[2]; c.height = SHAPE[1];
      drawImage(c, s, 0, false);
      return c;
    },
    summary(s) {
      return [`${CLASSES[s.target]} \u2192 `, span(s.right ? "" : "wrong", `${CLASSES[s.prediction]} ${mark(s.right)}`)];
    },
    heading(s, t) {
      const p = s.probs[t], pred = argmax(p), right = pred === s.target;
      const answer = `${CLASSES[pred]} (p = ${(p[pred] / 1000).toFixed(2)}) ${mark(right)}`;
      return [`target ${CLASSES[s.target]} \u00b7 tick ${t + 1}: `, span(right ? "ok" : "bad", answer)];
    },
    answer(s, t) {
      const pred = argmax(s.probs[t]);
      return `${CLASSES[pred]} ${mark(pred === s.target)}`;
    },
    draw(s, t) {
      drawImage(image, s, t, true);
      const top = s.attention_max[t], [gh, gw] = GRID;
      attnInfo.dataset.cell = top;
      attnInfo.textContent = `most attended: token (${Math.floor(top / gw)}, ${top % gw}) of the ${gh}\u00d7${gw} ` +
        `grid, weight ${s.attention_peak[t].toFixed(3)}; boxed`;
      drawProbs(s, t);
    },
  };
})();
