"""Where and in what precision the network runs, and how image batches get to its device.

On CUDA, batches are copied from pinned memory on a stream of their own, so that the copy of the next
batch overlaps the compute of the current one; the compute stream waits on the copy's event, the host
never does.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor

__all__ = ["PRECISIONS", "Upload", "resolve_device", "resolve_precision", "autocast", "DeviceCopies"]

PRECISIONS = ("fp32", "bf16", "fp16")

# Images on the device, and the CUDA event that marks the end of their copies (None off CUDA).
Upload = tuple[list[Tensor], Any]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; an explicit CUDA request without a GPU is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu or auto")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """The network's precision on ``device``: ``precision`` (one of :data:`PRECISIONS`) on CUDA, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be fp32, bf16 or fp16, not {precision!r}")
    if precision != "fp32" and device.type != "cuda":
        return "fp32"  # CPU autocast is slower than fp32 for this network
    return precision


def autocast(precision: str) -> contextlib.AbstractContextManager:
    """The context the network runs in: CUDA autocast to bf16 or fp16, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class DeviceCopies:
    """Host-to-device copies of image batches (the CUDA copy stream is made on first use)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._stream: Any = None

    @torch.inference_mode()
    def upload(self, images: list[Tensor]) -> Upload:
        """Images on the device. On CUDA: from pinned memory, non-blocking, on the copy stream, with
        the event that marks the end of the copies (the compute stream waits on it, not the host)."""
        if self.device.type != "cuda":
            return [img.to(self.device) for img in images], None
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(self._stream):
            on_device = [img if img.is_cuda else img.pin_memory().to(self.device, non_blocking=True) for img in images]
            done = torch.cuda.Event()
            done.record(self._stream)
        return on_device, done

    def ready(self, upload: Upload) -> list[Tensor]:
        """The uploaded images, once the current (compute) stream has been made to wait for their copies."""
        images, copied = upload
        if copied is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(copied)
            for img in images:
                img.record_stream(compute)  # allocated on the copy stream, used on this one
        return images
