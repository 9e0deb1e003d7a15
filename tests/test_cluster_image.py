"""cluster/Dockerfile and its dependency locks: the base image (Ray's CPU image of pyproject's pins,
pinned by digest or stopped at build time), the dependencies in layers of their own before the
project's code, the locks against pyproject's pins, the documented commands that pin digests, and no
credentials, weights or whole build context. One test builds the image where a Docker engine answers."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import uuid
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from cluster_files import (
    AWS, CLUSTER, DOCKERFILE, KUBERAY, OPERATIONS, ROOT, dockerfile_instructions, image_workdir, pinned, pyproject,
)  # fmt: skip
from doc_commands import shell_lines

TORCH_LOCK = CLUSTER / "requirements-torch-cu130.txt"
REST_LOCK = CLUSTER / "requirements.txt"
LOCKS = (TORCH_LOCK, REST_LOCK)
# Packages whose wheels depend on the CUDA build of torch: they belong in TORCH_LOCK only.
CUDA_BUILD = re.compile(r"(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)")
# The project's own files: what the Dockerfile copies after the dependency layers.
PROJECT_SOURCES = {"pyproject.toml", "README.md", "img2pose_core", "jobs", "examples"}
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
# What tests/test_cluster_manifests.py requires of every image line.
MANIFEST_IMAGE = re.compile(r"[\w.\-/]+/img2pose-ray(:[\w.\-]+)?@sha256:[0-9a-f]{64}")
# The Python environment of the image (Ray's py311 image on Linux x86_64), for environment markers.
IMAGE_MARKERS = {
    **default_environment(),
    "python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux", "platform_system": "Linux",
    "platform_machine": "x86_64", "os_name": "posix", "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}  # fmt: skip


# --------------------------------------------------------------------------- helpers


def read_lock(path: Path) -> dict[str, str]:
    """{canonical name: version} of a lock file; every entry must be an exact ``name==version``."""
    out = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!-]*)", line)
        assert m, f"{path.name}:{number}: {line!r} is not an exact name==version pin"
        name = canonicalize_name(m[1])
        assert name not in out, f"{path.name}: {name} is pinned twice"
        out[name] = m[2]
    return out


def base_image() -> tuple[str, int]:
    """The image the FROM line names, with ARG defaults resolved, and the FROM's index."""
    instructions = dockerfile_instructions()
    froms = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    assert len(froms) == 1, f"one stage expected, FROM lines: {[instructions[i][1] for i in froms]}"
    image = instructions[froms[0]][1].split()[0]
    m = re.fullmatch(r"\$\{?(\w+)\}?", image)
    if m:
        defaults = [arg.partition("=")[2] for word, arg in instructions[: froms[0]]
                    if word == "ARG" and arg.startswith(m[1] + "=")]  # fmt: skip
        assert defaults, f"FROM {image}: no ARG {m[1]}=... before it"
        image = defaults[-1]
    return image, froms[0]


