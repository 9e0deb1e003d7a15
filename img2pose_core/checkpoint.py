"""Reading img2pose weights safely, in any of the layouts they are published in.

Accepted: the released ``{"fpn_model": state_dict}`` saved from DataParallel (``module.`` prefix,
pre-2022 torchvision FPN/RPN key names), a plain state dict (``.pth``/``.pt``), and safetensors
(the Hugging Face copy). Pickles are read with ``weights_only=True``: a checkpoint that carries code
is refused, never executed.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["CheckpointError", "read_state_dict", "canonical_state_dict", "load_weights"]


class CheckpointError(ValueError):
    """A weights file that cannot be used; the message names the file and the problem."""


# Pre-2022 torchvision names → current names (FPN blocks and the RPN head's conv became
# Conv2dNormActivation wrappers).
_RENAMES = [
    (re.compile(r"^backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d+)\.(weight|bias)$"), r"backbone.fpn.\1.\2.0.\3"),
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
]


def read_state_dict(path: str | Path) -> "OrderedDict[str, Tensor]":
    """The raw tensors of a weights file (``.safetensors`` or a torch pickle), unwrapped from ``fpn_model``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return OrderedDict(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... by case
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Weights only load failed" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path}: refused: the file holds pickled code or objects other than tensors "
                f"(only weights-only checkpoints are loaded). {text}"
            ) from exc
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({text})") from exc
    if isinstance(obj, dict) and "fpn_model" in obj:
        obj = obj["fpn_model"]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (or {{'fpn_model': state_dict}})")
    return OrderedDict(obj)


def canonical_state_dict(state: dict[str, Tensor]) -> "OrderedDict[str, Tensor]":
    """Keys as the current model names them: no ``module.`` prefix, current FPN/RPN names."""
    out: OrderedDict[str, Tensor] = OrderedDict()
    for key, value in state.items():
        if key.startswith("module."):
            key = key[len("module.") :]
        for pattern, repl in _RENAMES:
            key = pattern.sub(repl, key)
        if key.endswith("num_batches_tracked") and key.startswith("backbone.body."):
            continue  # frozen batch norm keeps no counter
        out[key] = value
    return out


def load_weights(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Load ``state`` into ``model`` strictly; a mismatch names ``source`` and the offending keys."""
    canonical = canonical_state_dict(state)
    expected = model.state_dict()
    missing = [k for k in expected if k not in canonical]
    unexpected = [k for k in canonical if k not in expected]
    wrong = [
        f"{k}: file {tuple(canonical[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in canonical and tuple(canonical[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_sample(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_sample(unexpected)})")
    if wrong:
        problems.append(f"{len(wrong)} tensors of the wrong shape ({_sample(wrong)})")
    if problems:
        raise CheckpointError(
            f"{source}: not img2pose ResNet-18 FPN weights: " + "; ".join(problems)
        )
    model.load_state_dict(canonical, strict=True)


def _sample(items: list[str], n: int = 3) -> str:
    head = ", ".join(items[:n])
    return head + (f", ... {len(items) - n} more" if len(items) > n else "")
