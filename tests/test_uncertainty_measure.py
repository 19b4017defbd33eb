"""Error bars through the measuring path: MeasureConfig(uncertainty=) -> measure_geometry, the
tracker's history, replay records, `geomtrace plot` bands, the training source, 2 gloo ranks."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from geomtrace import Geometry
from geomtrace.features import extract_features, row_sequences
from geomtrace.measure import MeasureConfig, measure_geometry
from geomtrace.probes import ProbeSet
from geomtrace.tiny import build_tiny_model
from timeouts import SUBPROCESS_TIMEOUT

G = 5
FIT = (2, 20)
WORKER = Path(__file__).parent / "workers" / "uncertainty_tracker_ddp.py"


def random_probes(n: int = 40, seed: int = 0, vocab: int = 300) -> ProbeSet:
    """Sequences of 6..20 random tokens (lengths vary: the measuring path sorts by length)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(6, 21, (n,), generator=gen).tolist()
    return ProbeSet([torch.randint(3, vocab, (k,), generator=gen).tolist() for k in lengths], f"random n={n}", 0)


@pytest.fixture(scope="module")
def model():
    return build_tiny_model("gpt_neox", vocab_size=300, hidden_size=64)


def jackknife(config: MeasureConfig, **kwargs) -> MeasureConfig:
    return MeasureConfig(**{**config.to_dict(), "uncertainty": "jackknife", "uncertainty_groups": G, **kwargs})


def reference(model, probes: ProbeSet, config: MeasureConfig, by_position: bool = True) -> dict[str, float]:
    """The definition: a Geometry fed every probe's rows in probe order, each row's group the probe's
    position mod G (``by_position=False``: round-robin over the rows instead)."""
    metric = Geometry(uncertainty="jackknife", groups=G, fit_range=config.fit_range, eigenvalues=False)
    spec = config.feature_spec
    with torch.no_grad():
        for start in range(0, len(probes), 7):
            part = ProbeSet(probes.sequences[start : start + 7], probes.description, 0)
            batch = next(part.batches(7))
            (rows,) = extract_features(model, batch["input_ids"], batch["attention_mask"], spec).values()
            index = start + row_sequences(batch["attention_mask"], spec.tokens, spec.skip_first_token)
            metric.update(rows, sample_index=index if by_position else None)
    out = metric.compute()
    return {key: float(value) for key, value in out.items()}


@pytest.mark.parametrize("tokens", ["last", "all"])
def test_standard_errors_group_by_probe_position_whatever_the_batching(model, tokens):
    probes = random_probes()
    plain = MeasureConfig(tokens=tokens, fit_range=FIT, batch_size=6)
    config = jackknife(plain)
    expected = reference(model, probes, config)
    for batch_size in (6, 16):
        speed = {"batch_size": batch_size, "rows_per_update": 50}
        values = measure_geometry(model, probes, MeasureConfig(**{**plain.to_dict(), **speed})).last
        last = measure_geometry(model, probes, jackknife(plain, **speed)).last
        # The values are those of the plain measurement; the errors those of the definition (to the
        # features' fp32 round-off between batch shapes, which the small error amplifies).
        assert last.rankme == pytest.approx(values.rankme, rel=1e-9)
        assert last.alpha == pytest.approx(values.alpha, rel=1e-9)
        assert last.rankme_se == pytest.approx(expected["rankme_se"], rel=1e-4)
        assert last.alpha_se == pytest.approx(expected["alpha_se"], rel=1e-4)
        assert 0 < last.rankme_se < last.rankme and last.alpha_se > 0
    if tokens == "all":
        # Rows of one sequence are correlated: grouping rows round-robin gives another (too small) error.
        rows_apart = reference(model, probes, config, by_position=False)
        assert rows_apart["rankme_se"] != pytest.approx(expected["rankme_se"], rel=1e-3)


