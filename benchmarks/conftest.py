"""Options for the benchmark suite: ``--images DIR`` and ``--quick`` (CI smoke mode)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_addoption(parser):
    parser.addoption("--images", default=None, help="folder of benchmark images (default: Kodak, else bundled)")
    parser.addoption("--quick", action="store_true", help="smoke mode: two images, one round")


@pytest.fixture(scope="session")
def quick(request) -> bool:
    return request.config.getoption("--quick")


@pytest.fixture(scope="session")
def images(request, quick):
    import peers

    return peers.image_set(request.config.getoption("--images"), 2 if quick else None)
