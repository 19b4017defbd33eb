"""Checkpoint sources: revision names, presets, filters, local discovery, shards, loading."""

from __future__ import annotations

import math
import os
import time
import types
from pathlib import Path

import pytest
import torch

from fakehub import build_tiny_model, make_fake_hub_model, tiny_config, tiny_tokenizer
from geomtrace.replay.sources import (
    PYTHIA_PAPER_SUBSET,
    PYTHIA_REVISIONS,
    Checkpoint,
    CheckpointLoadError,
    filter_revisions,
    hub_checkpoints,
    list_hub_revisions,
    load_checkpoint_model,
    local_checkpoints,
    parse_revision,
    read_revisions_file,
    resolve_dtype,
    shard_checkpoints,
)

REPO = "EleutherAI/pythia-fake"


def _steps(revs):
    return [parse_revision(r)[0] for r in revs]


# ------------------------------------------------------------------ revision names


@pytest.mark.parametrize(
    "name, expected",
    [
        ("step0", (0, None, None)),
        ("step143000", (143000, None, None)),
        ("step1000-tokens4B", (1000, 4_000_000_000, None)),
        ("step20000-tokens84B", (20000, 84_000_000_000, None)),
        ("step1000-tokens4194M", (1000, 4_194_000_000, None)),
        ("step1000-tokens2048MB", (1000, 2_048_000_000, None)),
        ("step5-tokens512K", (5, 512_000, None)),
        ("step10-tokens1.5B", (10, 1_500_000_000, None)),
        ("stage1-step1000-tokens5B", (1000, 5_000_000_000, "stage1")),
        ("stage2-ingredient3-step11931-tokens50B", (11931, 50_000_000_000, "stage2-ingredient3")),
        ("main", (None, None, None)),
        ("v1.0", (None, None, None)),
    ],
)
def test_parse_revision(name, expected):
    assert parse_revision(name) == expected


def test_pythia_preset():
    assert len(PYTHIA_REVISIONS) == 154
    assert len(set(PYTHIA_REVISIONS)) == 154
    assert PYTHIA_REVISIONS[:11] == ["step0"] + [f"step{2**i}" for i in range(10)]
    assert PYTHIA_REVISIONS[11] == "step1000"
    assert PYTHIA_REVISIONS[-1] == "step143000"
    assert _steps(PYTHIA_REVISIONS[11:]) == list(range(1000, 143001, 1000))
    assert _steps(PYTHIA_REVISIONS) == sorted(_steps(PYTHIA_REVISIONS))


def test_pythia_paper_subset_is_the_papers_grid():
    # The old constant's name now holds the paper's grid (tests/test_revision_presets.py has the rest).
    assert len(PYTHIA_PAPER_SUBSET) == 151
    assert set(PYTHIA_REVISIONS) - set(PYTHIA_PAPER_SUBSET) == {"step1", "step2", "step4"}


# ------------------------------------------------------------------ filters


def test_filter_step_range():
    got = filter_revisions(PYTHIA_REVISIONS, step_range="0:143000:10000")
    assert _steps(got) == list(range(0, 143001, 10000))
    assert _steps(filter_revisions(PYTHIA_REVISIONS, step_range="1000:5000")) == [1000, 2000, 3000, 4000, 5000]
    assert _steps(filter_revisions(PYTHIA_REVISIONS, step_range=":512")) == [0] + [2**i for i in range(10)]
    assert _steps(filter_revisions(PYTHIA_REVISIONS, step_range="140000:")) == [140000, 141000, 142000, 143000]
    assert _steps(filter_revisions(PYTHIA_REVISIONS, step_range="1:9:2")) == [1]
    for bad in ("10", "a:b", "0:10:0", "10:0", "1:2:3:4"):
        with pytest.raises(ValueError):
            filter_revisions(PYTHIA_REVISIONS, step_range=bad)


