"""q1net: JPEG quality level (1..100) from pixels alone, after Q1Net (Kim & Yang, 2021)."""

__version__ = "0.1.0"
