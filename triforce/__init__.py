"""triforce: lossless long-context generation by hierarchical speculative decoding.

    from triforce import Engine, GenerationResult
"""

__version__ = "0.1.0"
__all__ = ["Engine", "GenerationResult", "MethodConfig", "SamplingParams"]


def __getattr__(name: str):
    # Lazy, so `python -m triforce.assets` and config composition do not import torch.
    if name in ("Engine", "GenerationResult"):
        from triforce import engine

        return getattr(engine, name)
    if name in ("MethodConfig", "SamplingParams"):
        from triforce import config

        return getattr(config, name)
    raise AttributeError(f"module 'triforce' has no attribute {name!r}")
