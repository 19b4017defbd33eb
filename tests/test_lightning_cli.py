"""The LightningCLI config snippets in callbacks/ add GeometryMonitor to a run."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("jsonargparse", reason="LightningCLI needs jsonargparse (installed by the dev extra)")
from lightning.pytorch.cli import LightningCLI  # noqa: E402

from geomtrace.callbacks import GeometryMonitor  # noqa: E402
from lightning_helpers import TinyLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["geometry.yaml", "geometry_all_layers.yaml", "geometry_paper.yaml"])
def test_config_snippets_parse_into_a_geometry_monitor(name):
    cli = LightningCLI(TinyLM, run=False, args=["--config", str(ROOT / "callbacks" / name), "--trainer.logger=false"])
    monitors = [cb for cb in cli.trainer.callbacks if isinstance(cb, GeometryMonitor)]
    assert len(monitors) == 1
    assert monitors[0].tracker.every_n_steps > 0
    # The nested groups reach the option objects (the shape of a run's recorded provenance).
    if name == "geometry_paper.yaml":
        assert monitors[0].tracker.config.max_components == 2048
        assert monitors[0].tracker.probe_options.min_tokens == 11


def test_cli_fit_with_geometry_config(tmp_path):
    cli = LightningCLI(
        TinyLM,
        args=[
            "fit",
            "--config",
            str(ROOT / "callbacks" / "geometry.yaml"),
            "--trainer.callbacks.init_args.schedule.every_n_steps=2",
            "--trainer.callbacks.init_args.probes.num_sequences=32",
            "--trainer.max_steps=2",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_checkpointing=false",
            f"--trainer.default_root_dir={tmp_path}",
        ],
    )
    monitor = next(cb for cb in cli.trainer.callbacks if isinstance(cb, GeometryMonitor))
    assert [r["step"] for r in monitor.history] == [0, 2]
    assert monitor.history[0]["geometry/n_samples"] == 32


@pytest.mark.parametrize("name", ["geometry.yaml", "geometry_paper.yaml"])
def test_snippet_after_a_user_config_keeps_its_callbacks(tmp_path, name):
    user = tmp_path / "run.yaml"
    user.write_text("trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.LearningRateMonitor\n")
    args = ["--config", str(user), "--config", str(ROOT / "callbacks" / name), "--trainer.logger=false"]
    cli = LightningCLI(TinyLM, run=False, args=args)
    names = [type(cb).__name__ for cb in cli.trainer.callbacks]
    assert names.count("LearningRateMonitor") == 1 and names.count("GeometryMonitor") == 1
