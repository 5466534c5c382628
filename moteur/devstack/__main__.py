"""``make run``: the whole mesh on this machine, with its data kept in ``.data/`` between runs.

Prints where everything listens and a development API key (created on the first start), writes
``.data/cli.env`` so that ``moteur chat "..."`` finds the gateway and the key, restarts a part that dies
(with back-off, one line each; see supervisor.py), and stops everything cleanly on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import signal
import threading

from rich.console import Console
from rich.table import Table

from moteur.devstack.stack import DEFAULT_DATA_DIR, LocalStack, StackOptions
from moteur.runtime.api_keys import ApiKeyStore
from moteur.runtime.mongo import connect_mongo, database
from moteur.runtime.settings import MongoSettings

DEV_KEY_FILE = DEFAULT_DATA_DIR / "dev-api-key"
CLI_ENV_FILE = DEFAULT_DATA_DIR / "cli.env"


async def _development_key(stack: LocalStack) -> tuple[str, bool]:
    """The development key of this data directory: read back, or created (tenant dev, user dev) once. It is
    an admin key of its tenant, so that every example of the README runs with it (limits, tenant switches)."""
    if DEV_KEY_FILE.exists():
        return DEV_KEY_FILE.read_text().strip(), False
    settings = MongoSettings(mongo_uri=stack.mongo_uri)
    mongo = connect_mongo(settings)
    try:
        key, _ = await ApiKeyStore(database(mongo, settings)).create("dev", "dev", "standard", "make run", admin=True)
    finally:
        await mongo.close()
    DEV_KEY_FILE.write_text(key + "\n")
    DEV_KEY_FILE.chmod(0o600)
    return key, True


def main() -> None:
    console = Console()
    stack = LocalStack(StackOptions(second_model=True, preferred_ports={"gateway": 50051, "gateway-http": 8080},
                                    supervise=True))
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    with console.status("starting SecantusDB, redis-server, the model servers and the five services…"):
        stack.start()
    try:
        key, created = asyncio.run(_development_key(stack))
        CLI_ENV_FILE.write_text(
            f"MOTEUR_GATEWAY={stack.address('gateway')}\nMOTEUR_API_KEY={key}\nMOTEUR_MONGO_URI={stack.mongo_uri}\n"
        )
        table = Table(title="moteur is running", show_header=True)
        table.add_column("part")
        table.add_column("listens on")
        for name, where in stack.describe().items():
            table.add_row(name, where)
        console.print(table)
        console.print(f"logs: {stack.data_dir / 'logs'}   data: {stack.data_dir}")
        console.print(f"development API key{' (new)' if created else ''}: [bold]{key}[/bold]")
        # Runnable as printed from the repository root, without activating the venv.
        console.print('try: [bold].venv/bin/moteur chat "What is the capital of France?"[/bold]   '
                      "(Ctrl-C stops everything; `source .venv/bin/activate` to type just `moteur`)")
        stopped.wait()
    finally:
        with console.status("stopping…"):
            stack.stop()
        console.print("stopped.")


if __name__ == "__main__":
    main()
