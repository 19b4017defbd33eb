"""Metrics synchronised across 2 gloo processes equal the single-process result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchmetrics import MetricCollection

from geomtrace import AlphaReQ, EigenSpectrum, Geometry, RankMe
from timeouts import SUBPROCESS_TIMEOUT

WORKER = Path(__file__).parent / "workers" / "metrics_ddp.py"


def single_process_reference() -> dict:
    from metrics_ddp import extreme_features, features  # tests/workers/ is on sys.path (pyproject's pythonpath)

    metrics = MetricCollection({"rankme": RankMe(), "alpha": AlphaReQ(), "spectrum": EigenSpectrum()})
    metrics.update(features())
    out = metrics.compute()
    geometry = Geometry(fit_range=(2, 20))
    geometry.update(extreme_features())
    out["extreme"] = geometry.compute()
    out["covariance_diag"] = torch.cov(features().double().T).diagonal()
    return out


@pytest.fixture(scope="module")
def gloo_results(tmp_path_factory, pick_free_port) -> dict[str, dict]:
    """Each case's values on both ranks, from one 2-rank worker run (one start-up for all cases):
    700 / 900 rows on rank 0 of 900, and 700 with the blocked update forced (blocks of 48)."""
    out = tmp_path_factory.mktemp("gloo") / "result.json"
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out), str(pick_free_port()), "700,900,700:48"],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {f"rank{rank}": json.loads(Path(f"{out}.rank{rank}").read_text()) for rank in (0, 1)}


@pytest.mark.parametrize("split", [700, 900], ids=["uneven", "rank1-empty"])
def test_two_gloo_ranks_match_single_process(gloo_results, split):
    reference = single_process_reference()
    for rank in (0, 1):
        got = gloo_results[f"rank{rank}"][str(split)]
        assert got["rankme"] == pytest.approx(float(reference["rankme"]), rel=1e-6)
        assert got["alpha"] == pytest.approx(float(reference["alpha"]), rel=1e-6)
        assert got["r2"] == pytest.approx(float(reference["r2"]), rel=1e-6)
        torch.testing.assert_close(
            torch.tensor(got["top"], dtype=torch.float64), reference["spectrum"][:20], rtol=1e-6, atol=0
        )
        assert got["local_n"] == (split if rank == 0 else 900 - split)
        # ranks with different shifts (and one with no rows) agree on one before summing
        assert got["extreme_n"] == 900
        assert got["extreme_rankme"] == pytest.approx(float(reference["extreme"]["rankme"]), rel=1e-8)
        assert got["extreme_alpha"] == pytest.approx(float(reference["extreme"]["alpha"]), rel=1e-8)
        assert got["accumulator_n"] == 900
        torch.testing.assert_close(
            torch.tensor(got["accumulator_diag"], dtype=torch.float64),
            reference["covariance_diag"][:20],
            rtol=1e-6,
            atol=0,
        )


def test_ranks_agree_on_flags(tmp_path, free_port):
    # geomtrace._distributed.any_rank / all_ranks / any_rank_each: the one way a bool is agreed
    # on (measure_geometry, answer_logprobs, replay's load / bind / memorization set-up).
    out = tmp_path / "agree.json"
    worker = Path(__file__).parent / "workers" / "agree_ddp.py"
    proc = subprocess.run(
        [sys.executable, str(worker), str(out), str(free_port)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(Path(f"{out}.rank{rank}").read_text()) for rank in (0, 1)]
    for rank, got in enumerate(results):
        assert got["any_one"] is True and got["any_none"] is False
        assert got["all_one"] is False and got["all_every"] is True
        assert got["each"] == [False, True, True, False] and got["each_empty"] == []
        assert got["local"] is (rank == 1)  # world_size=1: this rank's own flag, no collective
        assert got["collectives"] == [1, 1, 1, 1, 4]


def test_two_gloo_ranks_with_the_blocked_update_match_single_process(gloo_results):
    """The update that fills only the upper block triangle (forced at d = 128, blocks of 48 rows,
    not a divisor of d) syncs to the single-process result of the full GEMM (issue 18.2)."""
    reference = single_process_reference()
    for rank in (0, 1):
        got = gloo_results[f"rank{rank}"]["700:48"]
        assert got["upper_only"]  # the blocked update did run
        for key in ("rankme", "alpha", "r2"):
            assert got[key] == pytest.approx(float(reference[key]), rel=1e-6)
        torch.testing.assert_close(
            torch.tensor(got["top"], dtype=torch.float64), reference["spectrum"][:20], rtol=1e-6, atol=0
        )
        torch.testing.assert_close(
            torch.tensor(got["accumulator_diag"], dtype=torch.float64),
            reference["covariance_diag"][:20],
            rtol=1e-6,
            atol=0,
        )
