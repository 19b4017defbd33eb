"""measure_geometry on an FSDP2-sharded model (2 CPU gloo ranks) equals the unsharded result.

``source="training"`` on FSDP2-sharded ranks: tests/test_training_source.py,
``test_two_gloo_ranks_equal_one_process[fsdp]``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from geomtrace.measure import MeasureConfig, measure_geometry
from geomtrace.probes import load_probes
from geomtrace.tiny import build_tiny_model
from timeouts import SUBPROCESS_TIMEOUT

pytest.importorskip("torch.distributed.fsdp", reason="needs torch FSDP")
WORKER = Path(__file__).parent / "workers" / "fsdp_measure.py"


@pytest.mark.slow
def test_fsdp2_sharded_model_matches_single_process(tmp_path, tokenizer, free_port):
    from torch.distributed import fsdp

    if not hasattr(fsdp, "fully_shard"):
        pytest.skip("this torch has no FSDP2 fully_shard")
    out = tmp_path / "fsdp.json"
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out), str(free_port)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = build_tiny_model("gpt_neox", tokenizer=tokenizer, hidden_size=64)
    single = measure_geometry(model, load_probes(tokenizer, num_sequences=33), MeasureConfig(batch_size=8)).last
    for rank in (0, 1):
        got = json.loads(Path(f"{out}.rank{rank}").read_text())
        assert got["n_samples"] == 33
        assert got["rankme"] == pytest.approx(single.rankme, rel=1e-6)
        # extra_metrics: synchronised by their own compute(); one that failed on rank 1 only
        # is NaN on both ranks (skipped by all, no rank left waiting in its sync).
        assert got["pr"] == pytest.approx(single.eigenvalues.sum() ** 2 / (single.eigenvalues**2).sum(), rel=1e-6)
        assert got["broken_is_nan"]
