"""The Qwen2.5, Qwen3 and Mistral checkpoints as downloaded (shrunk: tests/family_models.py): each
folder loads through load_model and matches transformers' own class for its family (fp32), its
ModelConfig reads what sets the family apart, a mixture-of-experts (or other non-decoder) config
is refused before any weights are read, and the decode plan computes the q/k-normed and biased
models' logits."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from tests.caches import full_cache
from tests.family_models import (FAMILY_DRAFTS, FAMILY_MODELS, QWEN3_YARN, SHRUNK_WINDOW, qwen_id, qwen_size)
from triforce.errors import ConfigError, PromptTooLongError
from triforce.models import load_config, load_model, load_tokenizer
from triforce.models.loading import build_model, read_state_dict

TOL = 1e-4
LENGTH = 64
TEXT = "Who's there? Nay, answer me: stand, and unfold yourself. Long live the king! 1234 " * 4


def hf_reference(folder, name: str):
    import transformers

    cls = getattr(transformers, FAMILY_MODELS[name].hf_class)
    return cls.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()


def logits_both(hf, ours, ids: torch.Tensor, start: int):
    positions = torch.arange(start, start + ids.shape[1])
    with torch.no_grad():
        ref = hf(ids, position_ids=positions[None].expand(ids.shape[0], -1), use_cache=False).logits
        out = ours(ids, positions, full_cache(ours, ids.shape[1], batch_size=ids.shape[0]))
    return ref, out


def random_ids(vocab: int, batch: int = 2, length: int = LENGTH, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# -- each folder: tokenizer, parity --------------------------------------------------------------

@pytest.mark.parametrize("name", list(FAMILY_MODELS))
def test_family_checkpoint_loads_and_matches_transformers(family_models, name):
    folder, spec = family_models[name], FAMILY_MODELS[name]
    ours = load_model(folder, dtype="float32")
    hf = hf_reference(folder, name)
    tok = load_tokenizer(str(folder))
    text_ids = tok(TEXT, return_tensors="pt").input_ids[:, :LENGTH]
    assert text_ids.shape == (1, LENGTH)
    assert tok.decode(text_ids[0], skip_special_tokens=True).startswith("Who's there? Nay, answer me")
    # the tokenizer's text, and random ids over the whole table (rows the tokenizer never makes too)
    for ids in (text_ids, random_ids(ours.config.vocab_size)):
        for start in sorted({0, spec.late_position}):
            ref, out = logits_both(hf, ours, ids, start)
            assert ref.shape == out.shape == (ids.shape[0], LENGTH, ours.config.vocab_size)
            assert ref.std() > 0.5  # non-degenerate logits: the tolerance is a real constraint
            assert (out - ref).abs().max().item() <= TOL, (name, start)


def test_qwen3_with_the_model_cards_yarn_matches_beyond_the_original_context(family_models, tmp_path):
    """Qwen3's model card extends it past 32K by adding YaRN (factor 4 over 32,768) to config.json."""
    folder = shutil.copytree(family_models["qwen3-8b"], tmp_path / "qwen3-8b-yarn")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "rope_scaling": QWEN3_YARN}, indent=2))
    ours = load_model(folder, dtype="float32")
    assert ours.config.rope_type == "yarn"
    hf = hf_reference(folder, "qwen3-8b")
    ids = random_ids(ours.config.vocab_size)
    for start in (0, 100_000):  # beyond 32,768 (and beyond config.json's 40,960)
        ref, out = logits_both(hf, ours, ids, start)
        assert ref.std() > 0.5
        assert (out - ref).abs().max().item() <= TOL, start
    # and YaRN is really in play there: the folder without it differs far out
    plain = load_model(family_models["qwen3-8b"], dtype="float32")
    _, unscaled = logits_both(hf, plain, ids, 100_000)
    assert (unscaled - ref).abs().max().item() > 100 * TOL


