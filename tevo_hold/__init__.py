"""tevo-hold: Ticket Evolution's hold, release and invoice calls for any ticket POS, on Redis.

The pieces a POS vendor uses::

    from tevo_hold import HoldService, PosAdapter, TevoHold, create_app, errors

- :class:`HoldService`: the core (hold / release / invoice / get), no HTTP involved;
- :class:`PosAdapter`: the interface to implement for your POS; :class:`RedisInventoryAdapter`,
  the reference adapter that keeps the inventory itself in Redis;
- :class:`TevoHold` / :func:`create_blueprint`: the HTTP API for your own Flask app;
  :func:`create_app`: a whole app, as the bundled gunicorn server runs it;
- :mod:`tevo_hold.errors`: every exception, rooted at :class:`TevoHoldError`.
"""

from . import errors
from .adapters import PosAdapter, RedisInventoryAdapter
from .app import create_app
from .errors import TevoHoldError
from .keys import KeySpace
from .ledger import Ledger
from .models import Hold, HoldStatus, Outcome, Stock
from .service import HoldService, build_service
from .settings import Settings
from .web import TevoHold, create_blueprint

__version__ = "0.1.0"

__all__ = [
    "Hold",
    "HoldService",
    "HoldStatus",
    "KeySpace",
    "Ledger",
    "Outcome",
    "PosAdapter",
    "RedisInventoryAdapter",
    "Settings",
    "Stock",
    "TevoHold",
    "TevoHoldError",
    "__version__",
    "build_service",
    "create_app",
    "create_blueprint",
    "errors",
]
