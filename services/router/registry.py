"""The model registry and the routes: which deployments exist, how to reach them, what they cost, and
which of them serve each type of request.

Loaded from one YAML file (a ConfigMap in a cluster) and validated whole, so that a typo or a route naming
a missing model is refused at load with the offending field named — the router keeps its previous
configuration — instead of failing a user's request later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from langchain_core.prompts import PromptTemplate
from pydantic import BaseModel, ConfigDict, Field, model_validator

from moteur.runtime.reload import load_yaml

PROMPT_VARIABLES = {"request_type", "tier", "date"}
REQUEST_TYPES = ("chat", "summarize", "extract", "code")
Provider = Literal["openai", "anthropic", "instant"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelDeployment(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9._-]{1,64}$")
    # Deployments sharing a group serve the same model and are load-balanced (LiteLLM's model_name);
    # routes and hints name a group or a deployment. Defaults to the deployment's own name.
    group: str = Field("", pattern=r"^([a-zA-Z0-9._-]{1,64})?$")
    provider: Provider
    model: str = ""
    base_url: str = ""
    api_key_env: str = ""  # the environment variable (a Secret in a cluster) holding the key; never the key
    context_window: int = Field(2048, gt=0)
    max_output_tokens: int = Field(256, gt=0, le=8192)
    input_price_per_1k_usd: float = Field(0.0, ge=0)
    output_price_per_1k_usd: float = Field(0.0, ge=0)
    timeout_seconds: float = Field(60.0, gt=0)
    max_concurrency: int = Field(8, gt=0, le=10_000)  # calls in flight at once; the gateway's queue sizes on it
    weight: int = Field(1, gt=0, le=1000)  # share of traffic among healthy deployments of a group
    tiers: list[str] = Field(default_factory=list)  # tiers that may name it in a hint; empty: every tier
    stop: list[str] = Field(default_factory=list, max_length=4)
    # How to count its tokens exactly: "gguf:<model file>" or "hf:<tokenizer.json>"; empty: estimated.
    tokenizer: str = Field("", pattern=r"^((gguf|hf):.+)?$")
    supports_streaming: bool = True
    supports_tools: bool = False
    supports_json: bool = False
    # Which dialect of the OpenAI API the server speaks: OpenAI's, or llama-cpp-python's server's, which
    # takes a JSON Schema as {"type": "json_object", "schema": …} (it refuses response_format json_schema)
    # and wants string content on assistant messages that call tools.
    json_schema_style: Literal["openai", "llamacpp"] = "openai"
    # How the model writes tool calls when it does not send OpenAI tool_calls: "qwen" reads Qwen's
    # <tool_call>{"name": …, "arguments": …}</tool_call> (or that JSON fenced, or bare) from its text
    # (moteur.router.toolcalls); "": only the provider's tool_calls count.
    tool_call_text: Literal["", "qwen"] = ""
    # instant provider only: answer after this long, to stand in for a model of known speed in benchmarks
    simulated_latency_ms: int = Field(0, ge=0, le=60_000)
    # instant provider only: and stream one word every this long after it (a stream that lasts, for tests)
    simulated_word_ms: int = Field(0, ge=0, le=10_000)

    @model_validator(mode="after")
    def _provider_needs(self) -> ModelDeployment:
        if self.provider == "openai" and not (self.model and self.base_url):
            raise ValueError(f"model {self.name!r}: provider 'openai' needs 'model' and 'base_url'")
        if self.provider == "anthropic" and not self.model:
            raise ValueError(f"model {self.name!r}: provider 'anthropic' needs 'model'")
        if self.tool_call_text and not self.supports_tools:
            raise ValueError(f"model {self.name!r}: tool_call_text needs supports_tools (it is offered no tools)")
        if self.tokenizer and not Path(self.tokenizer.partition(":")[2]).is_file():
            raise ValueError(f"model {self.name!r}: tokenizer file {self.tokenizer.partition(':')[2]!r} not found")
        return self

    @property
    def group_name(self) -> str:
        return self.group or self.name

    def cost_micro_usd(self, input_tokens: int, output_tokens: int) -> int:
        # price per 1k tokens in USD = price * 1000 micro-USD per token
        return round((input_tokens * self.input_price_per_1k_usd + output_tokens * self.output_price_per_1k_usd) * 1000)


class RouteConditions(_Strict):
    """When a route applies, beyond its request types; every condition set must hold."""

    tiers: list[str] = Field(default_factory=list)
    min_input_tokens: int = Field(0, ge=0)
    max_input_tokens: int = Field(0, ge=0)  # 0: no upper bound
    tools: bool | None = None  # True: only requests with tools; False: only without
    json_output: bool | None = None


class Route(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9._-]{1,64}$")
    request_types: list[Literal["chat", "summarize", "extract", "code"]] = Field(default_factory=list)  # empty: any
    when: RouteConditions = RouteConditions()
    candidates: list[str] = Field(min_length=1)  # groups or deployments, tried in order
    # A LangChain prompt template (f-string syntax) put before the conversation; variables: {request_type},
    # {tier}, {date}.
    system_prompt: str = ""
    temperature: float | None = Field(None, ge=0, le=2)
    max_output_tokens: int = Field(0, ge=0, le=8192)  # 0: the deployment's default
    # Requests like these pick this route when the caller gives no request type (embedding classifier).
    examples: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _template(self) -> Route:
        if self.system_prompt:
            try:
                variables = set(PromptTemplate.from_template(self.system_prompt).input_variables)
            except ValueError as exc:
                raise ValueError(f"route {self.name!r}: system_prompt is not a valid template: {exc}") from None
            unknown = variables - PROMPT_VARIABLES
            if unknown:
                raise ValueError(f"route {self.name!r}: system_prompt uses {sorted(unknown)}; "
                                 f"known variables: {sorted(PROMPT_VARIABLES)}")
        return self

    @property
    def catch_all(self) -> bool:
        """Matches every request: the route taken when no other one does."""
        return not self.request_types and self.when == RouteConditions()


class RetryPolicy(_Strict):
    attempts: int = Field(2, ge=1, le=10)  # per deployment, on retryable errors only
    initial_backoff_seconds: float = Field(0.05, ge=0)
    max_backoff_seconds: float = Field(1.0, ge=0)


class BreakerPolicy(_Strict):
    failure_threshold: int = Field(5, ge=1)  # consecutive failures that open the breaker
    open_seconds: float = Field(30.0, gt=0)  # then one probe is let through (half-open)


class ModelsConfig(_Strict):
    models: list[ModelDeployment] = Field(min_length=1)
    routes: list[Route] = Field(default_factory=list)
    default_model: str = ""  # shorthand for a catch-all route "default" of this one model
    retry: RetryPolicy = RetryPolicy()
    breaker: BreakerPolicy = BreakerPolicy()
    classifier_min_score: float = Field(0.1, ge=-1, le=1)  # below it, an unclassified request takes the default

    @model_validator(mode="after")
    def _consistent(self) -> ModelsConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        clash = set(names) & {m.group for m in self.models if m.group and m.group != m.name}
        if clash:
            raise ValueError(f"a group cannot share its name with another deployment: {sorted(clash)}")
        known = self.targets()
        if self.default_model and self.default_model not in known:
            raise ValueError(f"default_model {self.default_model!r} is not one of {sorted(known)}")
        for route in self.routes:
            missing = [c for c in route.candidates if c not in known]
            if missing:
                raise ValueError(f"route {route.name!r} names unknown models {missing}; known: {sorted(known)}")
        if not any(r.catch_all for r in self.all_routes()):
            raise ValueError("no route matches every request: add one without request_types and conditions, "
                             "or set default_model")
        route_names = [r.name for r in self.all_routes()]
        if len(set(route_names)) != len(route_names):
            raise ValueError(f"route names must be unique, got {route_names}")
        return self

    def targets(self) -> set[str]:
        """What a route or a hint may name: groups and deployments."""
        return {m.name for m in self.models} | {m.group_name for m in self.models}

    def all_routes(self) -> list[Route]:
        if not self.default_model:
            return list(self.routes)
        return [*self.routes, Route(name="default", candidates=[self.default_model])]

    def deployments_of(self, target: str) -> list[ModelDeployment]:
        return [m for m in self.models if m.name == target or m.group_name == target]

    def dispatch_capacity(self) -> dict[str, int]:
        """Calls the models behind each kind of request can take at once (see ListModelsResponse)."""
        def capacity(routes: list[Route]) -> int:
            names = {d.name: d.max_concurrency for r in routes for c in r.candidates for d in self.deployments_of(c)}
            return sum(names.values())

        routes = self.all_routes()
        pools = {"any": capacity(routes)}
        for request_type in REQUEST_TYPES:
            serving = [r for r in routes if not r.request_types or request_type in r.request_types]
            pools[request_type] = capacity(serving)
        for target in self.targets():
            pools[f"model:{target}"] = sum(d.max_concurrency for d in self.deployments_of(target))
        return pools

    def get(self, name: str) -> ModelDeployment | None:
        return next((m for m in self.models if m.name == name), None)


def load_models(path: Path) -> tuple[ModelsConfig, str]:
    """The validated configuration and its revision (a hash of the file, shown by ListModels)."""
    return load_yaml(path, ModelsConfig)
