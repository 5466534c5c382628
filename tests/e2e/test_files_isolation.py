"""One tenant cannot slow another in the files service: pathological templates are refused quickly, naming the
limit they hit, while another tenant's renders go on within their deadline, and the service's own memory
stays flat. Run against a files replica of the test stack with small budgets (so the tests are quick)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from moteur.devstack.stack import LocalStack
from moteur.runtime.identity import Identity
from moteur.v1 import common_pb2, files_pb2, files_pb2_grpc

MIB = 1024 * 1024
MEMORY_LIMIT = 512 * MIB
ATTACKER = Identity("mallory-co", "mallory", "standard", admin=True)
VICTIM = Identity("acme-co", "alice", "standard")
LOOP = "{% for a in range(100000) %}{% for b in range(6000) %}{% endfor %}{% endfor %}"
POWER = "{{ (2**64**64**64**64**64) > 1 }}"
RECURSION = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"
# Doubles a string until it passes any memory limit: 2**40 bytes at the end.
MEMORY_HOG = ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
              "{{ ns.s | length }}")
# Harmless on sample data (data.n is empty); loops for ever on the data a render gives it.
SLOW_ON_DATA = "{% for a in range(data.get('n', 0)) %}{% for b in range(data.get('n', 0)) %}{% endfor %}{% endfor %}ok"
REPORT = "# Rapport\n\nL'été à Besançon : ça œuvre « bien ».\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"


@pytest.fixture(scope="module")
def isolated(stack: LocalStack) -> Iterator[tuple[str, int]]:
    """A files replica with two workers and small budgets: (its address, its pid)."""
    process, address = stack.extra_service(
        "files", "files-isolation", MOTEUR_FILES_RENDER_CONCURRENCY="2", MOTEUR_FILES_TEMPLATE_CPU_SECONDS="1",
        MOTEUR_FILES_WORKER_CPU_SECONDS="2", MOTEUR_FILES_WORKER_MEMORY_BYTES=str(MEMORY_LIMIT))
    process.start()
    assert process.pid is not None
    yield address, process.pid
    process.stop()


@pytest.fixture
async def files(isolated: tuple[str, int]) -> AsyncIterator[files_pb2_grpc.FilesStub]:
    async with grpc.aio.insecure_channel(isolated[0]) as channel:
        yield files_pb2_grpc.FilesStub(channel)


async def _put(files: files_pb2_grpc.FilesStub, stack: LocalStack, name: str, source: str,
               timeout: float = 30) -> grpc.aio.AioRpcError | None:
    request = files_pb2.PutTemplateRequest(name=name, formats=[common_pb2.FILE_FORMAT_MARKDOWN], source=source)
    try:
        await files.PutTemplate(request, metadata=stack.mesh_metadata(ATTACKER), timeout=timeout)
    except grpc.aio.AioRpcError as error:
        return error
    return None


async def _render(files: files_pb2_grpc.FilesStub, stack: LocalStack, timeout: float = 10,
                  fmt: int = common_pb2.FILE_FORMAT_PDF) -> files_pb2.FileInfo:
    request = files_pb2.RenderRequest(format=fmt, markdown=REPORT)
    return await files.Render(request, metadata=stack.mesh_metadata(VICTIM), timeout=timeout)


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_a_template_that_loops_for_ever_is_refused_naming_its_cpu_budget(files, stack) -> None:
    started = time.monotonic()
    error = await _put(files, stack, "loop", LOOP)
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1 s CPU budget" in error.details() and "MOTEUR_FILES_TEMPLATE_CPU_SECONDS" in error.details()
    assert time.monotonic() - started < 5


async def test_a_huge_power_is_refused_at_once(files, stack) -> None:
    started = time.monotonic()
    error = await _put(files, stack, "power", POWER)
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "too large" in error.details()
    assert time.monotonic() - started < 2


async def test_a_recursive_macro_is_invalid_argument(files, stack) -> None:
    error = await _put(files, stack, "recursion", RECURSION)
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "recurses" in error.details()


async def test_a_template_that_fills_memory_is_refused_naming_the_memory_limit(files, stack) -> None:
    error = await _put(files, stack, "hog", MEMORY_HOG)
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "512 MiB memory limit" in error.details() and "MOTEUR_FILES_WORKER_MEMORY_BYTES" in error.details()


async def test_a_render_past_its_cpu_budget_is_resource_exhausted(files, stack) -> None:
    assert await _put(files, stack, "slow-on-data", SLOW_ON_DATA) is None
    request = files_pb2.RenderRequest(format=common_pb2.FILE_FORMAT_MARKDOWN, template="slow-on-data")
    request.data.update({"n": 100000})
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await files.Render(request, metadata=stack.mesh_metadata(ATTACKER), timeout=30)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 s CPU budget (MOTEUR_FILES_WORKER_CPU_SECONDS)" in raised.value.details()
    assert time.monotonic() - started < 8


async def test_another_tenants_renders_go_on_while_pathological_templates_run(files, stack, isolated) -> None:
    rss_before = _rss_bytes(isolated[1])
    stop = asyncio.Event()
    refused: list[grpc.StatusCode] = []

    async def attack(source: str) -> None:
        while not stop.is_set():
            error = await _put(files, stack, "attack", source)
            refused.append(error.code() if error else grpc.StatusCode.OK)

    attackers = [asyncio.ensure_future(attack(s)) for s in (LOOP, LOOP, MEMORY_HOG, POWER, RECURSION, LOOP)]
    try:
        await asyncio.sleep(0.5)
        for _ in range(8):  # each within its own 5 s deadline, one after the other
            info = await _render(files, stack, timeout=5)
            assert info.ref.size_bytes > 1000
    finally:
        stop.set()
        await asyncio.gather(*attackers)
    assert refused and grpc.StatusCode.OK not in refused
    assert _rss_bytes(isolated[1]) - rss_before < 100 * MIB  # rendering happens in the workers


async def test_a_render_whose_caller_gave_up_does_not_hold_a_worker(files, stack) -> None:
    slow = [asyncio.ensure_future(_put(files, stack, "loop", LOOP, timeout=0.3)) for _ in range(6)]
    errors = await asyncio.gather(*slow)
    assert all(e is not None and e.code() == grpc.StatusCode.DEADLINE_EXCEEDED for e in errors)
    started = time.monotonic()
    await _render(files, stack, timeout=5)  # the abandoned checks were dropped or ended, not run to their budget
    assert time.monotonic() - started < 2
