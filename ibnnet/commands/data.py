"""ibnnet data check | analyze divergence | evaluate (registered once their modules land)."""
from __future__ import annotations


def add_data_commands(sub) -> None:
    return None


def run(args) -> int:
    raise ValueError(f"unknown command {args.command}")
