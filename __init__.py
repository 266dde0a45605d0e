"""paratune: find how to run a large neural network on several accelerators."""

from __future__ import annotations

__version__ = "0.1.0"
