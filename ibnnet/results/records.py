"""One table cell's result as the table and the figures read it (shared by `table` and `corruptions`)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Record:
    labels: dict[str, str]
    eval: str
    status: str
    run_id: str
    metrics: dict[str, float]
    evaluation_only: bool = False   # the run scored its starting weights (trainer.max_epochs: 0)
