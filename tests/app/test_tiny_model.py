"""The seeded tiny random Llama used by the app tests (triforce/models/tiny.py)."""

from __future__ import annotations

import pytest
import torch

from triforce.engine import Engine
from triforce.errors import ConfigError
from triforce.models.tiny import build_tiny, tiny_config


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = build_tiny(seed=3), build_tiny(seed=3), build_tiny(seed=4)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.embed_tokens.weight, c.embed_tokens.weight)


def test_config_overrides_and_rope_scaling():
    model = build_tiny({"num_layers": 1, "num_kv_heads": 4, "max_position_embeddings": 512},
                       rope_scaling={"rope_type": "yarn", "factor": 4.0})
    assert model.config.num_layers == 1 and model.config.max_position_embeddings == 2048
    with pytest.raises(ConfigError, match="unknown tiny-random option"):
        tiny_config({"layers": 3})


def test_tiny_model_generates_with_every_method():
    model = build_tiny()
    prompt = list(range(40, 140))
    greedy = {"temperature": 0.0, "top_p": 1.0}
    ref = Engine(model, None, {"name": "autoregressive"}, greedy).generate(prompt, 12, stop_at_eos=False).tokens
    for name in ("spec", "retrieval_spec", "triforce"):
        out = Engine(model, model, {"name": name, "budget": 32, "gamma": 3}, greedy).generate(prompt, 12, stop_at_eos=False)
        assert out.tokens == ref, name
