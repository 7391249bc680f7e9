"""Sweep grids: parsing ``--sweep`` specs, the grid, validation against methods, tables."""

from __future__ import annotations

import pytest

from refseg.cli import main
from refseg.errors import InputError
from refseg.eval.metrics import MetricsResult
from refseg.eval.sweep import (
    check_points,
    grid_points,
    parse_sweep,
    point_label,
    sweep_markdown,
    sweep_rows,
)
from refseg.methods import GlobalLocalConfig


def test_specs_parse_to_typed_values_in_given_order():
    grid = parse_sweep(["alpha=0.5,0.85,0.95,1.0", "K=1, 2,3", "beta=0.5,0.5"])
    assert grid == {"alpha": [0.5, 0.85, 0.95, 1.0], "k": [1, 2, 3], "beta": [0.5]}
    assert all(isinstance(v, int) for v in grid["k"])


def test_grid_is_every_combination_last_key_fastest():
    points = grid_points({"alpha": [0.5, 1.0], "k": [1, 2, 3]})
    assert len(points) == 6
    assert points[:4] == [
        {"alpha": 0.5, "k": 1},
        {"alpha": 0.5, "k": 2},
        {"alpha": 0.5, "k": 3},
        {"alpha": 1.0, "k": 1},
    ]
    assert point_label(points[3]) == "alpha=1,k=1"


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["alpha"], "write key=v1,v2"),
        (["alpha="], "write key=v1,v2"),
        (["gamma=1"], "cannot sweep 'gamma'"),
        (["alpha=0.5,x"], "bad value 'x' for alpha"),
        (["k=1.5"], "expected an integer"),
        (["alpha=0.5", "alpha=1"], "given twice"),
    ],
)
def test_bad_specs_are_refused_with_a_hint(specs, message):
    with pytest.raises(InputError, match=message):
        parse_sweep(specs)


def test_points_are_checked_against_config_and_method():
    config = GlobalLocalConfig()
    check_points(grid_points({"alpha": [0.0, 1.0], "k": [1, 3]}), "global-local", config)
    with pytest.raises(InputError, match="alpha must be in"):
        check_points([{"alpha": 1.5}], "global-local", config)
    with pytest.raises(InputError, match="k must be"):
        check_points([{"k": 0}], "global-local", config)
    with pytest.raises(InputError, match="fixes alpha=1.0"):
        check_points([{"alpha": 0.5}], "global-only", config)
    check_points([{"beta": 0.3}], "global-only", config)  # beta is not pinned there


def test_rows_and_markdown_mark_the_best_point():
    results = [
        MetricsResult(20.0, 30.0, {0.5: 25.0}, n_expressions=8, n_missing=0),
        MetricsResult(22.0, 28.0, {0.5: 20.0}, n_expressions=8, n_missing=0),
    ]
    points = [{"alpha": 0.5}, {"alpha": 1.0}]
    rows = sweep_rows(points, results)
    assert rows[1]["alpha"] == 1.0 and rows[1]["oIoU"] == 22.0 and rows[0]["mIoU"] == 30.0
    text = sweep_markdown(rows, ["alpha"], "Sweep")
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0] == "| alpha | oIoU | mIoU | P@0.5 |"
    assert lines[1] == "| 0.5 | 20.00 | **30.00** | 25.00 |"
    assert lines[2] == "| 1 | **22.00** | 28.00 | 20.00 |"


def test_cli_refuses_a_bad_sweep_before_loading_anything(tmp_path, capsys):
    code = main(["eval", "--dataset", str(tmp_path), "--name", "none", "--split", "val",
                 "--sweep", "gamma=1,2"])
    assert code == 2
    assert "cannot sweep 'gamma'" in capsys.readouterr().err
