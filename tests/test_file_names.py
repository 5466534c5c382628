"""Rendered files are named with a slug of their title: safe anywhere, still recognisable, in French too."""

from __future__ import annotations

import pytest

from moteur.files.service import _file_name


@pytest.mark.parametrize(("title", "name"), [
    ("Rapport trimestriel été 2026", "rapport-trimestriel-ete-2026"),
    ("Données : Q3/Q4 — synthèse", "donnees-q3-q4-synthese"),
    ("Quarterly report", "quarterly-report"),
    ("../../etc/passwd", "etc-passwd"),
    ("a\x00b\nc", "a-b-c"),
    ("", "file"),
    ("日本語", "file"),
    ("x" * 200, "x" * 80),
])
def test_a_title_becomes_a_slug(title: str, name: str) -> None:
    assert _file_name(title) == name
