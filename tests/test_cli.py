"""The command line over a quiet library: flags generated from the config dataclasses, errors that name the
flags, the rules for what a resumed run may change, and a library that never imports the CLI."""

from __future__ import annotations

import subprocess
import sys


def test_the_library_does_not_import_the_command_line():
    # torch itself imports argparse, so the check is on ctm.cli
    code = ("import sys, ctm, ctm.bench, ctm.checkpoint, ctm.data, ctm.datasets, ctm.evaluate, ctm.idx, ctm.train; "
            "print(sorted(m for m in sys.modules if m.startswith('ctm.cli')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
