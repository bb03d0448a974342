"""malm: image-to-recipe retrieval that trains on GPUs and runs on the edge.

`from malm import Retriever` is the on-device API (no torch is imported).
"""

from __future__ import annotations

from typing import Any

from malm._version import __version__

__all__ = ["Retriever", "Hit", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy so that `import malm` stays cheap and `malm.training` never drags in the SDK.
    if name in ("Retriever", "Hit"):
        # on use only: keeps Pillow, hnswlib, numpy out of the command line's start
        from malm import sdk

        return getattr(sdk, name)
    raise AttributeError(name)