def test_scalars_and_records_carry_the_errors_only_when_measured(model):
    from geomtrace.replay.records import build_records
    from geomtrace.replay.sources import Checkpoint

    probes = random_probes()
    config = MeasureConfig(layers=(1, 2), fit_range=FIT)
    plain = measure_geometry(model, probes, config)
    errors = measure_geometry(model, probes, jackknife(config))
    assert plain.last.rankme_se is None and plain.last.alpha_se is None
    assert not any(key.endswith("_se") for key in plain.scalars())
    scalars = errors.scalars()
    assert {"geometry/rankme_se", "geometry/alpha_se", "geometry/layer1/rankme_se", "geometry/layer1/alpha_se"} <= set(
        scalars
    )
    assert scalars["geometry/rankme_se"] == errors.last.rankme_se
    ckpt = Checkpoint(step=1, revision="step1", path=None, model="m", tokens=None, stage=None, kind="hub")
    with_se = {r["layer"]: r for r in build_records(ckpt, errors)}
    assert with_se[2]["rankme_se"] == errors.last.rankme_se and with_se[1]["alpha_se"] == errors.layers[1].alpha_se
    assert not any("rankme_se" in r for r in build_records(ckpt, plain))


def test_the_option_is_checked_and_changes_no_identity():
    from geomtrace._provenance import provenance_differences

    with pytest.raises(ValueError, match="uncertainty_groups=10 only applies with uncertainty='jackknife'"):
        MeasureConfig(uncertainty_groups=10).validate()
    with pytest.raises(ValueError, match="uncertainty"):
        MeasureConfig(uncertainty="bootstrap").validate()
    with pytest.raises(ValueError, match="uncertainty_groups"):
        MeasureConfig(uncertainty="jackknife", uncertainty_groups=1).validate()
    # Error bars leave the values as they are: a run may switch them on without becoming incomparable.
    old = {"measure_config": MeasureConfig().to_dict()}
    new = {"measure_config": MeasureConfig(uncertainty="jackknife").to_dict()}
    assert provenance_differences(old, new) == {}


def test_the_tracker_history_and_the_plot_show_them(model, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from geomtrace.plots import trajectory_figure
    from geomtrace.tracking import GeometryTracker

    probes = random_probes()
    tracker = GeometryTracker(probes=probes, measure=jackknife(MeasureConfig(fit_range=FIT)), every_n_steps=1)
    for step in (0, 1, 2):
        tracker.measure(model, step)
    rows = tracker.history
    assert all(math.isfinite(r["geometry/rankme_se"]) and r["geometry/alpha_se"] > 0 for r in rows)
    assert f"{rows[-1]['geometry/rankme']:.1f} +- {rows[-1]['geometry/rankme_se']:.2f} (step 2)" in tracker.summary()
    fig = trajectory_figure({"run": rows})
    ax_r, ax_a = fig.axes[:2]
    assert len(ax_r.collections) == 1 and len(ax_a.collections) == 1  # one band per panel
    band = ax_r.collections[0].get_paths()[0].vertices[:, 1]
    half = 1.96 * rows[0]["geometry/rankme_se"]
    assert band.max() == pytest.approx(rows[0]["geometry/rankme"] + half, rel=1e-6)
    plain = trajectory_figure({"run": [{k: v for k, v in r.items() if not k.endswith("_se")} for r in rows]})
    assert not plain.axes[0].collections


def test_replay_records_them_and_continues_an_output_without(tmp_path, capsys):
    from fakehub import make_fake_hub_model
    from geomtrace.cli import main
    from geomtrace.replay import ResultsStore

    repo = "EleutherAI/pythia-uncertainty-fake"
    make_fake_hub_model(os.environ["HF_HOME"], repo, ("step1", "step2"))
    common = ["replay", "--model", repo, "--num-sequences", "24", "--max-tokens", "32", "--no-progress"]
    common += ["--fit-range", "2:16", "--no-tensorboard", "--output", str(tmp_path)]
    assert main([*common, "--revisions", "step1", "--quiet"]) == 0
    argv = [*common, "--revisions", "step1,step2", "--measure.uncertainty", "jackknife"]
    assert main([*argv, "--measure.uncertainty-groups", "4"]) == 0
    records = {r["key"]: r for r in ResultsStore(tmp_path).records()}
    assert f"RankMe {records['step2']['rankme']:.2f} +- {records['step2']['rankme_se']:.2f}" in capsys.readouterr().out
    records = {r["key"]: r for r in ResultsStore(tmp_path).records()}
    assert set(records) == {"step1", "step2"}  # one output: error bars change no value
    assert "rankme_se" not in records["step1"]
    assert records["step2"]["rankme_se"] > 0 and records["step2"]["alpha_se"] > 0


def test_training_source_groups_by_sequence(model):
    from geomtrace.training_features import TrainingFeatures

    config = MeasureConfig(
        source="training", tokens="all", fit_range=FIT, uncertainty="jackknife", uncertainty_groups=G
    )
    features = TrainingFeatures(config)
    features.attach(model)
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randint(3, 300, (8, 12), generator=gen) for _ in range(3)]
    model.train()
    for ids in batches:
        model(input_ids=ids, labels=ids).loss.backward()
    model.zero_grad(set_to_none=True)
    result = features.measure_window((1, 3))
    features.detach()
    assert result is not None
    metric = Geometry(uncertainty="jackknife", groups=G, fit_range=FIT, eigenvalues=False)
    model.eval()  # tiny model: no dropout, the training forward's rows are the eval rows
    with torch.no_grad():
        for b, ids in enumerate(batches):
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
            metric.update(
                hidden.reshape(-1, hidden.shape[-1]), sample_index=(b * 8 + torch.arange(8)).repeat_interleave(12)
            )
    expected = metric.compute()
    assert result.last.rankme_se == pytest.approx(float(expected["rankme_se"]), rel=1e-5)


