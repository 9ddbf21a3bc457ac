"""What the CLI prints of runs and data (class names from folder names, file names) never drives the terminal:
control characters come out as escapes."""

from __future__ import annotations

from helpers import TINY_FLAGS, make_shapes

from ctm._text import printable, printable_lines
from ctm.cli import main

# Folder names (so class names) a terminal would act on: a colour, a carriage return over the line, a fake
# line, a C1 control sequence introducer, a right-to-left override.
CLASSES = ("\x1b[31mred", "back\rover", "new\nline", "c1\x9b2J", "rtl\u202eevil")
RAW = ("\x1b", "\r", "\x9b", "\u202e")


def test_printable_escapes_controls_and_keeps_other_text():
    assert printable("a\x1b[31mb\tc\r\n\x00\x7f\x9b") == "a\\x1b[31mb\\tc\\r\\n\\x00\\x7f\\x9b"
    assert printable("\u2028\u202e\u2066") == "\\u2028\\u202e\\u2066"
    assert printable("\udcff.png") == "\\xff.png"  # a file name byte that was not UTF-8 (os.fsdecode)
    assert printable("été 猫 ∑ — x") == "été 猫 ∑ — x"
    assert printable_lines("one\x1b[2J\ntwo\r") == "one\\x1b[2J\ntwo\\r"


def run_cli(capsys, *args) -> tuple[int, str]:
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def test_class_and_file_names_with_control_characters_are_printed_escaped(tmp_path, capsys, recwarn):
    data = make_shapes(tmp_path / "shapes", n=8, colour=False, shapes=CLASSES)
    run = tmp_path / "run"
    rc, text = run_cli(capsys, "train", "--dataset", f"folder:{data}", "--out", run, "--steps", "2", "--batch-size",
                       "8", "--eval-every", "2", "--no-progress", "--threads", "1", *TINY_FLAGS)
    assert rc == 0, text
    outputs = {"train": text}
    assert "classes: " + ", ".join(printable(c) for c in sorted(CLASSES)) in text
    rc, outputs["eval"] = run_cli(capsys, "eval", run, "--threads", "1")
    assert rc == 0
    table = outputs["eval"][outputs["eval"].index("  class"):].splitlines()
    assert [row.split()[0] for row in table[1:]] == [printable(c) for c in sorted(CLASSES)]
    image = data / CLASSES[0] / "0001.jpg"
    rc, outputs["predict"] = run_cli(capsys, "predict", run, image, "--threads", "1")
    assert rc == 0 and outputs["predict"].startswith(printable(image) + ": ")
    rc, outputs["viz"] = run_cli(capsys, "viz", run, "--index", "0", "--threads", "1")
    assert rc == 0 and "label " in outputs["viz"]
    rc, outputs["missing file"] = run_cli(capsys, "predict", run, tmp_path / "gone\x1b[2J.png")
    assert rc == 2 and outputs["missing file"].count("\n") == 1 and "gone\\x1b[2J.png" in outputs["missing file"]
    for command, text in outputs.items():
        assert not [c for c in RAW if c in text], (command, text)
    # The GIFs' labels too: matplotlib warns of a missing glyph with the raw character on stderr.
    assert not [str(w.message) for w in recwarn if any(c in str(w.message) for c in RAW)]