def test_filter_log_spaced():
    got = filter_revisions(PYTHIA_REVISIONS, log_spaced=12)
    assert len(got) == 12
    assert got[0] == "step0" and got[-1] == "step143000"
    steps = _steps(got)
    assert steps == sorted(steps)
    assert sum(s < 1000 for s in steps) >= 4  # log spacing reaches into the early steps
    # roughly even in log(1 + step)
    gaps = [math.log1p(b) - math.log1p(a) for a, b in zip(steps, steps[1:])]
    assert max(gaps) < 3 * (math.log1p(143000) / 11)
    assert filter_revisions(PYTHIA_REVISIONS[:5], log_spaced=10) == PYTHIA_REVISIONS[:5]
    with pytest.raises(ValueError):
        filter_revisions(PYTHIA_REVISIONS, log_spaced=1)


OLMO2 = [
    "stage2-ingredient1-step2000-tokens10B",
    "stage1-step2000-tokens9B",
    "main",
    "stage1-step0-tokens0B",
    "stage2-ingredient1-step1000-tokens5B",
    "stage1-step1000-tokens5B",
    "stage2-ingredient2-step1000-tokens5B",
]


def test_filter_stage_and_sort():
    got = filter_revisions(OLMO2)
    assert got[:3] == ["stage1-step0-tokens0B", "stage1-step1000-tokens5B", "stage1-step2000-tokens9B"]
    assert got[3:5] == ["stage2-ingredient1-step1000-tokens5B", "stage2-ingredient1-step2000-tokens10B"]
    assert got[-1] == "main"
    assert filter_revisions(OLMO2, stage="stage1") == got[:3]
    assert filter_revisions(OLMO2, stage="stage2") == got[3:6]
    assert filter_revisions(OLMO2, stage="stage2-ingredient2") == ["stage2-ingredient2-step1000-tokens5B"]
    assert "main" not in filter_revisions(OLMO2, step_range="0:")
    # stages are laid end to end for log spacing: first and last in training order are kept
    picked = filter_revisions(OLMO2, log_spaced=3)
    assert picked[0] == "stage1-step0-tokens0B" and picked[-1] == "stage2-ingredient2-step1000-tokens5B"
    assert len(picked) == 3


# ------------------------------------------------------------------ hub lists


def test_hub_checkpoints_lists_and_presets():
    cks = hub_checkpoints(REPO, "step0, step1000,step0,,stage1-step2000-tokens9B")
    assert [c.revision for c in cks] == ["step0", "step1000", "stage1-step2000-tokens9B"]
    assert all(c.kind == "hub" and c.model == REPO and c.path is None for c in cks)
    assert cks[2] == Checkpoint(2000, "stage1-step2000-tokens9B", None, REPO, 9_000_000_000, "stage1", "hub")
    assert [c.key for c in cks] == ["step0", "step1000", "stage1-step2000-tokens9B"]
    assert len(hub_checkpoints(REPO, "pythia")) == 154
    assert [c.revision for c in hub_checkpoints(REPO, "pythia-paper")] == PYTHIA_PAPER_SUBSET
    assert [c.step for c in hub_checkpoints(REPO, ["step8", "step16"])] == [8, 16]
    with pytest.raises(ValueError):
        hub_checkpoints(REPO, " , ")


def test_hub_all_uses_list_repo_refs(monkeypatch):
    import huggingface_hub

    refs = types.SimpleNamespace(
        branches=[types.SimpleNamespace(name=n) for n in ["main", "step1000", "step0", "step512"]]
    )
    monkeypatch.setattr(huggingface_hub, "list_repo_refs", lambda repo_id, **kw: refs)
    assert list_hub_revisions(REPO) == ["step0", "step512", "step1000", "main"]
    assert [c.revision for c in hub_checkpoints(REPO, "all")] == ["step0", "step512", "step1000"]


def test_list_hub_revisions_offline_is_clear():
    with pytest.raises(RuntimeError, match="--revisions-file"):
        list_hub_revisions("EleutherAI/pythia-70m")


def test_read_revisions_file(tmp_path):
    p = tmp_path / "revs.txt"
    p.write_text("# OLMo revisions\nstep1000-tokens4B\n\n  step2000-tokens8B   # a note\n#step3000\n")
    assert read_revisions_file(p) == ["step1000-tokens4B", "step2000-tokens8B"]
    with pytest.raises(FileNotFoundError):
        read_revisions_file(tmp_path / "missing.txt")


# ------------------------------------------------------------------ local discovery and shards