def test_the_family_tokenizers(family_models):
    """Qwen: no BOS, its special tokens after the regular ones, ChatML; a draft's tokenizer is its
    target's. Mistral: <s> first, [INST] / [/INST] (special in Nemo's tekken, text in v0.1)."""
    for target, draft in FAMILY_DRAFTS.items():
        assert (family_models[target] / "tokenizer.json").read_bytes() == \
               (family_models[draft] / "tokenizer.json").read_bytes()
    for name in ("qwen2.5-7b-instruct-1m", "qwen3-8b"):
        tok = load_tokenizer(str(family_models[name]))
        assert len(tok) == qwen_size(FAMILY_MODELS[name].tokenizer)  # fewer than the padded table
        assert len(tok) < json.loads((family_models[name] / "config.json").read_text())["vocab_size"]
        chat = tok.apply_chat_template([{"role": "user", "content": "Who's there?"}], add_generation_prompt=True,
                                       tokenize=False)
        assert chat.endswith("<|im_start|>user\nWho's there?<|im_end|>\n<|im_start|>assistant\n")
        ids = tok(chat).input_ids
        assert ids[0] == qwen_id("<|im_start|>") and ids.count(qwen_id("<|im_end|>")) == chat.count("<|im_end|>")
        assert tok("Who's there?").input_ids[0] < qwen_id("<|endoftext|>")  # no BOS added
    nemo = load_tokenizer(str(family_models["mistral-nemo-instruct-2407"]))
    chat = nemo.apply_chat_template([{"role": "user", "content": "Who's there?"}], tokenize=False)
    assert chat == "<s>[INST]Who's there?[/INST]"
    assert nemo(chat, add_special_tokens=False).input_ids[:2] == [1, 3] and nemo("Who").input_ids[0] == 1
    v01 = load_tokenizer(str(family_models["mistral-7b-instruct-v0.1"]))
    assert v01.apply_chat_template([{"role": "user", "content": "Who's there?"}], tokenize=False) == \
           "<s>[INST] Who's there? [/INST]"
    assert v01("Who").input_ids[0] == 1 and len(v01) == 1000


# -- what ModelConfig reads ------------------------------------------------------------------

# name -> (qkv_bias, o_bias, qk_norm, head_dim, tied, sliding_window, eos ids, exact_context)
EXPECTED = {
    # eos: <|im_end|> from config.json, then generation_config.json's <|endoftext|>
    "qwen2.5-7b-instruct-1m": (True, False, False, 16, False, None, (402, 400), 1010000),
    "qwen2.5-0.5b-instruct": (True, False, False, 12, True, None, (402, 400), 32768),
    "qwen3-8b": (False, False, True, 16, False, None, (402, 400), 40960),
    "qwen3-0.6b": (False, False, True, 16, True, None, (402, 400), 40960),  # 16 != 32 / 4
    "mistral-nemo-instruct-2407": (False, False, False, 16, False, None, (2,), 1024000),  # 16 != 48 / 4
    "mistral-7b-instruct-v0.1": (False, False, False, 16, False, SHRUNK_WINDOW, (2,), SHRUNK_WINDOW),
}


@pytest.mark.parametrize("name", list(FAMILY_MODELS))
def test_model_config_reads_what_sets_the_family_apart(family_models, name):
    cfg = load_config(family_models[name])
    config = FAMILY_MODELS[name].shrunk_config
    got = (cfg.qkv_bias, cfg.o_bias, cfg.qk_norm, cfg.head_dim, cfg.tie_word_embeddings, cfg.sliding_window,
           cfg.eos_token_id, cfg.exact_context)
    assert got == EXPECTED[name]
    assert cfg.family == config["model_type"] and cfg.vocab_size == config["vocab_size"]
    assert cfg.bos_token_id == config["bos_token_id"]
    assert cfg.rope_theta == float(config["rope_theta"]) and cfg.rope_scaling is None
    assert cfg.max_position_embeddings == config["max_position_embeddings"]
    assert (cfg.num_heads, cfg.num_kv_heads) == (config["num_attention_heads"], config["num_key_value_heads"])


