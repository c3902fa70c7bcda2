"""Model resolution and loading: every failure is a clear triforce error; loading materialises nothing random."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch

from tests.caches import full_cache
from tests.conftest import TINY, hf_tiny
from triforce.errors import ConfigError, ModelNotFoundError
from triforce.models.config import ModelConfig
from triforce.models.loading import (build_model, load_config, load_model, parse_dtype, read_state_dict,
                                     resolve_model_dir)


def save_tiny(folder: Path, seed: int = 0, **overrides):
    """Save a tiny random HF checkpoint (config.json + model.safetensors); return (hf_config, hf_model)."""
    hc, hf = hf_tiny(seed, **overrides)
    hf.save_pretrained(folder)
    return hc, hf


def tokens(length: int = 24) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (1, length), generator=torch.Generator().manual_seed(0))


# -- resolution ----------------------------------------------------------------------------

def test_unknown_name_fails_fast():
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="unknown model 'not-a-model'"):
        load_model("not-a-model")
    assert time.perf_counter() - start < 2.0  # no network attempt


def test_folder_without_config_json(tmp_path):
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load_model(str(tmp_path))


def test_non_llama_checkpoint_is_a_config_error(tmp_path):
    from transformers import GPT2Config

    GPT2Config().save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="Llama"):
        load_model(str(tmp_path))


def test_unknown_model_type_is_a_config_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(ConfigError, match="Llama"):
        load_config(tmp_path)


def test_llama_config_without_weights_says_to_download(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(**TINY).save_pretrained(tmp_path)
    assert load_config(tmp_path).hidden_size == TINY["hidden_size"]
    with pytest.raises(ModelNotFoundError, match="download"):
        load_model(str(tmp_path))


def test_missing_shard_says_the_download_is_incomplete(tmp_path):
    save_tiny(tmp_path)
    weight_map = {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                  "lm_head.weight": "model-00002-of-00002.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ModelNotFoundError, match="incomplete"):
        read_state_dict(tmp_path)


def test_state_dict_with_a_missing_key_is_an_error():
    hc, hf = hf_tiny(0)
    state = dict(hf.state_dict())
    del state["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ModelNotFoundError, match="layers.1.mlp.up_proj.weight"):
        build_model(ModelConfig.from_hf(hc), state, dtype=torch.float32, device="cpu")


def test_state_dict_with_an_unexpected_key_is_an_error():
    hc, hf = hf_tiny(0)
    state = {**hf.state_dict(), "model.layers.2.mlp.up_proj.weight": torch.zeros(1)}
    with pytest.raises(ModelNotFoundError, match="unexpected"):
        build_model(ModelConfig.from_hf(hc), state, dtype=torch.float32, device="cpu")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache in offline mode (the flag is read at import, so patch it too)."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.mark.parametrize("download", [True, False])
def test_unknown_hub_id_offline_says_how_to_download(offline_hub, download):
    repo = "triforce-tests/definitely-not-a-model"
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match=f"hf download {repo} --local-dir definitely-not-a-model"):
        resolve_model_dir(repo, download=download)
    assert time.perf_counter() - start < 10.0


def test_alias_resolves_through_the_asset_cache(tmp_path, monkeypatch):
    from triforce.errors import AssetError

    monkeypatch.setenv("TRIFORCE_HOME", str(tmp_path))
    with pytest.raises(AssetError, match="python -m triforce.assets fetch"):
        resolve_model_dir("smollm2-135m")


def test_alias_resolves_to_the_fetched_model(smollm2_dir):
    assert resolve_model_dir("smollm2-135m") == smollm2_dir


def test_unknown_dtype_is_a_config_error():
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype(torch.float16) is torch.float16
    with pytest.raises(ConfigError, match="dtype"):
        parse_dtype("float8")


# -- what loading builds -------------------------------------------------------------------

@pytest.mark.parametrize("tied", [False, True])
def test_build_model_assigns_the_given_weights(tied):
    hc, hf = hf_tiny(3, num_key_value_heads=2, tie_word_embeddings=tied)
    state = hf.state_dict()
    model = build_model(ModelConfig.from_hf(hc), state, dtype=torch.float32, device="cpu")
    ours = model.state_dict()
    for name, value in state.items():
        key = name.removeprefix("model.")
        if ".q_proj." in key or ".k_proj." in key or ".v_proj." in key:  # stored fused, in this order
            layer = model.layers[int(key.split(".")[1])].self_attn
            hq, hkv = layer.num_heads * layer.head_dim, layer.num_kv_heads * layer.head_dim
            fused = ours[key.rsplit(".", 2)[0] + ".qkv_proj." + key.rsplit(".", 1)[1]]
            part = {"q_proj": (0, hq), "k_proj": (hq, hkv), "v_proj": (hq + hkv, hkv)}[key.split(".")[-2]]
            assert torch.equal(fused[part[0]:part[0] + part[1]], value), name
        elif ".gate_proj." in key or ".up_proj." in key:
            fused = ours[key.rsplit(".", 2)[0] + ".gate_up_proj." + key.rsplit(".", 1)[1]]
            half = fused.shape[0] // 2
            assert torch.equal(fused[:half] if ".gate_proj." in key else fused[half:], value), name
        else:
            assert torch.equal(ours[key], value), name
    tensors = list(model.parameters()) + list(model.buffers())
    assert not any(t.is_meta for t in tensors)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    assert (model.lm_head.weight is model.embed_tokens.weight) == tied
    # the rotary buffer is computed, not left on the meta device or loaded from the checkpoint
    assert model.rotary.inv_freq.device.type == "cpu" and torch.isfinite(model.rotary.inv_freq).all()


def test_build_model_does_not_copy_fp32_weights():
    """meta + assign: same-dtype tensors are used as given (no random init, no second copy)."""
    hc, hf = hf_tiny(4)
    state = hf.state_dict()
    model = build_model(ModelConfig.from_hf(hc), state, dtype=torch.float32, device="cpu")
    w = state["model.layers.0.self_attn.o_proj.weight"]  # (q/k/v and gate/up are concatenated: new tensors)
    assert model.layers[0].self_attn.o_proj.weight.data_ptr() == w.data_ptr()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_build_model_casts_to_the_requested_dtype(dtype):
    hc, hf = hf_tiny(5, num_key_value_heads=2)
    ref = build_model(ModelConfig.from_hf(hc), hf.state_dict(), dtype=torch.float32, device="cpu")
    model = build_model(ModelConfig.from_hf(hc), hf.state_dict(), dtype=dtype, device="cpu")
    assert model.dtype == dtype and all(p.dtype == dtype for p in model.parameters())
    assert model.rotary.inv_freq.dtype == torch.float32  # rope maths stays fp32
    toks = tokens()
    with torch.no_grad():
        low = model(toks, None, full_cache(model, 24))
        high = ref(toks, None, full_cache(ref, 24))
    assert low.dtype == dtype
    assert (low.float() - high).abs().max().item() < 0.25  # close, at half precision
    assert (low.float().argmax(-1) == high.argmax(-1)).float().mean().item() > 0.9


def test_load_model_from_a_saved_checkpoint(tmp_path):
    hc, hf = save_tiny(tmp_path, seed=6, num_key_value_heads=2, tie_word_embeddings=True)
    model = load_model(str(tmp_path), dtype="float32")
    toks = tokens()
    with torch.no_grad():
        ref = hf(toks, use_cache=False).logits
        out = model(toks, None, full_cache(model, 24))
    assert (out - ref).abs().max().item() <= 1e-4


def test_load_model_from_sharded_safetensors(tmp_path):
    hc, hf = hf_tiny(7)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    state = read_state_dict(tmp_path)
    assert state.keys() == hf.state_dict().keys()
    model = load_model(str(tmp_path))
    assert torch.equal(model.lm_head.weight, hf.lm_head.weight)


def test_load_model_from_pytorch_bin(tmp_path):
    hc, hf = hf_tiny(8)
    hc.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    model = load_model(str(tmp_path))
    assert torch.equal(model.layers[1].mlp.down_proj.weight, hf.model.layers[1].mlp.down_proj.weight)


# -- broken downloads: one clear error naming the file ---------------------------------------

@pytest.fixture
def checkpoint_copy(tmp_path, paper_models):
    """Writable copies of a sharded safetensors and a sharded .bin paper checkpoint."""
    import shutil

    return {fmt: Path(shutil.copytree(paper_models[name], tmp_path / name))
            for fmt, name in (("safetensors", "llama-3.1-8b-instruct"), ("bin", "yarn-llama-2-7b-128k"))}


def cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("fmt,shard", [("safetensors", "model-00004-of-00004.safetensors"),
                                       ("bin", "pytorch_model-00002-of-00002.bin")])
def test_truncated_weight_file_is_named_before_any_is_read(checkpoint_copy, monkeypatch, fmt, shard):
    from triforce.errors import CorruptCheckpointError
    from triforce.models import loading

    folder = checkpoint_copy[fmt]
    reads = []
    monkeypatch.setattr(loading, "read_weight_file", lambda f: reads.append(f) or {})
    read_state_dict(folder)
    assert folder / shard in reads  # intact: every file is read
    reads.clear()
    cut(folder / shard)
    with pytest.raises(CorruptCheckpointError) as e:
        read_state_dict(folder)
    assert reads == []  # the broken last shard is found before the first one is read
    # a folder of its own: the command names what to fill in, not a made-up repo id
    assert re.fullmatch(rf"weight file {re.escape(str(folder / shard))} is truncated.*; download it again from the "
                        rf"repository this folder was downloaded from: `hf download <its Hugging Face id> {shard} "
                        rf"--local-dir {re.escape(str(folder))}`", str(e.value))


@pytest.mark.parametrize("content,pattern", [
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 4976698672\n", "is a Git LFS pointer.*git lfs pull"),
    (b"<!DOCTYPE html><html><body>Access denied</body></html>", "is an HTML page"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00not a json header", "is corrupt: its header is not a safetensors header"),
    (b"\x01\x02", "is truncated"),
])
def test_a_file_that_is_not_weights_says_what_it_is(checkpoint_copy, content, pattern):
    from triforce.errors import CorruptCheckpointError

    shard = checkpoint_copy["safetensors"] / "model-00002-of-00004.safetensors"
    shard.write_bytes(content)
    with pytest.raises(CorruptCheckpointError, match=pattern):
        read_state_dict(checkpoint_copy["safetensors"])


def test_a_bin_file_that_is_no_archive_or_a_wrong_one(checkpoint_copy):
    import zipfile

    from triforce.errors import CorruptCheckpointError

    shard = checkpoint_copy["bin"] / "pytorch_model-00001-of-00002.bin"
    shard.write_bytes(b"\x00" * 1000)
    with pytest.raises(CorruptCheckpointError, match="is corrupt: neither a zip archive nor a pickle"):
        read_state_dict(checkpoint_copy["bin"])
    with zipfile.ZipFile(shard, "w") as z:  # a whole zip archive, but not one torch wrote
        z.writestr("hello.txt", "hi")
    with pytest.raises(CorruptCheckpointError, match=r"could not be read \(.*\); download it again"):
        read_state_dict(checkpoint_copy["bin"])


def test_a_checkpoint_in_the_hub_cache_names_its_repo(tmp_path, paper_models):
    import shutil

    from triforce.errors import CorruptCheckpointError

    folder = tmp_path / "models--LargeWorldModel--LWM-Text-128K" / "snapshots" / "abc123"
    shutil.copytree(paper_models["lwm-text-128k"], folder)
    cut(folder / "pytorch_model-00001-of-00002.bin", 0.9)
    with pytest.raises(CorruptCheckpointError, match="`hf download LargeWorldModel/LWM-Text-128K "
                                                     "pytorch_model-00001-of-00002.bin --local-dir "):
        read_state_dict(folder)


def test_a_broken_draft_is_found_with_the_targets_files_before_either_loads(tmp_path, paper_models, monkeypatch):
    """assemble.build_engine checks both checkpoints' files before reading any: a truncated draft
    beside a good target is one error naming draft.name, and no weight file has been read."""
    import shutil

    from triforce.assemble import build_engine
    from triforce.config import RunConfig
    from triforce.errors import CorruptCheckpointError
    from triforce.models import loading

    draft = Path(shutil.copytree(paper_models["llama-68m"], tmp_path / "llama-68m"))
    cut(draft / "pytorch_model.bin")
    target = paper_models["yarn-llama-2-7b-128k"]
    reads = []
    monkeypatch.setattr(loading, "read_weight_file", lambda f: reads.append(f) or {})
    run = RunConfig.parse({"model": {"name": str(target)}, "draft": {"name": str(draft)},
                           "method": {"name": "triforce", "budget": 32}, "dataset": {}, "logger": {}})
    with pytest.raises(CorruptCheckpointError, match=rf"^draft.name={draft}: weight file {draft / 'pytorch_model.bin'} "
                                                     "is truncated"):
        build_engine(run.engine)
    assert reads == []
