"""q1net: JPEG quality level (1..100) from pixels alone, after Q1Net (Kim & Yang, 2021)."""

import os

# torch's OpenMP workers spin after each parallel operator (GOMP's default, 300,000 rounds: milliseconds), so the
# network that ONNX Runtime runs right after the lattice's operators shares the two cores with a spinning thread
# (29 against 23 ms here). libgomp reads this when torch loads it: it is set before any torch import, and a value
# of the user's stays. A predict loop here, whole process: wall 0.94x with 2,000 (10,000: 0.95x; 100: 1.02x);
# training steps unchanged (0.99x).
os.environ.setdefault("GOMP_SPINCOUNT", "2000")

__version__ = "0.1.0"
__all__ = ["Prediction", "Predictor", "__version__"]


def __getattr__(name: str) -> object:
    # lazy, so `import q1net` (and the CLI's --help) does not pay for torch
    if name in ("Predictor", "Prediction"):
        from q1net.predictor import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'q1net' has no attribute {name!r}")
