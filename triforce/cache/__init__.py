from triforce.cache.static import StaticKVCache

__all__ = ["StaticKVCache"]
