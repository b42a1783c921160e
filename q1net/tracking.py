"""Weights & Biases without surprises: offline unless the user has configured an API key."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

WANDB_HOST = "api.wandb.ai"


def wandb_key_configured() -> bool:
    """True when W&B could log in: WANDB_API_KEY is set or ~/.netrc holds a key for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and netrc.netrc(path).authenticators(os.environ.get("WANDB_BASE_URL", WANDB_HOST).split("//")[-1]) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def choose_wandb_mode() -> str:
    """Set WANDB_MODE=offline when no key is configured (an explicit WANDB_MODE always wins)."""
    if "WANDB_MODE" not in os.environ and not wandb_key_configured():
        os.environ["WANDB_MODE"] = "offline"
    return os.environ.get("WANDB_MODE", "online")
