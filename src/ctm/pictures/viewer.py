"""The interactive tick viewer: one self-contained HTML file to step through a CTM's thought.

`viewer_data` runs the model with tracking on a few samples and keeps what the page draws (class
probabilities, certainty, attention on the token grid, a handful of neuron traces), rounded so 100 samples
stay a few hundred KB. `viewer_html` inlines that data with the page's script and styles (assets/): no
network, no external libraries. `serve` hands the file to a browser on 127.0.0.1.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write
from ..nn.model import ContinuousThoughtMachine

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_THRESHOLD = 0.9
DEFAULT_NEURONS = 8


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.uint8).tobytes()).decode("ascii")


@torch.inference_mode()
def _track(model: ContinuousThoughtMachine, images: torch.Tensor, batch_size: int) -> dict[str, np.ndarray]:
    """Per-sample tracking in eval mode: probabilities (B, T, C), certainty (B, T), attention (B, T, N) (mean
    over heads) and post-activations (B, T, D), as numpy; plus the token grid."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: dict[str, list[np.ndarray]] = {"probs": [], "certainty": [], "attention": [], "post": []}
    grid = (1, 1)
    try:
        for x in images.split(batch_size):
            out = model(x.to(device=device, dtype=torch.float32), track=True)
            tr = out.tracking
            grid = tr.token_grid
            parts["probs"].append(out.predictions.float().softmax(1).permute(0, 2, 1).cpu().numpy())
            parts["certainty"].append(out.certainties[:, 1].float().cpu().numpy())
            parts["attention"].append(tr.attention.float().mean(2).permute(1, 0, 2).cpu().numpy())
            parts["post"].append(tr.post_activations.float().permute(1, 0, 2).cpu().numpy())
    finally:
        model.train(was_training)
    tracked = {k: np.concatenate(v) for k, v in parts.items()}
    tracked["grid"] = np.asarray(grid)
    return tracked