def _touch_config(d: Path) -> None:
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")


def test_local_checkpoints_discovery(tmp_path):
    _touch_config(tmp_path / "checkpoint-10")
    _touch_config(tmp_path / "checkpoint-2")
    (tmp_path / "checkpoint-5").mkdir()  # no config.json: not a checkpoint
    _touch_config(tmp_path / "step30")
    _touch_config(tmp_path / "other")  # not a checkpoint name
    ck = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    ck.mkdir(parents=True)
    (ck / "epoch=0-step=100.ckpt").write_bytes(b"x")
    (ck / "last.ckpt").write_bytes(b"x")
    (ck / "weird.ckpt").write_bytes(b"x")

    found = local_checkpoints(tmp_path)
    assert [c.step for c in found] == [2, 10, 30, 100, None]
    assert [c.kind for c in found] == ["hf_folder"] * 3 + ["lightning_ckpt"] * 2
    assert found[0].key == "checkpoint-2"
    assert found[3].key == "lightning_logs/version_0/checkpoints/epoch=0-step=100.ckpt"
    assert found[4].key.endswith("weird.ckpt")
    assert all(c.model == str(tmp_path) for c in found)
    assert len({c.key for c in found}) == len(found)

    single = local_checkpoints(ck / "epoch=0-step=100.ckpt")
    assert single[0].step == 100 and single[0].kind == "lightning_ckpt"
    one = local_checkpoints(tmp_path / "checkpoint-10")
    assert one[0].kind == "hf_folder" and one[0].step == 10 and one[0].key == "checkpoint-10"


def test_local_checkpoints_nothing_found(tmp_path):
    (tmp_path / "checkpoint-5").mkdir()
    with pytest.raises(FileNotFoundError, match=r"checkpoint-N"):
        local_checkpoints(tmp_path)
    with pytest.raises(FileNotFoundError):
        local_checkpoints(tmp_path / "nope")


def test_shards_cover_everything_once():
    cks = hub_checkpoints(REPO, "pythia")
    for n in (1, 2, 3, 7):
        parts = [shard_checkpoints(cks, f"{i}/{n}") for i in range(n)]
        keys = [c.key for p in parts for c in p]
        assert sorted(keys) == sorted(c.key for c in cks)
        assert len(keys) == len(set(keys))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert shard_checkpoints(cks, None) == cks
    for bad in ("3/3", "1/0", "a/b", "-1/2", "1"):
        with pytest.raises(ValueError):
            shard_checkpoints(cks, bad)


# ------------------------------------------------------------------ loading


@pytest.fixture(scope="module")
def fake_repo():
    shas = make_fake_hub_model(os.environ["HF_HOME"], REPO, revisions=("step0", "step1000"))
    return shas


def test_fake_hub_layout(fake_repo):
    repo_dir = Path(os.environ["HF_HOME"]) / "hub" / "models--EleutherAI--pythia-fake"
    for rev, sha in fake_repo.items():
        assert (repo_dir / "refs" / rev).read_text() == sha
        assert (repo_dir / "snapshots" / sha / "config.json").is_file()
        assert (repo_dir / "snapshots" / sha / "model.safetensors").is_file()


def test_load_hub_offline(fake_repo):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    cks = hub_checkpoints(REPO, "step0,step1000")
    m0, tok0 = load_checkpoint_model(cks[0])
    m1, tok1 = load_checkpoint_model(cks[1], dtype="bf16", device="auto")
    assert type(m0).__name__ == "GPTNeoXForCausalLM"
    assert not m0.training
    assert m1.dtype == torch.bfloat16 and m0.dtype == torch.float32
    w0 = m0.get_input_embeddings().weight
    w1 = m1.get_input_embeddings().weight.float()
    assert not torch.allclose(w0, w1)  # different revisions, different weights
    assert tok0 is not None and tok0.eos_token is not None and tok0.pad_token is not None
    ids = tok0("hello world", return_tensors="pt")
    with torch.no_grad():
        out = m0(**ids)
    assert out.logits.shape[-1] == m0.config.vocab_size


