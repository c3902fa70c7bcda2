"""triforce: lossless long-context generation by hierarchical speculative decoding."""

__version__ = "0.1.0"
