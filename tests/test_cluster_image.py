"""cluster/Dockerfile: its base image and installs match pyproject's pins, and it copies no
credentials, weights or whole build context."""

from __future__ import annotations

import re

from cluster_files import CLUSTER, ROOT, dockerfile_instructions, image_workdir, pinned, pyproject

def test_dockerfile_base_image_matches_the_pins():
    froms = [arg for word, arg in dockerfile_instructions() if word == "FROM"]
    assert len(froms) == 1, f"one stage expected, FROM lines: {froms}"
    image = froms[0].split()[0]
    m = re.fullmatch(r"rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<major>3)(?P<minor>\d+)-(?P<platform>gpu|cu\d+)", image)
    assert m, f"FROM {image}: expected rayproject/ray:<ray>-py3XX-gpu (or -cuXXX)"
    assert m["ray"] == pinned("ray"), f"FROM {image}: Ray {m['ray']} != pyproject's {pinned('ray')}"
    requires = pyproject()["project"]["requires-python"]
    lowest = re.search(r">=\s*(\d+)\.(\d+)", requires)
    assert (m["major"], m["minor"]) == ("3", "11") == lowest.groups(), f"FROM {image}: Python 3.11 (requires-python {requires})"


def test_dockerfile_installs_the_pinned_torch_and_the_project():
    runs = " ".join(arg for word, arg in dockerfile_instructions() if word == "RUN")
    for package in ("torch", "torchvision"):
        found = re.findall(rf"(?<![\w-]){package}==([\w.+]+)", runs)
        assert found and set(found) == {pinned(package)}, f"Dockerfile pins {package} {found}, pyproject {pinned(package)}"
    assert re.search(r"pip install[^&]*\s/app\b", runs), "the Dockerfile should pip install the project from /app"


def test_dockerfile_copies_no_credentials_bundles_or_whole_context():
    secret_name = re.compile(r"(?i)(secret|passw|token|credential|access_key|AWS_ACCESS_KEY_ID|AWS_SESSION)")
    last_user = None  # the base image's user (ray) unless a USER says otherwise
    for word, arg in dockerfile_instructions():
        if word in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*=", arg) or [arg.split()[0]]
            for name in names:
                assert not secret_name.search(name), f"Dockerfile {word} {name}: credentials come from the cluster"
        if word in ("COPY", "ADD"):
            assert word == "COPY", "use COPY (ADD fetches URLs and unpacks archives)"
            parts = [p for p in arg.split() if not p.startswith("--")]
            *sources, _dest = parts
            for src in sources:
                assert src not in (".", "./", "*"), "copy named paths only, never the whole build context"
                assert not re.search(r"(?i)(\.pth|\.pt|\.safetensors|bundle|\.aws|\.ray|credential|\.env|\.pem)", src), (
                    f"COPY {src}: no weights, bundles or credentials in the image"
                )
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        if word == "USER":
            last_user = arg
    assert last_user not in ("root", "0"), "the image should end as the unprivileged ray user"
    assert image_workdir() == "/app"
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    for pattern in ("**/*.pth", "**/*.safetensors"):
        assert pattern in ignore, f"cluster/Dockerfile.dockerignore should exclude {pattern}"

