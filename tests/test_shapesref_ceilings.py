"""benchmarks/shapesref_ceilings.py: the blind readers' ceilings, read from a written dataset,
against the same numbers computed on the scenes the dataset was generated from."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections import defaultdict
from pathlib import Path

import pytest

from refseg.data.shapes.writer import generate_image, split_of, write_shapesref

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "shapesref_ceilings.py"


def _ceilings(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # the script imports bench_utils
    spec = importlib.util.spec_from_file_location("shapesref_ceilings", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return lambda folder, split: module.ceilings(*module.read_dataset(folder), split)


def test_ceilings_match_the_generated_scenes(tmp_path, monkeypatch):
    write_shapesref(tmp_path, seed=4, images=40)
    table = _ceilings(monkeypatch)(tmp_path / "shapesref", "test")
    for reader, with_size in (("colour + shape", False), ("colour + shape + size class", True)):
        expected = defaultdict(list)
        for index in range(40):
            if split_of(index) != "test":
                continue
            scene, expressions = generate_image(4, index)
            for per_object in expressions:
                for expression in per_object:
                    wanted = expression.program.filter
                    if not with_size:
                        wanted = dataclasses.replace(wanted, size=None)
                    chance = 1.0 / len(wanted.select(scene))
                    expected[expression.kind].append(chance)
                    expected["all"].append(chance)
        assert set(table[reader]) == set(expected)
        for kind, values in expected.items():
            share, count = table[reader][kind]
            assert count == len(values)
            assert share == pytest.approx(100.0 * sum(values) / len(values))
    # attribute expressions are unambiguous once size is read; ShapesRef generates them so
    assert table["colour + shape + size class"]["attribute"][0] == 100.0
    assert table["colour + shape"]["all"][0] < table["colour + shape + size class"]["all"][0]
