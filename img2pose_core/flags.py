"""The flags every command shares: one definition and one validation of each model flag, and the help
formatter of every command line.

``add_model_flags`` gives ``img2pose predict``, ``img2pose render``, ``jobs/annotate.py`` and
``jobs/evaluate.py`` the same ``--bundle``, ``--min-size``, ``--max-size``, ``--threshold``,
``--max-faces``, ``--rpn-*``, ``--precision`` and ``--device``. One rule holds for each of them: the
bundle's stored value (``bundle.json``, ``model``) unless the flag is given (``resolve_model_flags``).

Standard library only: every ``--help`` builds its parser from here and must answer at once.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "COMMON",
    "MODEL_FLAGS",
    "THRESHOLD_RULE",
    "HelpFormatter",
    "RawDescriptionHelpFormatter",
    "add_model_flags",
    "finite_number",
    "model_flag_error",
    "non_negative_int",
    "positive_int",
    "resolve_model_flags",
    "threshold",
]


# --- argparse types ---------------------------------------------------------------------------------
def _int_at_least(text: str, minimum: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An argparse type: 0 or a positive integer."""
    return _int_at_least(text, 0, "0 or a positive integer")


def finite_number(unit: str, zero_allowed: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number of ``unit``, positive (or 0 where allowed); NaN and infinity refused."""
    expected = f"0 or a positive number of {unit}" if zero_allowed else f"a positive number of {unit}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of {unit}, got {text!r}") from None
        if not (value >= 0 if zero_allowed else value > 0) or value == math.inf:  # NaN fails both tests
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def threshold(text: str) -> float:
    """An argparse type: a face score threshold, in [0, 1) (a face scores at most 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"threshold must be in [0, 1), got {text}")
    return value


# --- the model flags --------------------------------------------------------------------------------
_BUNDLE_HELP = (
    "model bundle: folder or URL (default: $IMG2POSE_BUNDLE, else the official bundle in the cache, fetched "
    "on first use)"
)
THRESHOLD_RULE = (
    "default: the threshold stored in the bundle: 0.8 unless it was created with another --threshold; "
    "bundles created before 0.8 was the default store 0.0"
)

# flag name -> (add_argument keywords, help). A default of None means: the bundle's value.
MODEL_FLAGS: dict[str, tuple[dict[str, Any], str]] = {
    "bundle": ({"default": None}, _BUNDLE_HELP),
    "min_size": ({"type": positive_int, "default": None}, "short side after resize (default: the bundle's)"),
    "max_size": ({"type": positive_int, "default": None}, "cap of the long side after resize (default: the bundle's)"),
    "threshold": ({"type": threshold, "default": None}, f"keep faces scoring above this, in [0, 1) ({THRESHOLD_RULE})"),
    "max_faces": (
        {"type": positive_int, "default": None},
        "keep at most this many faces per image, the highest scores (default: the bundle's; none: no cap)",
    ),
    "rpn_pre_nms_top_n": (
        {"type": positive_int, "default": None},
        "RPN proposals per level before NMS (default: the bundle's)",
    ),
    "rpn_post_nms_top_n": (
        {"type": positive_int, "default": None},
        "RPN proposals per image after NMS (default: the bundle's)",
    ),
    "precision": ({"choices": ["fp32", "bf16", "fp16"], "default": "fp32"}, "autocast on CUDA (CPU runs fp32)"),
    "device": ({"default": "auto"}, "cpu, cuda, cuda:N, or auto: cuda when there is one"),
}
# The model flags of every command that runs the model.
COMMON = ("bundle", "min_size", "max_size", "threshold", "max_faces")


def add_model_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    names: Iterable[str] = COMMON,
    *,
    scope: str = "",
    help: Mapping[str, str] | None = None,
) -> None:
    """Add the model flags ``names`` (keys of ``MODEL_FLAGS``) to ``parser``, in that order.

    ``scope`` prefixes every help text (e.g. ``"IMAGE mode: "``); ``help`` replaces a flag's text
    where a command gives it another meaning (evaluate's protocol thresholds).
    """
    for name in names:
        keywords, text = MODEL_FLAGS[name]
        text = (help or {}).get(name, text)
        parser.add_argument(f"--{name.replace('_', '-')}", **keywords, help=scope + text)


def model_flag_error(args: Any) -> str | None:
    """The cross-check of the model flags (parsed flags, or ModelSettings): a message when they contradict."""
    low, high = getattr(args, "min_size", None), getattr(args, "max_size", None)
    if low is not None and high is not None and high < low:
        return f"--max-size {high} is below --min-size {low}"
    return None


def resolve_model_flags(args: object, stored: Any) -> dict[str, Any]:
    """The settings a command runs with: each model flag's value where given, else the bundle's (``stored``:
    its :class:`~img2pose_core.settings.ModelSettings`). ``args``: parsed flags (an ``argparse.Namespace``)
    or anything with them as attributes (the job's ``JobConfig``); a missing one is not given."""
    out = {}
    for name in ("min_size", "max_size", "threshold", "max_faces", "rpn_pre_nms_top_n", "rpn_post_nms_top_n"):
        given = getattr(args, name, None)
        out[name] = given if given is not None else getattr(stored, name)
    return out


# --- help -------------------------------------------------------------------------------------------
class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to a flag's help where X tells something: a default that is not None,
    False or empty, of a flag that is not required, whose help does not state its default already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        positional = not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)
        if (
            positional
            or action.required
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or (isinstance(default, (str, list, tuple, dict)) and not default)
            or "default" in text.lower()
        ):
            return text
        return f"{text} (default: %(default)s)"


class RawDescriptionHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """:class:`HelpFormatter` that prints the description as written (the jobs' module docstrings)."""
