"""A real Prometheus server for a test: scrapes the local mesh every second, answers PromQL over HTTP."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml


class Prometheus:
    def __init__(self, binary: str, workdir: Path, port: int, targets: dict[str, int], rules: Path | None) -> None:
        self.url = f"http://127.0.0.1:{port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)] if rules else [],
            "scrape_configs": [{"job_name": "moteur", "static_configs": [
                {"targets": [f"127.0.0.1:{port}"], "labels": {"service_name": name}}
                for name, port in targets.items()]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self._log = (workdir / "prometheus.log").open("w")
        self._process = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def _get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as reply:
            return json.loads(reply.read()) if path.startswith("/api/") else reply.read()

    def wait_ready(self, seconds: float = 20) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self._process.returncode}; see {self._log.name}")
            try:
                self._get("/-/ready")
                return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready after {seconds} s; see {self._log.name}")

    def wait_up(self, jobs: int, seconds: float = 30) -> None:
        """Until every target has been scraped successfully once (the first scrape comes after discovery)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if sum(t["health"] == "up" for t in self.targets()) == jobs:
                return
            time.sleep(0.5)
        raise TimeoutError(f"targets not up after {seconds} s: {self.targets()}")

    def query(self, promql: str) -> list[dict[str, Any]]:
        answer = self._get("/api/v1/query", query=promql)
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    def targets(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/targets")["data"]["activeTargets"])

    def rules(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/rules")["data"]["groups"])

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()
