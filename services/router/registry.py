"""The model registry: which model deployments exist, how to reach them and what they cost.

Loaded from a YAML file (a ConfigMap in a cluster) and validated at load, so a typo fails the start of
the router with the offending field named instead of failing a user's request later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, model_validator


class ModelDeployment(BaseModel):
    name: str = Field(pattern=r"^[a-zA-Z0-9._-]{1,64}$")
    provider: Literal["openai", "instant"]
    model: str = ""
    base_url: str = ""
    api_key_env: str = ""
    context_window: int = Field(2048, gt=0)
    max_output_tokens: int = Field(256, gt=0, le=8192)
    input_price_per_1k_usd: float = Field(0.0, ge=0)
    output_price_per_1k_usd: float = Field(0.0, ge=0)
    timeout_seconds: float = Field(60.0, gt=0)
    stop: list[str] = Field(default_factory=list, max_length=4)
    supports_streaming: bool = True
    supports_tools: bool = False
    supports_json: bool = False
    # instant provider only: answer after this long, to stand in for a model of known speed in benchmarks
    simulated_latency_ms: int = Field(0, ge=0, le=60_000)

    @model_validator(mode="after")
    def _provider_needs(self) -> ModelDeployment:
        if self.provider == "openai" and not (self.model and self.base_url):
            raise ValueError(f"model {self.name!r}: provider 'openai' needs 'model' and 'base_url'")
        return self

    def cost_micro_usd(self, input_tokens: int, output_tokens: int) -> int:
        # price per 1k tokens in USD = price * 1000 micro-USD per token
        return round((input_tokens * self.input_price_per_1k_usd + output_tokens * self.output_price_per_1k_usd) * 1000)


class ModelsConfig(BaseModel):
    default_model: str
    models: list[ModelDeployment] = Field(min_length=1)

    @model_validator(mode="after")
    def _names(self) -> ModelsConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        if self.default_model not in names:
            raise ValueError(f"default_model {self.default_model!r} is not one of {names}")
        return self

    def get(self, name: str) -> ModelDeployment | None:
        return next((m for m in self.models if m.name == name), None)


def load_models(path: Path) -> ModelsConfig:
    return ModelsConfig.model_validate(yaml.safe_load(path.read_text()))
