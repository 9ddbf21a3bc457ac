// The maze task's renderer for the ctm tick viewer (kind "maze"; its data: ctm/tasks/maze/viewer.py):
// the maze with the attention of the tick over it, and the route the tick predicts walked from the start.
CTM.renderers.maze = (function () {
  const { el, span, decode, panel } = CTM;
  const WALL = "#000000", FLOOR = "#ffffff", START = "#ff0000", GOAL = "#00c000";
  const ROUTE = "#1f5fbf", WRONG = "#ff7f0e", FAINT = "#9ecae1";
  const STEP = [[-1, 0], [1, 0], [0, -1], [0, 1]];
  const NAMES = "UDLR";
  const SIDE = 300;
  let GRID, L, mazeCanvas, attnInfo, routeSvg, routeInfo;

  const mark = (ok) => (ok ? "\u2713" : "\u2717");
  const colour = (code) => [WALL, FLOOR, START, GOAL][code];

  // The cells the route of tick t passes (the start first), as the Python side walked it (s.drawn[t] moves).
  function cells(s, t) {
    const out = [[s.start[0], s.start[1]]];
    for (let i = 0; i < s.drawn[t]; i++) {
      const m = s.mv[t * L + i], [y, x] = out[out.length - 1];
      out.push([y + STEP[m][0], x + STEP[m][1]]);
    }
    return out;
  }
  const letters = (s, t) => {
    let out = "";
    for (let i = 0; i < s.drawn[t]; i++) out += NAMES[s.mv[t * L + i]];
    return out;
  };

  function drawMaze(canvas, s) {
    const [H, W] = s.size, ctx = canvas.getContext("2d"), img = ctx.createImageData(W, H);
    for (let i = 0; i < H * W; i++) {
      const c = colour(s.codes[i]), v = [1, 3, 5].map((k) => parseInt(c.slice(k, k + 2), 16));
      img.data[4 * i] = v[0]; img.data[4 * i + 1] = v[1]; img.data[4 * i + 2] = v[2]; img.data[4 * i + 3] = 255;
    }
    const small = document.createElement("canvas");
    small.width = W; small.height = H;
    small.getContext("2d").putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(small, 0, 0, canvas.width, canvas.height);
  }

  // The attention of tick t over the token grid, stretched over the maze (as the image task draws it).
  function drawAttention(s, t) {
    drawMaze(mazeCanvas, s);
    const ctx = mazeCanvas.getContext("2d"), [gh, gw] = GRID, n = gh * gw;
    const cw = mazeCanvas.width / gw, ch = mazeCanvas.height / gh;
    for (let k = 0; k < n; k++) {
      const a = s.attn[t * n + k] / 255;
      ctx.fillStyle = `rgba(230, 80, 20, ${(0.6 * a).toFixed(3)})`;
      ctx.fillRect((k % gw) * cw, Math.floor(k / gw) * ch, cw, ch);
    }
    const top = s.attention_max[t];
    ctx.strokeStyle = "#1f5fbf"; ctx.lineWidth = 3;
    ctx.strokeRect((top % gw) * cw + 1.5, Math.floor(top / gw) * ch + 1.5, cw - 3, ch - 3);
  }

  // The maze as SVG (walls, start, goal), the true route faint, and the route of tick t: blue while it follows
  // the true route, orange from its first wrong move; a move into a wall ends in a cross.
  function drawRoute(s, t) {
    const [H, W] = s.size, c = SIDE / Math.max(H, W);
    routeSvg.textContent = "";
    routeSvg.setAttribute("width", W * c); routeSvg.setAttribute("height", H * c);
    routeSvg.setAttribute("viewBox", `0 0 ${W * c} ${H * c}`);
    el("rect", { x: 0, y: 0, width: W * c, height: H * c, fill: FLOOR }, routeSvg);
    for (let i = 0; i < H * W; i++) {
      if (s.codes[i] === 1) continue;
      el("rect", { class: s.codes[i] === 0 ? "wall" : "end", x: (i % W) * c, y: Math.floor(i / W) * c,
                   width: c + 0.3, height: c + 0.3, fill: colour(s.codes[i]) }, routeSvg);
    }
    const mid = (p) => [(p[1] + 0.5) * c, (p[0] + 0.5) * c], w = Math.max(1.5, Math.min(8, c / 3));
    const truth = [[s.start[0], s.start[1]]];
    for (const m of s.true) { const [y, x] = truth[truth.length - 1]; truth.push([y + STEP[m][0], x + STEP[m][1]]); }
    el("polyline", { points: truth.map((p) => mid(p).join(",")).join(" "), fill: "none", stroke: FAINT,
                     "stroke-width": w, "stroke-linecap": "round", "stroke-linejoin": "round" }, routeSvg);
    const path = cells(s, t);
    for (let i = 0; i + 1 < path.length; i++) {
      const [x1, y1] = mid(path[i]), [x2, y2] = mid(path[i + 1]), wrong = i >= s.prefix[t];
      el("line", { class: "route-move", "data-step": i, "data-wrong": wrong ? 1 : 0, x1, y1, x2, y2,
                   stroke: wrong ? WRONG : ROUTE, "stroke-width": w, "stroke-linecap": "round" }, routeSvg);
    }
    if (s.wall[t]) {
      const [x, y] = mid(path[path.length - 1]), r = c * 0.35;
      for (const d of [1, -1]) {
        el("line", { class: "wall-mark", x1: x - r, y1: y - d * r, x2: x + r, y2: y + d * r, stroke: WRONG,
                     "stroke-width": Math.max(2, w * 0.8) }, routeSvg);
      }
    }
  }

  function routeText(s, t) {
    const n = s.drawn[t], right = Math.min(s.prefix[t], s.true.length), total = s.true.length;
    if (s.solved[t]) return `solved: ${n} moves ${letters(s, t)} ${mark(true)}`;
    const wall = s.wall[t] ? ", the last into a wall" : "";
    return `${n} moves ${letters(s, t) || "(none)"}: ${right} of ${total} right${wall} ${mark(false)}`;
  }

  return {
    init(data) {
      GRID = data.token_grid; L = data.route_length;
      for (const s of data.samples) { s.codes = decode(s.maze); s.mv = decode(s.moves); s.attn = decode(s.attention); }
      const left = panel("Maze and attention", "shade: the attention of this tick over the backbone's grid, " +
                         "stretched over the maze; boxed: the most attended cell");
      mazeCanvas = document.createElement("canvas");
      mazeCanvas.id = "maze"; mazeCanvas.width = SIDE; mazeCanvas.height = SIDE;
      Object.assign(mazeCanvas.style, { width: `${SIDE}px`, height: `${SIDE}px`, imageRendering: "pixelated",
                                        display: "block" });
      left.body.append(mazeCanvas);
      attnInfo = left.note; attnInfo.id = "maze-attn";
      const right = panel("Route at this tick", "walked from the start (red) up to the first wait: blue while on " +
                          "the true route (faint), orange from the first wrong move; a cross: into a wall");
      routeSvg = el("svg", { id: "maze-route", width: SIDE, height: SIDE }, right.body);
      routeInfo = document.createElement("div");
      routeInfo.className = "note"; routeInfo.id = "maze-route-info";
      right.body.append(routeInfo);
    },
    thumbnail(s) {
      const c = document.createElement("canvas");
      c.width = s.size[1]; c.height = s.size[0];
      drawMaze(c, s);
      return c;
    },
    summary(s) {
      const t = s.most_certain_tick;
      return span(s.right ? "" : "wrong", s.right ? `solved ${mark(true)}`
        : `not solved, ${Math.min(s.prefix[t], s.true.length)}/${s.true.length} ${mark(false)}`);
    },
    heading(s, t) {
      const [H, W] = s.size;
      return [`${H}\u00d7${W} maze, route of ${s.true.length} \u00b7 tick ${t + 1}: `,
              span(s.solved[t] ? "ok" : "bad", s.solved[t] ? `solved ${mark(true)}`
                : `${Math.min(s.prefix[t], s.true.length)} of ${s.true.length} moves right ${mark(false)}`)];
    },
    answer(s, t) { return routeText(s, t); },
    draw(s, t) {
      drawAttention(s, t);
      const top = s.attention_max[t], [gh, gw] = GRID;
      attnInfo.dataset.cell = top;
      attnInfo.textContent = `most attended: token (${Math.floor(top / gw)}, ${top % gw}) of the ${gh}\u00d7${gw} grid; boxed`;
      drawRoute(s, t);
      routeInfo.dataset.drawn = s.drawn[t]; routeInfo.dataset.prefix = s.prefix[t];
      routeInfo.dataset.solved = s.solved[t] ? 1 : 0;
      routeInfo.textContent = routeText(s, t);
    },
  };
})();
