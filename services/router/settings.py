"""The router's settings, read from its environment (prefix ``MOTEUR_``). What every service reads is in
``moteur.runtime.settings``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from moteur.runtime.settings import MoteurSettings


class RouterSettings(MoteurSettings):
    models_file: Path = Field(Path("config/models.yaml"), description="Model registry and routes (YAML).")