@pytest.mark.parametrize("use_sliding_window,max_window_layers,window", [
    (False, 0, None),  # as released: a `sliding_window` value that is not used
    (True, 0, 4096),  # every layer slides
    (True, 1, 4096),  # the layers from the second on slide
    (True, 2, None),  # max_window_layers covers both layers: none slides (transformers' layer_types)
])
def test_a_qwen_window_counts_only_where_a_layer_slides(family_models, tmp_path, use_sliding_window,
                                                        max_window_layers, window):
    folder = tmp_path / "qwen"
    folder.mkdir()
    config = json.loads((family_models["qwen2.5-7b-instruct-1m"] / "config.json").read_text())
    config.update(use_sliding_window=use_sliding_window, max_window_layers=max_window_layers, sliding_window=4096)
    (folder / "config.json").write_text(json.dumps(config))
    cfg = load_config(folder)
    assert cfg.sliding_window == window
    assert cfg.exact_context == (window or 1010000)


# MoE / MLA / hybrid linear attention: transformers knows each, triforce refuses each by name
OUTSIDE = {
    "mixtral": ("MixtralForCausalLM", "mixture-of-experts"),
    "qwen2_moe": ("Qwen2MoeForCausalLM", "mixture-of-experts"),
    "qwen3_moe": ("Qwen3MoeForCausalLM", "mixture-of-experts"),
    "deepseek_v3": ("DeepseekV3ForCausalLM", "multi-latent attention"),
    "qwen3_next": ("Qwen3NextForCausalLM", "hybrid linear attention"),
}


@pytest.mark.parametrize("model_type", list(OUTSIDE))
def test_an_unsupported_model_type_is_one_config_error_before_any_weights(family_models, tmp_path, monkeypatch,
                                                                          model_type):
    """A Qwen3-MoE (Mixtral, DeepSeek-V3, ...) folder: its config.json beside real weight files; the
    error names what the model is, and no weight file is looked at."""
    from triforce.models import loading

    arch, why = OUTSIDE[model_type]
    folder = shutil.copytree(family_models["qwen3-8b"], tmp_path / model_type)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type=model_type, architectures=[arch])
    (folder / "config.json").write_text(json.dumps(config))

    def forbidden(*a, **k):
        raise AssertionError("a weight file was read before the config was checked")

    monkeypatch.setattr(loading, "read_weight_file", forbidden)
    monkeypatch.setattr(loading, "check_weight_file", forbidden)
    with pytest.raises(ConfigError) as info:
        load_model(folder)
    message = str(info.value)
    assert f"'{arch}' (model_type='{model_type}' ({why}))" in message, message
    assert "llama, mistral, qwen2, qwen3" in message and len(message.splitlines()) == 1


# -- the comparison has power -------------------------------------------------------------------

def test_parity_catches_a_missing_qk_norm_or_bias(family_models):
    """Dropping Qwen3's q/k head norms or Qwen2's q/k/v biases on our side is far out of tolerance."""
    for name, field, dropped in (("qwen3-8b", "qk_norm", ("q_norm", "k_norm")),
                                 ("qwen2.5-7b-instruct-1m", "qkv_bias", ("q_proj.bias", "k_proj.bias",
                                                                         "v_proj.bias"))):
        folder = family_models[name]
        cfg = dataclasses.replace(load_config(folder), **{field: False})
        state = {k: v for k, v in read_state_dict(folder).items() if not any(d in k for d in dropped)}
        wrong = build_model(cfg, state, dtype=torch.float32, device="cpu")
        ref, out = logits_both(hf_reference(folder, name), wrong, random_ids(cfg.vocab_size), 0)
        assert (out - ref).abs().max().item() > 1000 * TOL, name


