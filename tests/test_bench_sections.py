"""Results files shared by several benchmark scripts: each rewrites only its own section."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH_UTILS = Path(__file__).parents[1] / "benchmarks" / "bench_utils.py"


def _splice():
    spec = importlib.util.spec_from_file_location("bench_utils", BENCH_UTILS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.splice_section


def test_sections_are_replaced_in_place_and_others_kept(tmp_path):
    splice = _splice()
    out = tmp_path / "results.md"
    splice(out, "a", "first A")  # a new file
    out.write_text("# Title\n\n" + out.read_text() + "\nhand-written note\n")
    splice(out, "b", "first B")  # appended after what is there
    splice(out, "a", "second A\nwith two lines\n")  # replaced where it stands
    text = out.read_text()
    assert text.startswith("# Title\n\n<!-- a:start -->\nsecond A\nwith two lines\n<!-- a:end -->")
    assert "first A" not in text and text.count("<!-- a:start -->") == 1
    assert text.index("hand-written note") < text.index("<!-- b:start -->\nfirst B\n<!-- b:end -->")