def test_two_gloo_ranks_equal_one_process_through_the_tracker(model, tmp_path, free_port):
    from uncertainty_tracker_ddp import CONFIG, probe_set

    from geomtrace.tracking import GeometryTracker

    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out), str(free_port)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tracker = GeometryTracker(probes=probe_set(), measure=MeasureConfig(**CONFIG))
    one = tracker.measure(build_tiny_model("gpt_neox", vocab_size=300, hidden_size=64), 0).scalars
    for rank in (0, 1):
        got = json.loads(Path(f"{out}.rank{rank}").read_text())
        for key in ("geometry/rankme", "geometry/alpha", "geometry/rankme_se", "geometry/alpha_se"):
            assert got[key] == pytest.approx(one[key], rel=1e-6), key


@pytest.mark.parametrize(
    ("tokens", "skip_first_token"), [("last", False), ("mean", False), ("mean", True), ("all", False), ("all", True)]
)
def test_row_sequences_names_the_sequence_of_every_selected_row(tokens, skip_first_token):
    from geomtrace.features import select_tokens

    # Each sequence's states are its own index: a row's value says which sequence it came from.
    lengths = [3, 1, 0, 5]  # a one-token sequence keeps no row when its first token is skipped; 0: none
    mask = torch.zeros(4, 6, dtype=torch.long)
    for b, n in enumerate(lengths):
        if n:
            mask[b, 6 - n :] = 1  # left padding
    hidden = torch.arange(4, dtype=torch.float32).view(4, 1, 1).expand(4, 6, 2).clone()
    rows = select_tokens(hidden, mask, tokens, skip_first_token)
    owners = row_sequences(mask, tokens, skip_first_token)
    assert owners.dtype == torch.int64 and owners.shape == (rows.shape[0],)
    assert torch.equal(rows[:, 0].long(), owners)
    kept = {b for b, n in enumerate(lengths) if n > (1 if skip_first_token else 0)}
    assert set(owners.tolist()) == kept


def test_the_live_phase_detector_gets_the_errors_and_the_spectrum(model, monkeypatch):
    """The tracker hands the history's standard errors (and whether the values are centred) to the
    detector, so a live phase change is named only beyond the noise."""
    import geomtrace.phases as phases
    from geomtrace.tracking import GeometryTracker

    seen: list[dict] = []
    real = phases.current_phase

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(phases, "current_phase", spy)
    tracker = GeometryTracker(probes=random_probes(), measure=jackknife(MeasureConfig(fit_range=FIT)), every_n_steps=1)
    for step in (0, 1, 2):
        tracker.measure(model, step)
    assert seen, "the tracker never asked the detector"
    last = seen[-1]
    assert last["rankme_se"] == [r["geometry/rankme_se"] for r in tracker.history]
    assert last["alpha_se"] == [r["geometry/alpha_se"] for r in tracker.history]
    assert last["spectrum"] == "covariance"
