from triforce.models.config import ModelConfig
from triforce.models.llama import Transformer
from triforce.models.loading import load_config, load_model
from triforce.models.tokenizer import load_tokenizer

__all__ = ["ModelConfig", "Transformer", "load_config", "load_model", "load_tokenizer"]