def run_sh(script: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", **env}
    return subprocess.run(["sh", "-c", script], env=full_env, cwd=cwd, capture_output=True, text=True, timeout=60)


def guard_command() -> str:
    """The RUN that checks RAY_IMAGE: the first RUN after FROM."""
    instructions = dockerfile_instructions()
    _, from_index = base_image()
    runs = [(i, arg) for i, (word, arg) in enumerate(instructions) if word == "RUN" and i > from_index]
    assert runs and "RAY_IMAGE" in runs[0][1], "the first RUN after FROM should check RAY_IMAGE (digest, no CUDA image)"
    redeclared = [i for i, (word, arg) in enumerate(instructions)
                  if word == "ARG" and arg.split("=")[0] == "RAY_IMAGE" and from_index < i < runs[0][0]]  # fmt: skip
    assert redeclared, "ARG RAY_IMAGE must be declared again after FROM, or the RUN sees it empty"
    return runs[0][1]


def copy_sources(arg: str) -> list[str]:
    parts = [p for p in arg.split() if not p.startswith("--")]
    return [src.rstrip("/") for src in parts[:-1]]


def doc_line(lines: list[str], pattern: str) -> str:
    found = [line for line in lines if re.search(pattern, line)]
    assert len(found) == 1, f"docs/operations.md: expected one command matching {pattern!r}, found {found}"
    return found[0]


def image_values(node) -> list[str]:
    """Every ``image`` value in a YAML document, depth first."""
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                out.append(value)
            else:
                out += image_values(value)
    elif isinstance(node, list):
        for item in node:
            out += image_values(item)
    return out


def file_images(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return [image for doc in yaml.safe_load_all(fh) if doc for image in image_values(doc)]


# --------------------------------------------------------------------------- the base image


def test_dockerfile_base_image_matches_the_pins():
    image, _ = base_image()
    m = re.fullmatch(
        r"rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<major>3)(?P<minor>\d+)-(?P<platform>\w+)(@sha256:[0-9a-f]{64})?", image
    )
    assert m, f"FROM {image}: expected rayproject/ray:<ray>-py3XX-cpu, optionally @sha256:<digest>"
    assert m["platform"] == "cpu", f"FROM {image}: Ray's CPU image; PyTorch's wheels bring the CUDA runtime"
    assert m["ray"] == pinned("ray"), f"FROM {image}: Ray {m['ray']} != pyproject's {pinned('ray')}"
    requires = pyproject()["project"]["requires-python"]
    lowest = re.search(r">=\s*(\d+)\.(\d+)", requires)
    assert (m["major"], m["minor"]) == ("3", "11") == lowest.groups(), f"FROM {image}: Python 3.11 (requires-python {requires})"


def test_no_second_cuda():
    """No CUDA base image (nvidia/cuda, Ray's -gpu / -cuXXX), and one CUDA major in the torch lock."""
    for word, arg in dockerfile_instructions():
        if word in ("FROM", "ARG"):
            assert "nvidia/cuda" not in arg, f"{word} {arg}: no CUDA base image"
            assert not re.search(r"rayproject/ray:\S*-(gpu|cu\d+)\b", arg), f"{word} {arg}: Ray's -cpu image, not a CUDA one"
    majors = {m[1] for name in read_lock(TORCH_LOCK) if (m := re.search(r"-cu(\d+)$", name))}
    assert majors == {"13"}, f"{TORCH_LOCK.name}: CUDA wheels of several CUDA versions: {majors}"


def test_base_image_is_pinned_by_digest_or_the_build_stops():
    """The digest could not be looked up where these files were written, so the ARG may lack it: then
    the first RUN must stop the build, saying what to do. The RUN is executed here, as the build
    would, with values with and without a digest."""
    image, _ = base_image()
    guard = guard_command()
    tag = image.split("@")[0]
    digest = "@sha256:" + "0123456789abcdef" * 4
    ok = run_sh(guard, {"RAY_IMAGE": tag + digest})
    assert ok.returncode == 0, f"the RAY_IMAGE check refuses a pinned image: {ok.stderr}"
    if DIGEST.search(image):
        assert run_sh(guard, {"RAY_IMAGE": image}).returncode == 0
    refusals = (
        tag, tag + "@sha256:0123abcd", tag.replace("-cpu", "-gpu"), tag.replace("-cpu", "-gpu") + digest,
        tag.replace("-cpu", "-cu128") + digest,
    )  # fmt: skip
    for refused in refusals:
        r = run_sh(guard, {"RAY_IMAGE": refused})
        assert r.returncode != 0, f"the RAY_IMAGE check lets {refused} through"
        assert "RAY_IMAGE" in r.stderr and r.stderr.strip(), f"{refused}: the build should say why it stops: {r.stderr!r}"
    unpinned = run_sh(guard, {"RAY_IMAGE": tag}).stderr
    assert "docs/operations.md" in unpinned and "digest" in unpinned, f"say where the lookup is documented: {unpinned!r}"


def test_documented_base_digest_command_pins_the_dockerfile(tmp_path):
    """The documented sed, run as written on a copy of the Dockerfile, writes the digest into the ARG
    line (and replaces it when run again), and the build's check then lets the image through."""
    lines = shell_lines(OPERATIONS)
    lookup = doc_line(lines, r"^RAY_DIGEST=")
    pin = doc_line(lines, r"^sed .*cluster/Dockerfile$")
    image, _ = base_image()
    tag = image.split("@")[0]
    assert re.search(rf"imagetools inspect {re.escape(tag)}\b", lookup), f"the documented lookup should name {tag}: {lookup}"
    copy = tmp_path / "cluster" / "Dockerfile"
    copy.parent.mkdir()
    shutil.copy(DOCKERFILE, copy)
    original = copy.read_text(encoding="utf-8").splitlines()
    for digest in ("sha256:" + "ab" * 32, "sha256:" + "cd" * 32):
        r = run_sh(pin, {"RAY_DIGEST": digest}, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        changed = copy.read_text(encoding="utf-8").splitlines()
        assert len(changed) == len(original)
        diff = [(a, b) for a, b in zip(original, changed) if a != b]
        assert len(diff) == 1 and diff[0][0].startswith("ARG RAY_IMAGE="), f"the sed should change the ARG line only: {diff}"
        assert diff[0][1] == f"ARG RAY_IMAGE={tag}@{digest}", diff[0][1]
    assert run_sh(guard_command(), {"RAY_IMAGE": f"{tag}@{digest}"}).returncode == 0, "the build's check refuses the pinned image"


def test_documented_image_command_pins_every_node(tmp_path):
    """The documented variables and sed, run as written on copies of the manifests, name the pushed
    image by tag and digest on every img2pose-ray line of cluster/kuberay/*.yaml and cluster/aws.yaml,
    in the form tests/test_cluster_manifests.py requires, and change nothing else."""
    lines = shell_lines(OPERATIONS)
    sed = doc_line(lines, r"^sed .*img2pose-ray.*cluster/aws\.yaml")
    image_line = doc_line(lines, r"^IMAGE=")
    tag_line = doc_line(lines, r"^TAG=")
    assert "git rev-parse --short=12 HEAD" in tag_line, tag_line
    for name in set(re.findall(r"\$\{?([A-Z_]+)", sed)):
        doc_line(lines, rf"^{name}=")  # every variable the sed uses is set by a documented line
    originals = sorted(KUBERAY.glob("*.yaml")) + [AWS]
    for src in originals:
        dest = tmp_path / src.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
    before = {src: file_images(src) for src in originals}
    assert sum(1 for images in before.values() for i in images if "img2pose-ray" in i) >= 4, before

    for registry in (None, "ACCOUNT_ID.dkr.ecr.us-east-1.amazonaws.com/img2pose-ray"):
        digest = "sha256:" + uuid.uuid4().hex + uuid.uuid4().hex
        script = "\n".join([
            "set -e", f"cd {shlex.quote(str(ROOT))}", image_line, f"IMAGE={registry}" if registry else ":", tag_line,
            f"DIGEST={digest}", f"cd {shlex.quote(str(tmp_path))}", sed, 'printf "%s" "$IMAGE:$TAG@$DIGEST"',
        ])  # fmt: skip
        r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        expected = r.stdout
        assert re.fullmatch(r"\S+/img2pose-ray:[0-9a-f]{12}@" + re.escape(digest), expected), expected
        assert MANIFEST_IMAGE.fullmatch(expected), expected
        for src in originals:
            dest = tmp_path / src.relative_to(ROOT)
            after = file_images(dest)
            assert len(after) == len(before[src]), f"{dest.name}: image lines lost"
            for old, new in zip(before[src], after):
                assert new == (expected if "img2pose-ray" in old else old), f"{dest.name}: {old} -> {new}"
            # Only image lines change.
            old_lines, new_lines = src.read_text(encoding="utf-8").splitlines(), dest.read_text(encoding="utf-8").splitlines()
            assert len(old_lines) == len(new_lines)
            for a, b in zip(old_lines, new_lines):
                assert a == b or (re.match(r"\s*(- )?image: ", a) and "img2pose-ray" in a), f"{dest.name}: {a!r} -> {b!r}"
        assert load_aws_image(tmp_path / "cluster" / "aws.yaml") == expected


def load_aws_image(path: Path) -> str:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)["docker"]["image"]


# --------------------------------------------------------------------------- layers and the locks


def test_dependencies_are_installed_before_the_project_is_copied():
    """Each lock is copied and installed in a layer of its own before any of the project's files is
    copied: a change to the code alone then reuses the dependency layers."""
    instructions = dockerfile_instructions()
    code_copies = [i for i, (word, arg) in enumerate(instructions) if word == "COPY" and set(copy_sources(arg)) & PROJECT_SOURCES]
    assert code_copies, "the Dockerfile copies none of the project's files"
    first_code = code_copies[0]
    for lock in LOCKS:
        name = lock.relative_to(ROOT).as_posix()
        copies = [i for i, (word, arg) in enumerate(instructions) if word == "COPY" and name in copy_sources(arg)]
        install = re.compile(rf"pip install\b[^;&|]*-r \S*/{re.escape(lock.name)}\b")
        installs = [i for i, (word, arg) in enumerate(instructions) if word == "RUN" and install.search(arg)]
        assert copies and installs, f"the Dockerfile should COPY {name} and pip install -r it"
        assert copies[0] < installs[0] < first_code, f"{name}: copied and installed before the project's code"
    for i, (word, arg) in enumerate(instructions[:first_code]):
        if word == "COPY":
            sources = copy_sources(arg)
            assert all(src.startswith("cluster/requirements") for src in sources), f"COPY {arg}: only the locks come first"
    assert TORCH_LOCK.name in " ".join(arg for word, arg in instructions[: first_code] if word == "RUN")


def test_the_project_is_installed_without_dependencies():
    instructions = dockerfile_instructions()
    code_copies = [i for i, (word, arg) in enumerate(instructions) if word == "COPY" and set(copy_sources(arg)) & PROJECT_SOURCES]
    installs = [(i, arg) for i, (word, arg) in enumerate(instructions)
                if word == "RUN" and re.search(r"pip install[^&]*\s/app\b", arg)]  # fmt: skip
    assert len(installs) == 1, "the Dockerfile should pip install the project from /app once"
    index, arg = installs[0]
    assert "--no-deps" in arg.split("&&")[0], f"RUN {arg}: the dependencies are in the layers below (--no-deps)"
    assert index > max(code_copies), "the project is installed after all of its files are copied"


def test_dockerfile_installs_the_pinned_torch_and_the_project():
    runs = " ".join(arg for word, arg in dockerfile_instructions() if word == "RUN")
    for package in ("torch", "torchvision"):
        found = re.findall(rf"(?<![\w-]){package}==([\w.+]+)", runs)
        assert found and set(found) == {pinned(package)}, f"Dockerfile pins {package} {found}, pyproject {pinned(package)}"
    assert re.search(r"pip install[^&]*\s/app\b", runs), "the Dockerfile should pip install the project from /app"


def test_locks_hold_pyprojects_pins():
    """Every [project] dependency of pyproject.toml is in one lock with the same version."""
    locks = {path: read_lock(path) for path in LOCKS}
    for dep in pyproject()["project"]["dependencies"]:
        req = Requirement(dep)
        (version,) = [str(s.version) for s in req.specifier if s.operator == "=="] or [None]
        assert version, f"pyproject.toml: {dep} is not an exact pin"
        name = canonicalize_name(req.name)
        holders = [path.name for path, lock in locks.items() if name in lock]
        assert len(holders) == 1, f"{name}: in {holders or 'no lock'}, expected exactly one of {[p.name for p in LOCKS]}"
        lock = locks[TORCH_LOCK if holders[0] == TORCH_LOCK.name else REST_LOCK]
        assert lock[name] == version, f"{holders[0]} pins {name}=={lock[name]}, pyproject.toml {version}"


def test_locks_are_split_by_cuda():
    """The torch lock holds torch, torchvision and their CUDA wheels and nothing else; the other lock
    holds none of them (a build with another torch index then gets no CUDA 13 wheel from it)."""
    torch_lock, rest = read_lock(TORCH_LOCK), read_lock(REST_LOCK)
    assert not set(torch_lock) & set(rest), f"in both locks: {sorted(set(torch_lock) & set(rest))}"
    assert {"torch", "torchvision"} <= set(torch_lock)
    assert all(CUDA_BUILD.fullmatch(name) for name in torch_lock), [n for n in torch_lock if not CUDA_BUILD.fullmatch(n)]
    assert not [name for name in rest if CUDA_BUILD.fullmatch(name)], [n for n in rest if CUDA_BUILD.fullmatch(n)]


def test_locks_are_closed():
    """From pyproject's dependencies (with their extras), every requirement of every locked package
    (environment markers evaluated for the image: Linux x86_64, CPython 3.11) is in the locks at a
    version that satisfies it, and requirements.txt never needs the torch lock. Requirements are read
    from the installed metadata of the test environment, which must hold every locked package at its
    locked version: the tests then test what the image runs, and a drift between the two fails here
    (tests/test_cli_errors.py shows that it does)."""
    check_locks(read_lock(TORCH_LOCK), read_lock(REST_LOCK))


def check_locks(torch_lock: dict[str, str], rest: dict[str, str]) -> None:
    """The assertions of :func:`test_locks_are_closed` on the locks ``torch_lock`` and ``rest``."""
    locked = {**torch_lock, **rest}
    wanted: dict[str, set[str]] = {}
    problems, drifted = [], set()
    queue = [("pyproject.toml", Requirement(dep)) for dep in pyproject()["project"]["dependencies"]]
    while queue:
        parent, req = queue.pop()
        name = canonicalize_name(req.name)
        if name not in locked:
            problems.append(f"{parent} needs {req}: not in the locks")
            continue
        if not req.specifier.contains(locked[name], prereleases=True):
            problems.append(f"{parent} needs {req}: the lock has {locked[name]}")
        if parent in rest and name in torch_lock:
            problems.append(f"{parent} (requirements.txt) needs {name} of the torch lock")
        extras = {canonicalize_name(e) for e in req.extras}
        if name in wanted and extras <= wanted[name]:
            continue
        wanted[name] = wanted.get(name, set()) | extras
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            drifted.add(f"{name} (not installed, locked {locked[name]})")
            continue
        if Version(dist.version) != Version(locked[name]):
            drifted.add(f"{name} (installed {dist.version}, locked {locked[name]})")
            continue
        for spec in dist.requires or []:
            dep = Requirement(spec)
            if dep.marker is None or any(dep.marker.evaluate({**IMAGE_MARKERS, "extra": e}) for e in wanted[name] | {""}):
                queue.append((name, dep))
    assert not problems, "the locks are not closed:\n  " + "\n  ".join(sorted(set(problems)))
    pins = {canonicalize_name(Requirement(d).name) for d in pyproject()["project"]["dependencies"]}
    not_from_pyproject = sorted(u for u in drifted if u.split()[0] in pins)
    assert not not_from_pyproject, f"the test environment is not installed from pyproject.toml: {not_from_pyproject}"
    assert not drifted, (
        f"the test environment and the image's locks name other versions: {sorted(drifted)}; regenerate the locks "
        "(docs/operations.md, 'The image') or install the locked versions (pip install -c cluster/requirements.txt ...)"
    )
    assert set(wanted) == set(locked), f"locked but needed by nothing: {sorted(set(locked) - set(wanted))}"


# --------------------------------------------------------------------------- the rest of the image


def test_the_image_gives_the_container_the_gpus():
    """Ray's cluster launcher runs the containers with --runtime=nvidia and no --gpus: the NVIDIA
    container toolkit then exposes what NVIDIA_VISIBLE_DEVICES names, which Ray's CPU image (unlike
    NVIDIA's CUDA images) does not set."""
    env = {}
    for word, arg in dockerfile_instructions():
        if word == "ENV":
            env.update(token.split("=", 1) for token in shlex.split(arg) if "=" in token)
    assert env.get("NVIDIA_VISIBLE_DEVICES") == "all", env
    assert {"compute", "utility"} <= set(env.get("NVIDIA_DRIVER_CAPABILITIES", "").split(",")), env


def test_the_build_context_holds_what_the_dockerfile_copies():
    """The allowlist of cluster/Dockerfile.dockerignore re-includes every COPY source by its literal path."""
    patterns = [line.strip() for line in (CLUSTER / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    assert patterns[0] == "*", "an allowlist: exclude everything first"
    for word, arg in dockerfile_instructions():
        if word == "COPY":
            for src in copy_sources(arg):
                assert f"!{src}" in patterns, f"COPY {src}: not let in by cluster/Dockerfile.dockerignore"


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


# --------------------------------------------------------------------------- a real build


def _docker_engine() -> str | None:
    """None when a Docker engine answers, else why not."""
    if shutil.which("docker") is None:
        return "no docker command"
    try:
        r = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "docker info did not answer in 60 s"
    if r.returncode != 0 or not r.stdout.strip():
        return "docker info failed: " + (r.stderr.strip().splitlines() or ["no output"])[-1]
    return None


def _docker(*args: str, cwd: Path | None = None, timeout: int = 3000) -> subprocess.CompletedProcess:
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    return subprocess.run(["docker", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _cached_steps(build_log: str) -> tuple[dict[str, str], set[str]]:
    """BuildKit's plain progress: {step id: instruction} and the ids reported CACHED."""
    steps = dict(re.findall(r"^#(\d+) \[[^\]]*\] (.+)$", build_log, flags=re.M))
    cached = set(re.findall(r"^#(\d+) CACHED$", build_log, flags=re.M))
    return steps, cached


@pytest.mark.timeout(3600)
def test_image_builds_runs_and_reuses_the_dependency_layers(tmp_path):
    """Builds the image (downloads Ray's image and several GB of wheels), runs its default command,
    then rebuilds after a change under jobs/ only: the dependency layers must come from the cache."""
    why_not = _docker_engine()
    if why_not:
        pytest.skip(f"needs a Docker engine to build cluster/Dockerfile ({why_not})")
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, context / name)
    for name in ("img2pose_core", "jobs", "examples", "cluster"):
        shutil.copytree(ROOT / name, context / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    image, _ = base_image()
    tag = image.split("@")[0]

    def build(ray_image: str, *tag_args: str) -> subprocess.CompletedProcess:
        args = ["build", "-f", "cluster/Dockerfile", "--progress=plain", "--build-arg", f"RAY_IMAGE={ray_image}"]
        return _docker(*args, *(["-t", tag_args[0]] if tag_args else []), ".", cwd=context)

    if DIGEST.search(image):
        ray_image = image
    else:  # the digest is not in the Dockerfile yet: look it up the documented way's equivalent
        pulled = _docker("pull", tag)
        assert pulled.returncode == 0, pulled.stderr[-2000:]
        repo_digest = _docker("image", "inspect", "--format", "{{index .RepoDigests 0}}", tag).stdout.strip()
        ray_image = tag + "@" + repo_digest.split("@")[1]
        refused = build(tag)
        assert refused.returncode != 0 and "not pinned by digest" in refused.stderr, refused.stderr[-2000:]
    name = f"img2pose-ray-test-{uuid.uuid4().hex[:12]}"
    try:
        first = build(ray_image, f"{name}:1")
        assert first.returncode == 0, first.stderr[-4000:]
        run = _docker("run", "--rm", f"{name}:1", timeout=300)
        assert run.returncode == 0 and "usage:" in run.stdout and "--input" in run.stdout, (run.stdout + run.stderr)[-2000:]
        check = "import os, torch; assert not os.path.exists('/usr/local/cuda'); print(torch.version.cuda)"
        one_cuda = _docker("run", "--rm", f"{name}:1", "python", "-c", check, timeout=300)
        assert one_cuda.returncode == 0 and one_cuda.stdout.strip().startswith("13."), (one_cuda.stdout + one_cuda.stderr)[-2000:]

        with open(context / "jobs" / "annotate.py", "a", encoding="utf-8") as fh:
            fh.write("\n# a change to the code only\n")
        second = build(ray_image, f"{name}:2")
        assert second.returncode == 0, second.stderr[-4000:]
        steps, cached = _cached_steps(second.stderr)
        deps = [i for i, text in steps.items() if text.startswith("RUN") and "requirements" in text]
        assert len(deps) == 2, f"two dependency RUN steps expected: {steps}"
        rebuilt = [steps[i] for i in deps if i not in cached]
        assert not rebuilt, f"dependency layers rebuilt after a change under jobs/: {rebuilt}"
        project = [i for i, text in steps.items() if text.startswith("RUN") and "/app" in text and "--no-deps" in text]
        assert project and not set(project) & cached, "the project's layer should be rebuilt after a change under jobs/"
    finally:
        _docker("image", "rm", "-f", f"{name}:1", f"{name}:2", timeout=300)
