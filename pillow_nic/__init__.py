"""nic: a learned image codec.  ``import pillow_nic`` registers `.nic` with Pillow.

Library API (no Pillow plugin machinery needed): ``encode``, ``decode``, ``read_info``.
"""

from __future__ import annotations

from . import NicImagePlugin  # noqa: F401  (registers the format with Pillow)
from .codec import Decoded, decode, encode, read_info
from .container import NicError

__all__ = ["Decoded", "NicError", "decode", "encode", "read_info"]
__version__ = "0.1.0"
