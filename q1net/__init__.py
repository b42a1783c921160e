"""q1net: JPEG quality level (1..100) from pixels alone, after Q1Net (Kim & Yang, 2021)."""

__version__ = "0.1.0"
__all__ = ["Prediction", "Predictor", "__version__"]


def __getattr__(name: str) -> object:
    # lazy, so `import q1net` (and the CLI's --help) does not pay for torch
    if name in ("Predictor", "Prediction"):
        from q1net.predictor import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'q1net' has no attribute {name!r}")
