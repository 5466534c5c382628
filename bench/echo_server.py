"""A bare grpc.aio unary server: the floor the mesh's overhead is measured against.

``python -m bench.echo_server PORT`` echoes each request. ``python -m bench.echo_server PORT BASE_URL``
answers each one with LangChain's ChatOpenAI called on that OpenAI-compatible endpoint, and nothing else:
the least any gRPC front of that client can cost, which the router is compared with (bench/router.py).
Runs in its own process, like the services, so both are measured across the same loopback hop.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

import grpc

METHOD = "/bench.Echo/Echo"


def _model_answer(base_url: str) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(model="ok", base_url=base_url, api_key="not-needed", max_retries=0, timeout=10)

    async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return str((await chat.ainvoke(request.decode())).content).encode()

    return answer


async def main(port: int, base_url: str | None) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_model_answer(base_url) if base_url else echo)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([handler])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))