def test_load_missing_revision_fails_fast(fake_repo):
    t = time.perf_counter()
    with pytest.raises(CheckpointLoadError, match="step5"):
        load_checkpoint_model(hub_checkpoints(REPO, "step5")[0])
    assert time.perf_counter() - t < 10


def test_load_hf_folder(tmp_path):
    model = build_tiny_model("olmo2", hidden_size=64, seed=3)
    model.save_pretrained(tmp_path / "run" / "checkpoint-7")
    tiny_tokenizer().save_pretrained(tmp_path / "run")  # Trainer-style: tokenizer at the run root
    (ck,) = local_checkpoints(tmp_path / "run")
    assert ck.kind == "hf_folder" and ck.step == 7
    loaded, tok = load_checkpoint_model(ck, dtype="fp32")
    assert type(loaded).__name__ == "Olmo2ForCausalLM"
    sd, ref = loaded.state_dict(), model.state_dict()
    assert all(torch.equal(sd[k], ref[k]) for k in ref)
    assert tok is not None
    with pytest.raises(CheckpointLoadError):
        load_checkpoint_model(Checkpoint(None, None, str(tmp_path / "gone"), str(tmp_path), None, None, "hf_folder"))


# a tiny LightningModule wrapping an HF model, and the builder hook for it
def _make_lightning_module(hidden_size: int = 64):
    import lightning as L

    class TinyLM(L.LightningModule):
        def __init__(self, hidden_size: int = 64):
            super().__init__()
            self.save_hyperparameters()
            self.model = build_tiny_model("gpt_neox", hidden_size=hidden_size, seed=11)

        def forward(self, **kw):
            return self.model(**kw)

    return TinyLM(hidden_size=hidden_size)


def build_tiny_lm(hparams: dict):
    """The model_builder hook used in the tests (also reachable as 'test_replay_sources:build_tiny_lm')."""
    return _make_lightning_module(**hparams)


def test_load_lightning_ckpt(tmp_path):
    lm = _make_lightning_module(hidden_size=64)
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(0.01)  # so that a freshly built module differs from the saved one
    path = tmp_path / "checkpoints" / "epoch=0-step=7.ckpt"
    path.parent.mkdir()
    torch.save({"state_dict": lm.state_dict(), "hyper_parameters": dict(lm.hparams), "global_step": 7}, path)

    (ck,) = local_checkpoints(tmp_path)
    assert ck.kind == "lightning_ckpt" and ck.step == 7

    with pytest.raises(ValueError, match="--model-builder"):
        load_checkpoint_model(ck)

    model, tok = load_checkpoint_model(ck, model_builder=build_tiny_lm)
    assert type(model).__name__ == "GPTNeoXForCausalLM" and not model.training
    ref = lm.model.state_dict()
    assert all(torch.equal(model.state_dict()[k], ref[k]) for k in ref)
    assert tok is None

    # a builder returning the bare HF model: the 'model.' prefix is stripped
    bare, _ = load_checkpoint_model(
        ck, model_builder=lambda hp: build_tiny_model("gpt_neox", hidden_size=hp["hidden_size"]), dtype="bf16"
    )
    assert bare.dtype == torch.bfloat16
    assert torch.equal(bare.get_input_embeddings().weight.float(), ref["gpt_neox.embed_in.weight"].bfloat16().float())

    # the CLI form 'module:function'
    via_str, _ = load_checkpoint_model(ck, model_builder=f"{__name__}:build_tiny_lm")
    assert torch.equal(via_str.get_input_embeddings().weight, ref["gpt_neox.embed_in.weight"])

    # a builder whose module does not match
    with pytest.raises(CheckpointLoadError, match="state_dict"):
        load_checkpoint_model(ck, model_builder=lambda hp: build_tiny_model("gpt_neox", hidden_size=32))


def test_resolve_dtype():
    assert resolve_dtype("fp16") == torch.float16
    assert resolve_dtype("bfloat16") == torch.bfloat16
    assert resolve_dtype(torch.float32) == torch.float32
    assert resolve_dtype("auto") == "auto"
    with pytest.raises(ValueError):
        resolve_dtype("int8")


def test_tiny_config_archs():
    assert tiny_config("olmo2").model_type == "olmo2"
    assert tiny_config("gpt_neox").hidden_size == 64