def test_transformers_slides_the_window_past_it(family_models):
    """Mistral v0.1's window is real in transformers: within it the full cache is the model's
    attention; past it (300 > 256 tokens) the logits part, which is why a longer run is refused."""
    folder = family_models["mistral-7b-instruct-v0.1"]
    ours = load_model(folder, dtype="float32")
    hf = hf_reference(folder, "mistral-7b-instruct-v0.1")
    ref, out = logits_both(hf, ours, random_ids(ours.config.vocab_size, batch=1, length=300), 0)
    assert (out[:, :SHRUNK_WINDOW] - ref[:, :SHRUNK_WINDOW]).abs().max().item() <= TOL
    assert (out[:, SHRUNK_WINDOW + 8:] - ref[:, SHRUNK_WINDOW + 8:]).abs().max().item() > 100 * TOL


def test_the_engine_refuses_a_sequence_past_the_window(family_models):
    from triforce.engine import Engine

    model = load_model(family_models["mistral-7b-instruct-v0.1"], dtype="float32")
    engine = Engine(model, model, dict(name="spec", gamma=2, draft_sink=2, draft_window=16),
                    dict(temperature=0.0))
    assert engine.max_context == SHRUNK_WINDOW
    prompt = list(range(3, 3 + 200))
    assert len(engine.generate(prompt, 8, seed=0).tokens) == 8  # 200 + 8 (+ lookahead) fits
    with pytest.raises(PromptTooLongError, match=r"exceeds the model's context of 256 \(its sliding window"):
        engine.generate(prompt, 60, seed=0)


# -- the decode plan ------------------------------------------------------------------------------

PLANNED = ["qwen3-8b", "qwen2.5-7b-instruct-1m"]  # q/k head norms; q/k/v biases


@torch.inference_mode()
@pytest.mark.parametrize("name", PLANNED)
def test_the_decode_plan_without_kernels_gives_the_models_logits(family_models, name):
    """build_plan under a kernel policy that is off: the model's own forward through the static
    executor's view of a batch cache, one sequence and two at different lengths."""
    from tests.test_decode_plan import T, context, reference, run_plan, token_buffer

    model = load_model(family_models[name], dtype="float32")
    for lengths in ([9], [5, 11]):
        tokens = token_buffer(len(lengths), 2, model.config.vocab_size)
        logits, _ = run_plan(model, tokens, lengths, T, context(kernels=False))
        ref, _ = reference(model, tokens, lengths, T)
        assert logits.shape == ref.shape == (len(lengths), T, model.config.vocab_size)
        torch.testing.assert_close(logits, ref)


@torch.inference_mode()
@pytest.mark.parametrize("name", PLANNED)
def test_the_decode_plan_with_kernels_gives_the_models_logits(family_models, name):
    """The fused steps (Triton's interpreter on a CPU): the q/k head norms between the q/k/v product
    and rotary (Qwen3), the q/k/v bias in the product's epilogue (Qwen2); the keys each row wrote."""
    from tests.test_decode_plan import CAPACITY, T, context, interpreted, reference, run_plan, token_buffer
    from triforce.decode_plan import build_plan

    if interpreted.mark.args[0]:
        pytest.skip(interpreted.mark.kwargs["reason"])
    model = load_model(family_models[name], dtype="float32")
    lengths = [5, 11]
    qkv = build_plan(model, T, 1, context(kernels=True), batch=2, kv_slots=CAPACITY).steps[1]
    assert qkv.name == "QKV 0" and ("q/k head norms" in qkv.detail) == model.config.qk_norm, qkv
    tokens = token_buffer(len(lengths), 3, model.config.vocab_size)
    logits, cache = run_plan(model, tokens, lengths, 1, context(kernels=True))
    ref, ref_caches = reference(model, tokens, lengths, 1)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    for b, (n, ref_cache) in enumerate(zip(lengths, ref_caches)):
        torch.testing.assert_close(cache.k[:, b, :, :n + T], ref_cache.k[:, 0, :, :n + T], atol=1e-5, rtol=1e-5)
