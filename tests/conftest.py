"""Shared fixtures: tiny random Llama models (HF reference + ours) and the real SmolLM2 weights."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Triton's CPU interpreter runs the GPU kernels in tests/kernels; it must be chosen before
    # anything imports Triton (on a GPU the kernels compile for real)
    os.environ.setdefault("TRITON_INTERPRET", "1")

TINY = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
)


@dataclasses.dataclass
class TinyPair:
    hf_config: object  # transformers.LlamaConfig
    hf: torch.nn.Module  # transformers.LlamaForCausalLM (eager attention, the reference)
    ours: torch.nn.Module  # triforce.models.llama.Transformer built from hf's state dict

    @property
    def cfg(self):
        return self.ours.config


def randomize_(model: torch.nn.Module, seed: int, std: float = 0.15) -> None:
    """Give every weight (norms included) O(1)-scale random values.

    The default HF init (std 0.02, norms = 1) makes attention nearly uniform, and then a wrong
    rotary frequency or a missing mask barely moves the logits: parity would prove little.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(std * noise)


def hf_tiny(seed: int = 0, **overrides):
    """A seeded random transformers LlamaForCausalLM (fp32, eager attention) from TINY + overrides."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hc = LlamaConfig(**{**TINY, **overrides})
    hc._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = LlamaForCausalLM(hc).eval()
    randomize_(model, seed)
    return hc, model


def ours_from(hc, state: dict[str, torch.Tensor], dtype=torch.float32, device="cpu"):
    from triforce.models.config import ModelConfig
    from triforce.models.loading import build_model

    return build_model(ModelConfig.from_hf(hc), state, dtype=dtype, device=device)


@pytest.fixture
def make_tiny():
    """Factory: make_tiny(seed=0, **LlamaConfig overrides) -> TinyPair (HF reference + ours, same weights)."""

    def make(seed: int = 0, **overrides) -> TinyPair:
        hc, hf = hf_tiny(seed, **overrides)
        state = {k: v.clone() for k, v in hf.state_dict().items()}
        return TinyPair(hc, hf, ours_from(hc, state))

    return make


@pytest.fixture
def tiny_model(make_tiny):
    """Our tiny GQA model (4 query heads over 2 KV heads), fp32 on CPU."""
    return make_tiny(seed=1, num_key_value_heads=2).ours


@pytest.fixture(autouse=True)
def _single_thread():
    """One intra-op thread for every test: tiny models are dominated by per-op overhead, and on a
    busy CPU a multi-threaded pool thrashes (SmolLM2 runs measured 10x slower with 2 threads on a
    loaded 2-core machine than with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- real weights ------------------------------------------------------------------------

def _fetched(product: str, what: str) -> Path:
    """A verified asset folder; skips (with the command to run) when it is not fetched."""
    from triforce.assets import home, verify_product

    folder = home() / product
    if not verify_product(folder):
        pytest.skip(f"{what} not fetched/verified under {folder}: run `python -m triforce.assets fetch`")
    return folder


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted SmolLM2-135M folder."""
    return _fetched("models/smollm2", "SmolLM2 weights")


@pytest.fixture(scope="session")
def gutenberg_dir() -> Path:
    return _fetched("texts/gutenberg", "Gutenberg books")


@pytest.fixture(scope="session")
def paper_models(tmp_path_factory, gutenberg_dir) -> dict[str, Path]:
    """Shrunk folders of every paper checkpoint (+ Llama-3.1-8B-Instruct), each in its real
    layout with its own kind of tokenizer (tests/paper_models.py): name -> folder."""
    from tests.paper_models import build_paper_models

    return build_paper_models(tmp_path_factory.mktemp("paper-models"), gutenberg_dir)


@pytest.fixture(scope="session")
def family_models(tmp_path_factory, gutenberg_dir) -> dict[str, Path]:
    """Shrunk folders of the Qwen2.5, Qwen3 and Mistral checkpoints the engine runs (issue 27), each
    in its real layout with its family's tokenizer (tests/family_models.py): name -> folder."""
    from tests.family_models import build_family_models

    return build_family_models(tmp_path_factory.mktemp("family-models"), gutenberg_dir)
