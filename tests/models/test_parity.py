"""Logits parity with transformers' LlamaForCausalLM (fp32): tiny random configs and SmolLM2."""

from __future__ import annotations

import pytest
import torch

from tests.caches import full_cache
from tests.conftest import TINY, hf_tiny, ours_from

TOL = 1e-4

YARN = dict(rope_scaling={"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096},
            max_position_embeddings=131072)
LLAMA3 = dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
              max_position_embeddings=131072)
LINEAR = dict(rope_scaling={"rope_type": "linear", "factor": 4.0}, max_position_embeddings=8192)

# (LlamaConfig overrides, first position): scaled ropes are checked far beyond their original context
CASES = {
    "mha": ({}, 0),
    "gqa": (dict(num_key_value_heads=2), 0),
    "mqa": (dict(num_key_value_heads=1), 0),
    "tied": (dict(tie_word_embeddings=True, num_key_value_heads=2), 0),
    "theta": (dict(rope_theta=500000.0), 0),
    "head_dim": (dict(head_dim=32), 0),  # head_dim != hidden / heads
    "bias": (dict(attention_bias=True, mlp_bias=True), 0),
    "yarn": (dict(YARN, num_key_value_heads=2), 60000),
    "llama3": (dict(LLAMA3, num_key_value_heads=2), 60000),
    # the DESIGN's SmolLM2 recipe: only rope_scaling is set, max_position_embeddings stays at 8192
    "yarn_x4_keep_max": (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192},
                              max_position_embeddings=8192), 30000),
    "yarn_mscale_betas": (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "beta_fast": 16, "beta_slow": 2,
                                             "mscale": 0.707, "mscale_all_dim": 1.0},
                               max_position_embeddings=32768), 30000),
    "yarn_attention_factor": (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "attention_factor": 1.3,
                                                 "truncate": False}, max_position_embeddings=32768), 30000),
    "linear": (LINEAR, 7000),
}


def tokens(batch: int, length: int, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))


def logits_both(hf, ours, toks: torch.Tensor, positions: torch.Tensor):
    b, t = toks.shape
    with torch.no_grad():
        pos_ids = positions if positions.dim() == 2 else positions[None].expand(b, -1)
        ref = hf(toks, position_ids=pos_ids, use_cache=False).logits
        out = ours(toks, positions, full_cache(ours, t, batch_size=b))
    return ref, out


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(make_tiny, case):
    overrides, start = CASES[case]
    pair = make_tiny(seed=len(case), **overrides)
    toks = tokens(2, 96)
    ref, out = logits_both(pair.hf, pair.ours, toks, torch.arange(start, start + 96))
    assert out.shape == ref.shape == (2, 96, TINY["vocab_size"])
    assert ref.std() > 0.5  # non-degenerate logits, so a tolerance of 1e-4 is a real constraint
    assert (out - ref).abs().max().item() <= TOL


def test_per_row_positions_match_transformers(make_tiny):
    """(B, T) positions: each row has its own rotary offsets."""
    pair = make_tiny(seed=5, num_key_value_heads=2, **YARN)
    toks = tokens(2, 40)
    positions = torch.stack([torch.arange(10, 50), torch.arange(70000, 70040)])
    ref, out = logits_both(pair.hf, pair.ours, toks, positions)
    assert (out - ref).abs().max().item() <= TOL
    # the rows really differ in position: the same row at the other row's positions gives other logits
    _, swapped = logits_both(pair.hf, pair.ours, toks, positions.flip(0))
    assert (swapped - out).abs().max().item() > 100 * TOL


@pytest.mark.parametrize("num_logits", [1, 3])
def test_num_logits_returns_the_last_rows(tiny_model, num_logits):
    toks = tokens(1, 20)
    with torch.no_grad():
        full = tiny_model(toks, None, full_cache(tiny_model, 20))
        last = tiny_model(toks, None, full_cache(tiny_model, 20), num_logits=num_logits)
    assert last.shape == (1, num_logits, TINY["vocab_size"])
    torch.testing.assert_close(last, full[:, -num_logits:], rtol=0, atol=1e-5)


@pytest.mark.parametrize("case,start", [("yarn", 60000), ("llama3", 60000), ("linear", 7000)])
def test_parity_detects_ignored_rope_scaling(case, start):
    """The comparison is sensitive: dropping the rope scaling on our side is far out of tolerance."""
    overrides, _ = CASES[case]
    hc, hf = hf_tiny(seed=len(case), **overrides)
    from transformers import LlamaConfig

    unscaled = LlamaConfig(**{**TINY, **{k: v for k, v in overrides.items() if k != "rope_scaling"}})
    ours = ours_from(unscaled, hf.state_dict())
    assert ours.config.rope_scaling is None
    ref, out = logits_both(hf, ours, tokens(2, 96), torch.arange(start, start + 96))
    assert (out - ref).abs().max().item() > 1000 * TOL


def test_parity_detects_a_wrong_yarn_factor():
    """YaRN's factor moves both the frequencies and the attention scale: factor 16 vs 32 is visible."""
    hc, hf = hf_tiny(seed=7, **YARN)
    from transformers import LlamaConfig

    wrong = LlamaConfig(**{**TINY, **YARN, "rope_scaling": {**YARN["rope_scaling"], "factor": 16.0}})
    ours = ours_from(wrong, hf.state_dict())
    ref, out = logits_both(hf, ours, tokens(1, 64), torch.arange(60000, 60064))
    assert (out - ref).abs().max().item() > 100 * TOL


@pytest.mark.slow
def test_smollm2_matches_transformers_on_gutenberg(smollm2_dir, gutenberg_dir):
    from transformers import LlamaForCausalLM

    from triforce.data.gutenberg import load_books
    from triforce.models import load_model, load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    text = load_books(gutenberg_dir, names=["hamlet_gut"])[0].text
    ids = tok(text[:20000], return_tensors="pt").input_ids[:, :512]
    assert ids.shape == (1, 512)

    ours = load_model("smollm2-135m", dtype="float32")
    cfg = ours.config
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size) == (30, 9, 3, 49152)
    hf = LlamaForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf(ids, use_cache=False).logits
        out = ours(ids, None, full_cache(ours, 512))
    assert (out - ref).abs().max().item() <= TOL
    # real weights on real text: the model predicts Shakespeare far better than chance (ln 49152 = 10.8)
    nll = torch.nn.functional.cross_entropy(out[0, :-1], ids[0, 1:]).item()
    assert nll < 4.0
