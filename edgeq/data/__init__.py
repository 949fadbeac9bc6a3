"""Texts shipped inside the package (see README.md here): one for evaluation, one for calibration."""
from __future__ import annotations

from pathlib import Path

TEXTS = {"evaluation": "evaluation.txt", "calibration": "calibration.txt"}


def text_path(kind: str) -> Path:
    """Path of the shipped `kind` text ("evaluation" or "calibration")."""
    return Path(__file__).resolve().parent / TEXTS[kind]
