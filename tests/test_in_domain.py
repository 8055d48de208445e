"""benchmarks/in_domain.py's extrapolation: the log-linear fit of NER F1 against pretraining tokens, and where it
reaches the published F1 (issue 22, docs/results.md)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("in_domain", REPO / "benchmarks" / "in_domain.py")
in_domain = importlib.util.module_from_spec(spec)
spec.loader.exec_module(in_domain)


def cell(*f1s: float) -> dict:
    return {"seeds": [{"seed": 42 + i, "dev_f1": f} for i, f in enumerate(f1s)]}


def test_the_fit_recovers_a_line_in_log_tokens():
    intercept, slope, r2 = in_domain.fit_log_linear([(1e6, 0.40), (1e7, 0.45), (1e8, 0.50), (1e8, 0.50)])
    assert slope == pytest.approx(0.05) and intercept == pytest.approx(0.10) and r2 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two token counts"):
        in_domain.fit_log_linear([(1e6, 0.4), (1e6, 0.5)])


def test_extrapolation_skips_all_o_points_and_says_never_for_a_flat_trend():
    curve = [("cantemist", 0, 0, cell(0.30, 0.31)),        # the random start: no logarithm, never fitted
             ("cantemist", 300, 10**6, cell(0.0, 0.5)),    # one seed still on "all O": before the step
             ("cantemist", 600, 10**7, cell(0.44, 0.46)),
             ("cantemist", 1200, 10**8, cell(0.49, 0.51)),
             ("pharmaconer", 600, 10**7, cell(0.50)),
             ("pharmaconer", 1200, 2 * 10**7, cell(0.48))]
    fits = {(f["task"], f["points"].split(":")[0]): f for f in in_domain.extrapolate(curve)}
    whole = fits["cantemist", "past the step"]
    assert whole["points"] == "past the step: 2 points, 4 runs"
    assert whole["slope"] == pytest.approx(0.05)
    # 0.45 at 1e7, +0.05 per decade: 0.834 lies 7.68 decades further
    assert math.log10(whole["tokens_to_target"]) == pytest.approx(7 + (0.834 - 0.45) / 0.05)
    assert fits["pharmaconer", "past the step"]["tokens_to_target"] is None   # F1 fell: no tokens reach the target
