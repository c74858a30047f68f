"""Toka's image built with buildah from the Dockerfile, without a Docker engine, and run.

The first run builds the local Debian base and the image (minutes); later runs find both in
buildah's storage. The build reads a copy of the checkout's context, so edits made while the
tests run cannot change what they see.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from toka.devcluster.image import (
    INSTALL_HINT,
    Images,
    archive_refs,
    context_files,
    ensure_images,
)

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(1800)


def buildah(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = [p for p in ("buildah", "runc", "debootstrap") if shutil.which(p) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed; the image tests need: {INSTALL_HINT}")
    root = tmp_path_factory.mktemp("context")
    for rel in [*context_files(REPO), Path(".dockerignore")]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    return root


@pytest.fixture(scope="module")
def images(context: Path) -> Images:
    return ensure_images(context)


@pytest.fixture(scope="module")
def container(images: Images) -> Iterator[str]:
    made = buildah("from", "--pull-never", images.toka)
    assert made.returncode == 0, made.stderr
    name = made.stdout.strip()
    try:
        yield name
    finally:
        buildah("rm", name)


def run(container: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return buildah("run", "--runtime", "runc", container, "--", *argv)


def test_the_images_entrypoint_is_toka(images: Images) -> None:
    done = buildah(
        "inspect", "--type", "image", "--format", "{{.OCIv1.Config.Entrypoint}}", images.toka
    )
    assert done.stdout.strip() == "[toka]"


def test_toka_runs_in_the_image(container: str) -> None:
    done = run(container, "toka", "--help")
    assert done.returncode == 0, done.stderr
    assert "usage: toka" in done.stdout


def test_the_tools_probe_in_the_image_fails_when_nothing_listens(container: str) -> None:
    assert run(container, "toka", "tools", "--probe").returncode == 1


def test_the_image_runs_as_user_10001(images: Images, container: str) -> None:
    user = buildah("inspect", "--type", "image", "--format", "{{.OCIv1.Config.User}}", images.toka)
    assert user.stdout.strip() == "10001"
    assert run(container, "id", "-u").stdout.strip() == "10001"


def test_the_venvs_toka_is_installed_at_opt_toka(container: str) -> None:
    done = run(container, "test", "-x", "/opt/toka/bin/toka")
    assert done.returncode == 0, done.stderr


def test_the_image_holds_this_checkouts_code_every_file_of_it(container: str) -> None:
    # A stale build tree once left an empty toka/__init__.py in the image: every module
    # is compared, and the operator's entry module imported, as the pod does.
    listing = (
        "import hashlib, json, pathlib, toka;"
        "root = pathlib.Path(toka.__file__).parent;"
        "print(json.dumps({str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()"
        " for p in root.rglob('*.py')}))"
    )
    done = run(container, "/opt/toka/bin/python", "-c", listing)
    assert done.returncode == 0, done.stderr
    package = REPO / "operator" / "toka"
    here = {
        str(p.relative_to(package)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in package.rglob("*.py")
    }
    assert json.loads(done.stdout) == here
    imported = run(container, "/opt/toka/bin/python", "-c", "import toka.controller.main")
    assert imported.returncode == 0, imported.stderr


def test_a_second_call_with_nothing_changed_builds_nothing(context: Path, images: Images) -> None:
    again = ensure_images(context)
    assert (again.toka, again.pause, again.base) == (images.toka, images.pause, images.base)
    assert again.cached, again.built


def test_the_pause_image_holds_only_pause_as_its_entrypoint(images: Images) -> None:
    done = buildah(
        "inspect", "--type", "image", "--format", "{{.OCIv1.Config.Entrypoint}}", images.pause
    )
    assert done.stdout.strip() == "[/pause]"
    made = buildah("from", "--pull-never", images.pause)
    assert made.returncode == 0, made.stderr
    name = made.stdout.strip()
    try:
        mount = buildah("mount", name).stdout.strip()
        assert sorted(p.name for p in Path(mount).iterdir()) == ["pause"]
        buildah("umount", name)
    finally:
        buildah("rm", name)


def test_the_exported_archives_name_their_images_in_full_and_are_reused(context: Path) -> None:
    first = ensure_images(context, export=True)
    assert first.toka_archive is not None
    assert first.pause_archive is not None
    assert archive_refs(first.toka_archive) == [first.toka]
    assert archive_refs(first.pause_archive) == [first.pause]
    again = ensure_images(context, export=True)
    assert again.exported == ()
    assert again.toka_archive == first.toka_archive
