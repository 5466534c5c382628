"""The chart's part for the files service: its storage (a volume, or S3 with keys from a Secret), retention and
size limit reach its settings, and its alerts ship in the PrometheusRule."""

from __future__ import annotations

import yaml
from test_chart import _by_kind, _render, _volume_names

from moteur.files.settings import FilesSettings

S3 = {"files": {"storage": "s3", "retentionDays": 7, "s3": {
    "endpoint": "http://minio:9000", "bucket": "moteur-files", "accessKeyId": "AKIATEST", "secretAccessKey": "s3cr3t"}}}


def test_the_files_service_keeps_files_on_a_volume_by_default() -> None:
    manifests = _render({})
    settings = _by_kind(manifests, "ConfigMap")["moteur-files"]["data"]
    loaded = FilesSettings.model_validate({k.removeprefix("MOTEUR_").lower(): v for k, v in settings.items()
                                           if k.startswith("MOTEUR_FILES_")})
    assert loaded.files_storage == "dir" and str(loaded.files_dir) == "/var/lib/moteur/files"
    assert loaded.files_retention_days == 30 and loaded.files_max_bytes == 52428800
    pod = _by_kind(manifests, "Deployment")["moteur-files"]["spec"]["template"]["spec"]
    assert {"name": "files", "emptyDir": {"sizeLimit": "5Gi"}} in pod["volumes"]  # bounded (files.persistence)
    assert _volume_names(pod) == {"tmp", "files"}
    assert "moteur-files-s3" not in _by_kind(manifests, "Secret")


def test_s3_storage_takes_its_keys_from_a_secret() -> None:
    manifests = _render(S3)
    settings = _by_kind(manifests, "ConfigMap")["moteur-files"]["data"]
    assert settings["MOTEUR_FILES_STORAGE"] == "s3" and settings["MOTEUR_FILES_S3_BUCKET"] == "moteur-files"
    assert settings["MOTEUR_FILES_S3_ENDPOINT"] == "http://minio:9000"
    assert settings["MOTEUR_FILES_RETENTION_DAYS"] == "7"
    assert "s3cr3t" not in yaml.safe_dump([m for m in manifests if m["kind"] == "ConfigMap"])
    assert _by_kind(manifests, "Secret")["moteur-files-s3"]["stringData"]["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"
    container = _by_kind(manifests, "Deployment")["moteur-files"]["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "moteur-files-s3"}} in container["envFrom"]
    existing = {"files": {**S3["files"], "s3": {"bucket": "b", "existingSecret": "my-s3-keys"}}}
    container = _by_kind(_render(existing), "Deployment")["moteur-files"]["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "my-s3-keys"}} in container["envFrom"]


def test_the_prometheus_rule_has_files_alerts() -> None:
    (rule,) = [m for m in _render({"prometheusRule": {"enabled": True}}) if m["kind"] == "PrometheusRule"]
    groups = {g["name"]: {r["alert"] for r in g["rules"]} for g in rule["spec"]["groups"]}
    assert groups["moteur.files"] == {"MoteurFileRendersFailing", "MoteurFileRendersSlow"}


def test_the_render_workers_bounds_reach_the_files_service_and_tools_the_per_tenant_limit() -> None:
    values = {"files": {"workers": {"count": 3, "memoryBytes": 768 * 1024**2, "cpuSeconds": 10,
                                    "templateCpuSeconds": 1, "queuePerTenant": 4}},
              "tools": {"maxCallsPerTenant": 5}}
    configs = _by_kind(_render(values), "ConfigMap")
    files = FilesSettings.model_validate({k.removeprefix("MOTEUR_").lower(): v
                                          for k, v in configs["moteur-files"]["data"].items()
                                          if k.startswith("MOTEUR_FILES_")})
    assert (files.files_render_concurrency, files.files_worker_memory_bytes, files.files_worker_cpu_seconds,
            files.files_template_cpu_seconds, files.files_queue_per_tenant) == (3, 768 * 1024**2, 10, 1, 4)
    assert configs["moteur-tools"]["data"]["MOTEUR_MAX_TOOL_CALLS_PER_TENANT"] == "5"
