"""User-facing errors: each message says what was wrong and what to do about it."""


class TriforceError(Exception):
    """Base class; the CLI prints these as one line instead of a traceback."""


class ConfigError(TriforceError, ValueError):
    """A configuration value is invalid or unsupported."""


class ModelNotFoundError(TriforceError, FileNotFoundError):
    """A model name, path or its weights could not be found."""


class AssetError(TriforceError, RuntimeError):
    """An offline asset could not be fetched or failed verification."""


class PromptTooLongError(TriforceError, ValueError):
    """A prompt (plus the tokens to generate) does not fit the model's context."""


class TokenizerError(TriforceError, ValueError):
    """A model's tokenizer is missing, needs a package that is not installed, or does not load."""


class CorruptCheckpointError(TriforceError, OSError):
    """A weight file is truncated, corrupt or not a weight file at all (e.g. an interrupted download)."""
