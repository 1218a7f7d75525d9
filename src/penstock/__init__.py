"""penstock: Apache Flink's network stack in Python.

Records travel length-prefixed through fixed-size network buffers drawn from bounded
pools; a slow consumer slows its producers down (backpressure) instead of growing memory.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__"]
