"""POS adapters: the :class:`PosAdapter` interface, the reference :class:`RedisInventoryAdapter`."""

from .base import PosAdapter
from .redis_inventory import RedisInventoryAdapter

__all__ = ["PosAdapter", "RedisInventoryAdapter"]
