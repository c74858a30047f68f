"""The dev image's tag: it follows what the Dockerfile copies and nothing else."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from toka.devcluster import image
from toka.devcluster.image import CONTEXT_DIRS, CONTEXT_FILES, archive_refs, content_hash

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ("Dockerfile", "pyproject.toml", "constraints.txt", "README.md"):
        (tmp_path / name).write_text(f"{name}\n")
    files = {
        "operator/toka/__init__.py": "VERSION = 1\n",
        "operator/toka/__pycache__/__init__.cpython-311.pyc": "bytecode",
        "operator/toka.egg-info/PKG-INFO": "Name: toka\n",
        "tests/test_toka.py": "def test_it(): pass\n",
        ".venv/bin/python": "",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_the_hash_is_twelve_hex_digits_and_stable(tree: Path) -> None:
    assert re.fullmatch(r"[0-9a-f]{12}", content_hash(tree))
    assert content_hash(tree) == content_hash(tree)


def test_the_hash_changes_when_a_file_under_operator_changes(tree: Path) -> None:
    before = content_hash(tree)
    (tree / "operator/toka/__init__.py").write_text("VERSION = 2\n")
    assert content_hash(tree) != before


def test_the_hash_changes_when_a_file_is_added_under_operator(tree: Path) -> None:
    before = content_hash(tree)
    (tree / "operator/toka/new.py").write_text("")
    assert content_hash(tree) != before


def test_the_hash_changes_when_the_dockerfile_changes(tree: Path) -> None:
    before = content_hash(tree)
    (tree / "Dockerfile").write_text("FROM scratch\n")
    assert content_hash(tree) != before


def test_the_hash_changes_with_the_base_image(tree: Path) -> None:
    assert content_hash(tree, "localhost/toka-base:a") != content_hash(
        tree, "localhost/toka-base:b"
    )


def test_the_hash_ignores_bytecode_egg_info_tests_and_the_venv(tree: Path) -> None:
    before = content_hash(tree)
    (tree / "operator/toka/__pycache__/__init__.cpython-311.pyc").write_text("other bytecode")
    (tree / "operator/toka/stray.pyc").write_text("bytecode")
    (tree / "operator/toka.egg-info/PKG-INFO").write_text("Name: toka\nVersion: 2\n")
    (tree / "tests/test_toka.py").write_text("def test_other(): pass\n")
    (tree / ".venv/bin/python").write_text("#!/bin/sh\n")
    assert content_hash(tree) == before


def test_the_hashed_files_are_those_the_dockerfile_copies() -> None:
    copied: set[str] = {"Dockerfile"}
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied.update(Path(src).as_posix() for src in line.split()[1:-1])
    assert copied == set(CONTEXT_FILES) | set(CONTEXT_DIRS)


def test_the_base_is_renamed_when_the_ca_bundle_it_carries_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "ca.crt"
    monkeypatch.setattr(image, "HOST_CA_BUNDLE", bundle)
    bundle.write_text("one\n")
    first = image.base_image_name()
    bundle.write_text("two\n")
    assert image.base_image_name() != first
    assert first.startswith("localhost/toka-base:bookworm-")


def test_an_oci_archive_names_its_images_from_its_index(tmp_path: Path) -> None:
    index = {
        "schemaVersion": 2,
        "manifests": [
            {"digest": "sha256:aa", "annotations": {}},
            {
                "digest": "sha256:bb",
                "annotations": {"org.opencontainers.image.ref.name": "localhost/toka:abc"},
            },
        ],
    }
    data = json.dumps(index).encode()
    archive = tmp_path / "toka.oci.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("index.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert archive_refs(archive) == ["localhost/toka:abc"]
