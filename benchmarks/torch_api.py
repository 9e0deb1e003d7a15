"""Which torch and torchvision names ``img2pose_core`` uses, so that an older torch can be checked for them.

The device machine runs its own torch 2.11 / torchvision 0.26, older than the 2.14 / 0.29 this project
pins. :func:`used_names` reads the core's source (no import) and lists every ``torch...`` and
``torchvision...`` name it reaches: through ``import torch``, ``import torch.nn.functional as F``,
``from torchvision.ops import nms`` and attribute chains on those (``torch.cuda.Stream``,
``F.interpolate``). ``benchmarks/torch_api.txt`` is that list as checked on the oldest supported torch
(``benchmarks/gpu_check.py`` resolves each name there); a test fails when the core starts using a name
the list does not have, so that the next device run checks it.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API_LIST = Path(__file__).with_name("torch_api.txt")
_ROOTS = ("torch", "torchvision")

__all__ = ["used_names", "listed_names", "missing_names"]


def _dotted(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def used_names(package: Path = ROOT / "img2pose_core") -> set[str]:
    """Every torch/torchvision name the package's modules reach, as dotted paths."""
    names: set[str] = set()
    for path in sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] in _ROOTS:
                        aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                        names.add(a.name)
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in _ROOTS:
                for a in node.names:
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                    names.add(f"{node.module}.{a.name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and not isinstance(getattr(node, "ctx", None), ast.Store):
                chain = _dotted(node)
                if chain and chain[0] in aliases:
                    names.add(".".join([aliases[chain[0]], *chain[1:]]))
    # A chain's prefixes are names too (torch.cuda.Stream needs torch.cuda); keep the longest only.
    return {n for n in names if not any(m.startswith(n + ".") for m in names)}


def listed_names() -> set[str]:
    """The names of ``benchmarks/torch_api.txt``."""
    return {line.strip() for line in API_LIST.read_text().splitlines() if line.strip() and not line.startswith("#")}


def missing_names(names: set[str]) -> list[str]:
    """The names that this process's torch/torchvision do not have (resolved by import and getattr)."""
    missing = []
    for name in sorted(names):
        parts = name.split(".")
        obj = None
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                obj = None
            break
        if obj is None:
            missing.append(name)
    return missing


if __name__ == "__main__":
    for n in sorted(used_names()):
        print(n)