# ------------------------------------------------------------------ PEFT adapters, LightningCLI (issue 9 item 11)


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory):
    """A base model folder and an HF-Trainer-style run whose checkpoint-N/ hold only a LoRA adapter."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    build_tiny_model(seed=5).save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    for i, step in enumerate((10, 20)):
        base = AutoModelForCausalLM.from_pretrained(root / "base")  # base_model_name_or_path = this folder
        model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query_key_value"]))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.fill_(0.02 * (i + 1))  # a trained adapter: it changes the features
        model.save_pretrained(root / "run" / f"checkpoint-{step}")
    return root


def test_peft_adapter_checkpoints_load_on_their_base(adapter_run):
    from geomtrace.measure import measure_geometry
    from geomtrace.probes import load_probes

    found = local_checkpoints(adapter_run / "run")
    assert [(c.kind, c.step, c.key) for c in found] == [
        ("peft_adapter", 10, "checkpoint-10"),
        ("peft_adapter", 20, "checkpoint-20"),
    ]
    model, tok = load_checkpoint_model(found[1])
    assert type(model).__name__ == "PeftModel" and not model.training
    assert tok is not None  # from the base model: the run saved none
    probes = load_probes(tok, num_sequences=16, max_tokens=32)
    base, _ = load_checkpoint_model(
        Checkpoint(None, None, str(adapter_run / "base"), str(adapter_run), None, None, "hf_folder")
    )
    adapted = measure_geometry(model, probes).last
    plain = measure_geometry(base, probes).last
    assert adapted.rankme != plain.rankme  # the adapter is active in the measured forward
    # --base-model points elsewhere (e.g. the hub id recorded in the adapter is not reachable)
    other, _ = load_checkpoint_model(found[1], base_model=str(adapter_run / "base"))
    assert measure_geometry(other, probes).last.rankme == adapted.rankme
    with pytest.raises(CheckpointLoadError, match=r"base model .*--base-model"):
        load_checkpoint_model(found[0], base_model=str(adapter_run / "no-such-base"))


class _TokenizedLM(torch.nn.Module):
    """A LightningModule-like wrapper written as a LightningCLI user writes one."""

    def __init__(self, hidden_size: int = 64, lr: float = 1e-3):
        super().__init__()
        self.model = build_tiny_model("gpt_neox", hidden_size=hidden_size, seed=11)
        self.tokenizer = tiny_tokenizer()


def build_from_hparams(hparams: dict):
    return _TokenizedLM(**hparams)  # the docs' builder: **hparams into the module's __init__


def test_lightning_cli_hyperparameters_and_module_tokenizer(tmp_path):
    module = _TokenizedLM()
    path = tmp_path / "epoch=0-step=3.ckpt"
    hparams = {
        "hidden_size": 64,
        "lr": 1e-3,
        "_instantiator": "lightning.pytorch.cli.instantiate_module",
        "_class_path": "mypackage.MyModule",
    }  # what LightningCLI's save_hyperparameters stores
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, path)
    (ck,) = local_checkpoints(path)
    model, tok = load_checkpoint_model(ck, model_builder=build_from_hparams)
    assert type(model).__name__ == "GPTNeoXForCausalLM"
    assert tok is not None and tok.pad_token == "<|pad|>"  # the module's own tokenizer


def test_lightning_module_class_as_builder(tmp_path):
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self, hidden_size: int = 64):
            super().__init__()
            self.save_hyperparameters()
            self.model = build_tiny_model("gpt_neox", hidden_size=hidden_size, seed=2)
            self.tokenizer = tiny_tokenizer()

    saved = Module()
    with torch.no_grad():
        for p in saved.parameters():
            p.add_(0.01)
    path = tmp_path / "step=1.ckpt"
    torch.save(
        {
            "state_dict": saved.state_dict(),
            "hyper_parameters": dict(saved.hparams),
            "pytorch-lightning_version": L.__version__,
        },
        path,
    )
    model, tok = load_checkpoint_model(local_checkpoints(path)[0], model_builder=Module)
    ref = saved.model.state_dict()
    assert all(torch.equal(model.state_dict()[k], ref[k]) for k in ref) and tok is not None
