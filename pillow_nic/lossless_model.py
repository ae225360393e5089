"""Names shared by the lossless predictor's training, export and codec."""

from __future__ import annotations

PLANES = 3  # Y, Co, Cg; grey and alpha planes use the plane-0 networks


def model_key(kind: str, plane: int) -> str:
    """Name of one predictor network inside a lossless model package."""
    return f"{kind}{plane}"
