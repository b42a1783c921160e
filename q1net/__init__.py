"""q1net: JPEG quality level (1..100) from pixels alone, after Q1Net (Kim & Yang, 2021)."""

import os

# torch's OpenMP workers spin after each parallel operator (GOMP's default, 300,000 rounds: milliseconds), so the
# network that ONNX Runtime runs right after the lattice's operators shares the two cores with a spinning thread
# (29 against 23 ms here). Too few rounds cost as much the other way: a worker that stops spinning sleeps, and every
# operator (eager) or parallel loop (compiled) then wakes it. libgomp reads this when torch loads it: it is set before
# any torch import, and a value of the user's stays. Whole processes taking turns, five each (2026-12-04, Intel Xeon,
# 2 cores): a 2 MP predict 0.95x with 10,000 against 2,000 with the compiled stage, 0.89x eager (20,000: 0.95x,
# 0.88x; 50,000: 0.96x, 0.89x; 300,000 slower than 2,000), a training step 0.92x, a folder with one worker the same.
# (On 2026-12-03, an AMD host and the code of then, 2,000 and 10,000 were within 1%.)
OPENMP_SPIN_ROUNDS = "10000"
os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN_ROUNDS)

__version__ = "0.1.0"
__all__ = ["Prediction", "Predictor", "__version__"]


def __getattr__(name: str) -> object:
    # lazy, so `import q1net` (and the CLI's --help) does not pay for torch
    if name in ("Predictor", "Prediction"):
        from q1net.predictor import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'q1net' has no attribute {name!r}")
