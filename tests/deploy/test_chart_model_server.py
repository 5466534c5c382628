"""The chart's model server (llama-cpp-python's OpenAI server): probes that never wait behind a generation nor
cut one off (TCP, not /v1/models, which takes the model's lock), interrupt_requests off, and llama.cpp's
threads from the container's CPU limit (or `modelServer.threads`), in the settings the installed server reads."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from test_chart import KUBERNETES_VERSION, LOCAL, _by_kind, _render

THREAD_VARIABLES = ("N_THREADS", "N_THREADS_BATCH")


def _container(values: dict[str, Any]) -> dict[str, Any]:
    deployment = _by_kind(_render(values), "Deployment")["moteur-model-server"]
    kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


@pytest.mark.parametrize("values", [{}, LOCAL], ids=["default", "local"])
def test_the_probes_are_tcp_on_the_server_port_never_an_http_path(values: dict[str, Any]) -> None:
    container = _container(values)
    assert container["ports"] == [{"name": "http", "containerPort": 8080}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["tcpSocket"] == {"port": "http"}, probe
        assert "httpGet" not in container[probe] and "exec" not in container[probe], probe
    # The startup probe still waits as long as the model may take to load (the port opens after it).
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180


@pytest.mark.parametrize("values", [{}, LOCAL], ids=["default", "local"])
def test_interrupt_requests_is_off(values: dict[str, Any]) -> None:
    assert _env(_container(values))["INTERRUPT_REQUESTS"] == {"name": "INTERRUPT_REQUESTS", "value": "false"}


@pytest.mark.parametrize("values", [{}, LOCAL], ids=["default", "local"])
def test_the_threads_come_from_the_cpu_limit(values: dict[str, Any]) -> None:
    container = _container(values)
    assert container["resources"]["limits"]["cpu"]  # the limit the threads follow
    env = _env(container)
    for name in THREAD_VARIABLES:
        assert env[name]["valueFrom"] == {"resourceFieldRef": {
            "containerName": container["name"], "resource": "limits.cpu", "divisor": "1"}}, name
        assert "value" not in env[name]


@pytest.mark.parametrize("threads", [1, 3])
def test_model_server_threads_overrides_the_cpu_limit(threads: int) -> None:
    env = _env(_container({"modelServer": {"threads": threads}}))
    for name in THREAD_VARIABLES:
        assert env[name] == {"name": name, "value": str(threads)}
    assert env["INTERRUPT_REQUESTS"]["value"] == "false"


def test_the_installed_server_reads_these_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The names are llama-cpp-python's own settings (pydantic-settings reads them from the environment)."""
    settings = pytest.importorskip("llama_cpp.server.settings")
    assert {"interrupt_requests"} <= settings.ServerSettings.model_fields.keys()
    assert {"n_threads", "n_threads_batch"} <= settings.ModelSettings.model_fields.keys()
    monkeypatch.delenv("INTERRUPT_REQUESTS", raising=False)
    assert settings.ServerSettings().interrupt_requests is True  # the server's default: why the chart sets it
    env = _env(_container({"modelServer": {"threads": 3}}))
    for variable in ("INTERRUPT_REQUESTS", *THREAD_VARIABLES):
        monkeypatch.setenv(variable, env[variable]["value"])
    assert settings.ServerSettings().interrupt_requests is False
    model = settings.ModelSettings(model="/model.gguf")
    assert (model.n_threads, model.n_threads_batch) == (3, 3)
