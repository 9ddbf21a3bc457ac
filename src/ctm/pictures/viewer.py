"""The interactive tick viewer: one self-contained HTML file to step through a CTM's thought, for any task.

The page keeps what every task has — the sample picker, the tick slider and play, the certainty curve with
the halting threshold, the neuron traces — and hands the task's own panels (its input, attention, answers)
to a renderer its data names: the data's "kind" (a task name) picks `CTM.renderers[kind]`, registered by the
task's script (`Task.viewer_script`, inlined after assets/viewer.js; the contract is at the top of that file).

`track` (`ctm.pictures.tracking`) runs the model with tracking and builds the part of the data every task
shares; a task adds its own (`Task.viewer_data`). `viewer_data` is the image task's builder, for images and
their targets. `viewer_html` inlines the data with the page's script and styles (assets/) and the task's
renderer: no network, no external libraries. `serve` hands the file to a browser on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._io import atomic_write
from .tracking import DEFAULT_NEURONS, DEFAULT_THRESHOLD, Tracked, track

if TYPE_CHECKING:
    import torch

    from ..nn.model import ContinuousThoughtMachine

__all__ = ["DEFAULT_NEURONS", "DEFAULT_THRESHOLD", "Tracked", "serve", "task_script", "track", "viewer_data",
           "viewer_html", "write_viewer"]

ASSETS = Path(__file__).resolve().parent / "assets"


def viewer_data(model: ContinuousThoughtMachine, images: torch.Tensor, targets: Sequence[int], *args: Any,
                **kwargs: Any) -> dict[str, Any]:
    """What the viewer page shows for images (B, C, H, W) in [0, 1] with their targets: the image task's page,
    `ctm.tasks.image.viewer.image_viewer_data` (see it for the options); other tasks build theirs with `track`."""
    from ..tasks.image.viewer import image_viewer_data

    return image_viewer_data(model, images, targets, *args, **kwargs)


def task_script(kind: str) -> str:
    """The renderer script of the registered task named `kind`, built with its default options ("" when no
    task has that name or it cannot be built without options: the page then draws what every task has)."""
    from ..tasks import TASKS

    cls = TASKS.get(kind)
    if cls is None:
        return ""
    try:
        return cls().viewer_script()
    except (TypeError, ValueError):
        return ""


# Characters that never appear raw in the inlined JSON: "<" and ">" (no "</script>" or "<!--" can end or
# confuse the script block), "&", and the line separators that older JavaScript parsers treat as line ends.
_JSON_ESCAPES = {c: f"\\u{ord(c):04x}" for c in "<>&\u2028\u2029"}
_SLOTS = re.compile(r"\{\{TITLE\}\}|/\*\{\{DATA\}\}\*/|/\*\{\{SCRIPT\}\}\*/")


def _inline_json(data: dict[str, Any]) -> str:
    """`data` as JSON that is only text inside a <script> block, whatever its strings hold."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.translate(str.maketrans(_JSON_ESCAPES))


def viewer_html(data: dict[str, Any], script: str | None = None) -> str:
    """The viewer page with `data` (from `viewer_data`, `track` or `Task.viewer_data`), its script and styles
    inline, and the renderer of its "kind": `script` (a task's `viewer_script()`), by default that of the
    registered task of that name.

    Every string of `data` (title, source, class names) reaches the page as text: the JSON block escapes
    "<", ">" and "&", the title is escaped for <title>, and the scripts only ever set them as text.
    """
    page = (ASSETS / "viewer.html").read_text(encoding="utf-8")
    if script is None:
        from ..tasks import DEFAULT_TASK

        script = task_script(str(data.get("kind", DEFAULT_TASK)))  # pages of format 1 were the default task's
    code = "\n".join(((ASSETS / "viewer.js").read_text(encoding="utf-8"), script, "CTM.start();\n"))
    slots = {
        "{{TITLE}}": str(data.get("title", "CTM")).replace("&", "&amp;").replace("<", "&lt;"),
        "/*{{DATA}}*/": _inline_json(data),
        "/*{{SCRIPT}}*/": code.replace("</", "<\\/"),
    }
    # One pass over the template: a value that looks like a slot (a class name "/*{{SCRIPT}}*/") stays text.
    return _SLOTS.sub(lambda m: slots[m.group(0)], page)


def write_viewer(data: dict[str, Any], path: str | os.PathLike[str], script: str | None = None) -> Path:
    """Write the viewer page for `data` (with renderer `script`, as `viewer_html`) to `path` (atomically);
    returns the path."""
    html = viewer_html(data, script)
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
