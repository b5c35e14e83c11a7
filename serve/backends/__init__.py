"""Inference backends behind one interface (``Backend``); ``open_backend`` picks and opens one."""

from elunet.serve.backends.base import Backend
from elunet.serve.backends.select import open_backend

__all__ = ["Backend", "open_backend"]
