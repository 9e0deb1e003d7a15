"""Training checkpoints: each a folder with a bundle of the weights in the authors' released layout (so
any checkpoint is a model the job can run), the optimiser state to resume from, and ``progress.json``;
and finding the latest one of a run to resume."""

from __future__ import annotations

import json
from pathlib import Path

from img2pose_core.storage import StorageConfig
from img2pose_core.uris import join_uri

__all__ = ["STATE_NAME", "WEIGHTS_NAME", "save_checkpoint", "latest_checkpoint"]

STATE_NAME = "train_state.pt"
WEIGHTS_NAME = "img2pose.pth"


def _state_dict_released(model) -> dict:
    """The released layout: ``module.``-prefixed keys (as the authors' DataParallel checkpoints)."""
    return {"module." + k: v.detach().cpu() for k, v in model.state_dict().items()}


def save_checkpoint(folder: Path, model, extra: dict, cfg: dict) -> None:
    """Write the checkpoint of ``model`` at ``extra["step"]`` into ``folder`` (local; the caller uploads it)."""
    import shutil

    import torch

    from img2pose_core.bundle import create_bundle

    work = folder / "files"
    work.mkdir(parents=True, exist_ok=True)
    torch.save({"fpn_model": _state_dict_released(model)}, work / WEIGHTS_NAME)
    for name in ("pose_mean.npy", "pose_stddev.npy", "reference_3d_68_points_trans.npy", "reference_3d_5_points_trans.npy"):
        shutil.copy(cfg["arrays"][name], work / name)
    create_bundle(work / WEIGHTS_NAME, work / "pose_mean.npy", work / "pose_stddev.npy",
                  work / "reference_3d_68_points_trans.npy", work / "reference_3d_5_points_trans.npy", folder / "bundle",
                  name=f"{cfg['name']}-step{extra['step']}", source={"training_run": cfg["name"]})
    shutil.rmtree(work)
    torch.save(extra, folder / STATE_NAME)
    progress: dict[str, object] = {k: v for k, v in extra.items() if isinstance(v, (int, float, str))}
    progress["step_losses"] = [float(v) for v in extra.get("step_losses", [])]  # this epoch's, in step order
    (folder / "progress.json").write_text(json.dumps(progress))


def latest_checkpoint(output: str, name: str) -> str | None:
    """The checkpoint folder under ``output/name`` with the highest step (None if there is none).

    A local folder comes back as a plain path, a remote one as a URL.
    """
    storage = StorageConfig.from_args(None)
    root = join_uri(output, name)
    if not storage.exists(root):
        return None
    best, best_step = None, -1
    for uri in storage.glob(join_uri(root, "**", "progress.json")):
        try:
            step = json.loads(storage.read_bytes(uri))["step"]
        except (ValueError, KeyError, OSError):
            continue
        if step > best_step:
            best, best_step = uri.rsplit("/", 1)[0], step
    return best
