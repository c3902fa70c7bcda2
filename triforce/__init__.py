"""triforce: lossless long-context generation by hierarchical speculative decoding.

    from triforce import Engine, GenerationResult
    from triforce import build_engine              # an Engine from a composed config (loads the models)
"""

__version__ = "0.1.0"
__all__ = ["Engine", "EngineOptions", "GenerationResult", "MethodConfig", "SamplingParams", "build_engine"]


def __getattr__(name: str):
    # Lazy, so `python -m triforce.assets` and config composition do not import torch.
    if name in ("Engine", "EngineOptions", "GenerationResult"):
        from triforce import engine

        return getattr(engine, name)
    if name == "build_engine":
        from triforce.assemble import build_engine

        return build_engine
    if name in ("MethodConfig", "SamplingParams"):
        from triforce import config

        return getattr(config, name)
    raise AttributeError(f"module 'triforce' has no attribute {name!r}")
