"""Run every benchmark: `python -m bench` (or `make bench`)."""

from __future__ import annotations

from bench import chat_path

if __name__ == "__main__":
    chat_path.main()
