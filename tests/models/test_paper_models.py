"""Every paper checkpoint as downloaded (shrunk: tests/paper_models.py) loads with its own tokenizer
and matches transformers' logits, beyond the original context where it has one."""

from __future__ import annotations

import json

import pytest
import torch

from tests.caches import full_cache
from tests.paper_models import LLAMA2_FAMILY, PAPER_MODELS
from triforce.errors import ConfigError
from triforce.models import load_config, load_model, load_tokenizer

TOL = 1e-4
TEXT = "Who's there? Nay, answer me: stand, and unfold yourself. Long live the king! 1234 " * 4


@pytest.mark.parametrize("name", list(PAPER_MODELS))
def test_paper_checkpoint_loads_and_matches_transformers(paper_models, name):
    from transformers import LlamaForCausalLM

    folder, spec = paper_models[name], PAPER_MODELS[name]
    config = json.loads((folder / "config.json").read_text())
    tok = load_tokenizer(str(folder))
    assert len(tok) == config["vocab_size"]  # the shrunk vocabulary is the tokenizer's
    ids = tok(TEXT, return_tensors="pt").input_ids[:, :64]
    assert ids.shape == (1, 64) and ids[0, 0] == (1 if spec.tokenizer == "sentencepiece" else config["bos_token_id"])
    assert tok.decode(ids[0], skip_special_tokens=True).startswith("Who's there? Nay, answer me")

    ours = load_model(str(folder), dtype="float32")
    hf = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    scaling = config.get("rope_scaling") or {}
    assert ours.config.rope_type == scaling.get("rope_type", scaling.get("type", "default"))
    for start in (0, spec.first_position):
        positions = torch.arange(start, start + 64)
        with torch.no_grad():
            ref = hf(ids, position_ids=positions[None], use_cache=False).logits
            out = ours(ids, positions, full_cache(ours, 64))
        assert ref.std() > 0.5  # non-degenerate logits: the tolerance is a real constraint
        assert (out - ref).abs().max().item() <= TOL, (name, start)


def test_llama2_family_shares_the_draft_vocabulary(paper_models):
    """llama-68m drafts for every Llama-2-family target: one tokenizer, one vocabulary."""
    vocab = {name: load_tokenizer(str(paper_models[name])).get_vocab() for name in LLAMA2_FAMILY}
    assert all(v == vocab["llama-68m"] for v in vocab.values())


def test_end_of_sequence_ids_include_generation_config(paper_models, tmp_path):
    assert load_config(paper_models["llama-3.1-8b-instruct"]).eos_token_id == (513, 520, 521)  # 128001, 128008, 128009
    assert load_config(paper_models["yarn-llama-2-7b-128k"]).eos_token_id == (2,)
    # Meta-Llama-3-8B-Instruct: config.json has 128001 only, generation_config.json adds <|eot_id|>
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=128256, eos_token_id=128001).save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [128001, 128009]}))
    assert load_config(tmp_path).eos_token_id == (128001, 128009)
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [128001,')  # cut short
    with pytest.raises(ConfigError, match="generation_config.json is not a JSON object"):
        load_config(tmp_path)