def viewer_data(model: ContinuousThoughtMachine, images: torch.Tensor, targets: Sequence[int],
                indices: Sequence[int] | None = None, *, title: str = "CTM", source: str = "",
                class_names: Sequence[str] | None = None, n_neurons: int = DEFAULT_NEURONS,
                threshold: float = DEFAULT_THRESHOLD, batch_size: int = 50) -> dict[str, Any]:
    """What the viewer page shows for images (B, C, H, W) in [0, 1] with their targets.

    `indices` are the samples' numbers in their dataset (shown in the picker; default 0..B-1). The
    `n_neurons` neurons whose post-activations vary most over ticks are traced. Returns a JSON-ready dict.
    """
    images = torch.as_tensor(images)
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"images must be float (B, C, H, W) in [0, 1], got {images.dtype} {tuple(images.shape)}")
    B = images.shape[0]
    targets = [int(t) for t in targets]
    indices = list(range(B)) if indices is None else [int(i) for i in indices]
    if B == 0 or len(targets) != B or len(indices) != B:
        raise ValueError(f"need at least one image and one target and index per image, got {B} images, "
                         f"{len(targets)} targets, {len(indices)} indices")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a certainty in [0, 1], got {threshold}")
    tracked = _track(model, images, batch_size)
    # float64 before rounding: a rounded float32 prints as 0.09300000220537186 in JSON.
    probs, certainty, attention, post = (tracked[k].astype(np.float64)
                                         for k in ("probs", "certainty", "attention", "post"))
    _, T, C = probs.shape
    if class_names is None:
        class_names = [str(c) for c in range(C)]
    if len(class_names) != C:
        raise ValueError(f"{len(class_names)} class names for {C} classes")
    if any(not 0 <= t < C for t in targets):
        raise ValueError(f"targets must be class indices in [0, {C})")
    # The neurons that move most over ticks, the same for every sample so traces compare across samples.
    neurons = np.argsort(-post.var(axis=1).mean(axis=0), kind="stable")[:max(1, min(n_neurons, post.shape[2]))]
    neurons = np.sort(neurons)
    most_certain = certainty.argmax(axis=1)  # (B,) the tick `ctm eval` reads each answer at
    pixels = np.clip(images.detach().float().cpu().numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8)
    attn_max = attention.max(axis=2, keepdims=True)
    attn_u8 = np.clip(attention / np.where(attn_max > 0, attn_max, 1.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    traces = post[:, :, neurons]  # (B, T, K)
    samples = []
    for b in range(B):
        samples.append({
            "index": indices[b],
            "target": targets[b],
            "image": _b64(pixels[b]),
            "probs": np.round(probs[b] * 1000).astype(int).tolist(),  # (T, C) per mille
            "certainty": np.round(certainty[b], 4).tolist(),
            "attention": _b64(attn_u8[b]),  # (T, N) scaled so each tick's largest weight is 255
            "attention_max": attention[b].argmax(axis=1).tolist(),  # (T,) the exact most-attended token
            "attention_peak": np.round(attn_max[b, :, 0], 4).tolist(),
            "traces": np.round(traces[b], 3).tolist(),  # (T, K)
            "most_certain_tick": int(most_certain[b]),
            "prediction": int(probs[b, most_certain[b]].argmax()),
        })
    return {
        "format": 1,
        "title": title,
        "source": source,
        "ticks": int(T),
        "classes": list(map(str, class_names)),
        "input": {"kind": "image", "shape": list(map(int, images.shape[1:]))},
        "token_grid": [int(v) for v in tracked["grid"]],
        "neurons": neurons.tolist(),
        "threshold": float(threshold),
        "samples": samples,
    }


# Characters that never appear raw in the inlined JSON: "<" and ">" (no "</script>" or "<!--" can end or
# confuse the script block), "&", and the line separators that older JavaScript parsers treat as line ends.
_JSON_ESCAPES = {c: f"\\u{ord(c):04x}" for c in "<>&\u2028\u2029"}
_SLOTS = re.compile(r"\{\{TITLE\}\}|/\*\{\{DATA\}\}\*/|/\*\{\{SCRIPT\}\}\*/")


def _inline_json(data: dict[str, Any]) -> str:
    """`data` as JSON that is only text inside a <script> block, whatever its strings hold."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.translate(str.maketrans(_JSON_ESCAPES))


def viewer_html(data: dict[str, Any]) -> str:
    """The viewer page with `data` (from `viewer_data`), its script and styles inline.

    Every string of `data` (title, source, class names) reaches the page as text: the JSON block escapes
    "<", ">" and "&", the title is escaped for <title>, and the script only ever sets them as text.
    """
    page = (ASSETS / "viewer.html").read_text(encoding="utf-8")
    script = (ASSETS / "viewer.js").read_text(encoding="utf-8")
    slots = {
        "{{TITLE}}": str(data.get("title", "CTM")).replace("&", "&amp;").replace("<", "&lt;"),
        "/*{{DATA}}*/": _inline_json(data),
        "/*{{SCRIPT}}*/": script.replace("</", "<\\/"),
    }
    # One pass over the template: a value that looks like a slot (a class name "/*{{SCRIPT}}*/") stays text.
    return _SLOTS.sub(lambda m: slots[m.group(0)], page)


def write_viewer(data: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the viewer page for `data` to `path` (atomically); returns the path."""
    html = viewer_html(data)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))


def serve(path: str | os.PathLike[str], port: int = 0, host: str = "127.0.0.1") -> http.server.HTTPServer:
    """An HTTP server on host:port (0: any free port) that answers every GET with the page at `path`.

    The caller runs `serve_forever()` and `server_close()`; `server.server_address` has the port.
    """
    body = Path(path).read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            route = self.path.split("?")[0]
            if route == "/favicon.ico":  # browsers ask; "no content" keeps their consoles clean
                self.send_response(204)
                self.end_headers()
                return
            if route not in ("/", "/" + Path(path).name):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the library prints nothing
            pass

    return http.server.ThreadingHTTPServer((host, port), Handler)
