"""Train img2pose with Ray Train (DDP, one worker per GPU) on Parquet shards from jobs/prepare_dataset.py.

    python -m jobs.train --data s3://bucket/wider/ --output s3://bucket/runs/ --name wider-v1 \
        --init-bundle BUNDLE_OR_NONE --workers 8 --gpu

Every epoch: training over ``DATA/train`` (2 images per worker, random min size, flips and crops), then the
validation loss over ``DATA/val`` with the model in train mode as the original (``--val-mode eval``: eval
mode); reduce-on-plateau (factor 0.1, patience 3) and
early stopping (patience 5) on it. Each checkpoint is a model bundle (``img2pose.pth`` in the released layout
``{"fpn_model": state_dict with "module."}``, the pose statistics of ``DATA``, the reference points,
``bundle.json``) plus ``train_state.pt`` (optimizer, scheduler, epoch, step): ``python -m jobs.annotate
--bundle CHECKPOINT`` uses it as it is. A re-run with the same ``--output``/``--name`` resumes from the latest checkpoint.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from img2pose_core.cli.parser import CommandParser
from img2pose_core.flags import RawDescriptionHelpFormatter, positive_int
from img2pose_core.storage import StorageConfig
from img2pose_core.uris import is_url, join_uri

from .train_checkpoints import STATE_NAME, WEIGHTS_NAME, latest_checkpoint, save_checkpoint



def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    """The script's flags (sizes validated as the other commands' model flags)."""
    p = CommandParser(prog=prog, description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="output of prepare_dataset.py (train/, val/, pose_mean.npy, pose_stddev.npy)")
    p.add_argument("--output", required=True, help="storage for checkpoints (local folder or s3://...)")
    p.add_argument("--name", default="img2pose", help="run name (a folder under --output)")
    p.add_argument("--init-bundle", default=None, help="start from this bundle's weights (fine-tuning); default random init")
    p.add_argument(
        "--backbone-weights", default="imagenet", metavar="imagenet|none|PATH",
        help="initial ResNet-18 weights when not fine-tuning: torchvision's ImageNet weights (downloaded once; "
        "$IMG2POSE_IMAGENET_URL for a mirror), none (random), or a local torchvision ResNet-18 state dict",
    )  # fmt: skip
    p.add_argument("--trainable-layers", type=int, default=3, choices=range(6), metavar="0-5",
                   help="ResNet stages trained, counted from layer4 (the original: 3; batch norm stays frozen)")
    p.add_argument("--points-bundle", default=None, help="bundle giving the 3D reference points (default: --init-bundle)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (NCCL)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps in total")
    p.add_argument("--batch-size", type=int, default=2, help="images per worker per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--clip", type=float, default=10.0)
    p.add_argument("--min-sizes", default="640,672,704,736,768,800", help="random short side per step")
    p.add_argument("--max-size", type=positive_int, default=1400, help="cap of the long side after resize")
    p.add_argument("--val-mode", choices=["train", "eval"], default="train",
                   help="validation loss with the model in train mode (the original) or eval mode (steadier; --val-min-size)")
    p.add_argument("--val-min-size", type=positive_int, default=None, help="short side for validation (default: the largest --min-sizes)")
    p.add_argument("--no-flip", action="store_true", help="no horizontal flips (the original flips half the images)")
    p.add_argument("--no-crop", action="store_true", help="no random crops (the original crops: scale 0.7-1, top edge kept)")
    p.add_argument(
        "--flip-pose", choices=["refit", "mirror"], default="refit",
        help="pose of a flipped face: refit by EPnP from the mirrored landmarks (the original), or the stored pose "
        "mirrored analytically (exact; then no crop)",
    )  # fmt: skip
    p.add_argument("--rois-per-image", type=int, default=512)
    p.add_argument("--rpn-train-top-n", type=int, default=2000, help="RPN proposals kept after NMS in training (the original: 2000)")
    p.add_argument("--rpn-train-pre-nms-top-n", type=int, default=6000, help="RPN proposals per level before NMS in training (the original: 6000)")
    p.add_argument("--plateau-patience", type=int, default=3)
    p.add_argument("--early-stop-patience", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10, help="print the mean training loss every N steps (0: never)")
    return p


# --- Worker side -----------------------------------------------------------------------------------
class _Draws:
    """numpy's generator behind Python's ``random`` API, as :func:`img2pose_core.augmentation.random_crop` draws."""

    def __init__(self, rng) -> None:
        self.rng = rng

    def uniform(self, a: float, b: float) -> float:
        return float(self.rng.uniform(a, b))

    def randint(self, a: int, b: int) -> int:
        return int(self.rng.integers(a, b + 1))


def _rows_to_batch(rows: list[dict], flip: bool, rng, crop: bool = False, points=None, flip_pose: str = "refit"):
    """Images and targets of prepared rows, as the original's loaders make them.

    Without augmentation the stored labels are the targets. With ``flip`` (half the images) and ``crop``
    (:mod:`img2pose_core.augmentation`, flip first) the boxes and landmarks move with the pixels and
    every pose is fitted again from the moved landmarks (``points``: the 68 and 5 reference points), as
    the original's augmenting loader does (for every image, flipped or not); ``flip_pose="mirror"``
    instead mirrors the stored pose analytically (exact, an option; crop then is not applied). A face
    without a pose is blacked out and is no target.
    """
    import numpy as np
    import torch
    from PIL import Image

    from img2pose_core import augmentation as A
    from img2pose_core import labels as L
    from img2pose_core.training import flip_targets

    images, targets = [], []
    for r in rows:
        with Image.open(io.BytesIO(r["image"])) as im:
            arr = np.array(im.convert("RGB"))
        has_pose = np.asarray(list(r["has_pose"]), dtype=bool).reshape(-1)
        ann = np.asarray(list(r["ann_boxes"]), dtype=np.int64).reshape(-1, 4)
        train_boxes = np.asarray(list(r["boxes"]), dtype=np.float32).reshape(-1, 4)
        dofs = np.asarray(list(r["global_pose"]), dtype=np.float32).reshape(-1, 6)
        flipped = bool(flip and rng.integers(0, 2))
        mirror = flipped and flip_pose == "mirror"
        # The original's augmenting loader fits every pose again, flipped or not.
        if (flip or crop) and flip_pose == "refit":
            lms = [np.asarray(list(l), dtype=np.float64).reshape(-1, 2) for l in r["landmarks"]]
            if flipped:
                arr = A.flip_image(arr)
                ann, lms = A.flip_faces(arr.shape[1], ann, lms)
            if crop:
                cut = A.random_crop(arr.shape[1], arr.shape[0], ann, lms, _Draws(rng))
                arr, ann, lms = A.crop_image(arr, cut.crop), cut.boxes, cut.landmarks
            h, w = arr.shape[:2]
            fl = L.face_labels(ann, lms, w, h, points[0], points[1])
            ann, has_pose = fl.boxes, fl.has_pose
            dofs = fl.pose_global.astype(np.float32)
            train_boxes = np.zeros((len(ann), 4), dtype=np.float32)
            if has_pose.any():
                train_boxes[has_pose] = L.projected_boxes(fl.pose_global[has_pose], points[0], w, h)
        # A face without a pose is no example at all, neither face nor background: its integer box is
        # blacked out (clipped to the image) and it gets no target.
        for x1, y1, x2, y2 in ann[~has_pose]:
            arr[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = 0
        img = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(255.0)
        t = {
            "boxes": torch.as_tensor(train_boxes[has_pose]),
            "dofs": torch.as_tensor(dofs[has_pose]).double(),
            "has_pose": torch.ones(int(has_pose.sum()), dtype=torch.bool),
        }
        if mirror:
            img, t = flip_targets(img, t)
        images.append(img)
        targets.append(t)
    return images, targets


def train_loop(cfg: dict) -> None:
    import numpy as np
    import ray.train
    import torch

    from img2pose_core.checkpoint import load_weights, read_state_dict
    from img2pose_core.model import Img2Pose, ModelSettings
    from img2pose_core.training import TrainingForward, TrainSettings, init_backbone

    torch.manual_seed(cfg["seed"])
    # A logger, not print(): Ray Train echoes a worker's stdout and stderr twice on the driver.
    log = logging.getLogger("img2pose.train")
    log.setLevel(logging.INFO)
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    rng = np.random.default_rng(cfg["seed"] + rank)
    arrays = cfg["arrays"]
    mean = np.load(arrays["pose_mean.npy"])
    std = np.load(arrays["pose_stddev.npy"])
    p68 = np.load(arrays["reference_3d_68_points_trans.npy"])
    p5 = np.load(arrays["reference_3d_5_points_trans.npy"])
    min_sizes = tuple(int(s) for s in cfg["min_sizes"])
    model = Img2Pose(torch.from_numpy(mean), torch.from_numpy(std), torch.from_numpy(p68),
                     ModelSettings(min_size=min_sizes[-1], max_size=cfg["max_size"]))
    if cfg.get("init_weights"):
        load_weights(model, read_state_dict(cfg["init_weights"]), cfg["init_weights"])
    # From scratch: the ImageNet ResNet-18 (fetched by the driver); always: only the last
    # `trainable_layers` of the ResNet train, batch norm frozen, as the original.
    init_backbone(model, None if cfg.get("init_weights") else cfg.get("backbone_weights"), cfg.get("trainable_layers", 3))
    # The original's training RPN: anchors with IoU >= 0.5 are faces, < 0.3 background (torchvision's
    # defaults are 0.7 / 0.3), 6000 proposals per level before NMS and 2000 after.
    from torchvision.models.detection import _utils as det_utils

    model.rpn.proposal_matcher = det_utils.Matcher(0.5, 0.3, allow_low_quality_matches=True)
    model.rpn._pre_nms_top_n["training"] = cfg.get("rpn_train_pre_nms_top_n", 6000)
    model.rpn._post_nms_top_n["training"] = cfg["rpn_train_top_n"]
    # The module the steps call: TrainingForward, wrapped by Ray (DistributedDataParallel) on several workers.
    forward: torch.nn.Module = TrainingForward(
        model, torch.from_numpy(p5), TrainSettings(batch_size_per_image=cfg["rois_per_image"])
    )
    forward = ray.train.torch.prepare_model(forward, parallel_strategy_kwargs={"find_unused_parameters": True}) \
        if ctx.get_world_size() > 1 else forward.to(ray.train.torch.get_device())
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    # The original's schedule: x0.1 after `patience` epochs without a relative improvement of 1e-3,
    # one epoch of cooldown, never below 1e-5.
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=cfg["plateau_patience"],
                                                       threshold=1e-3, cooldown=1, min_lr=1e-5)  # fmt: skip
    state = {"epoch": 0, "step": 0, "best_val": float("inf"), "bad_epochs": 0}

    ckpt = ray.train.get_checkpoint()
    resume_dir = None
    if ckpt is not None:
        resume_dir = ckpt.to_directory()
    elif cfg.get("resume_from"):
        resume_dir = cfg["resume_from"]
    if resume_dir:
        saved = torch.load(Path(resume_dir) / STATE_NAME, map_location="cpu", weights_only=False)
        load_weights(model, read_state_dict(Path(resume_dir) / "bundle" / WEIGHTS_NAME), str(resume_dir))
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        state.update({k: saved[k] for k in state})
    device = ray.train.torch.get_device()
    model.to(device)

    train_ds = ray.train.get_dataset_shard("train")
    try:
        val_ds = ray.train.get_dataset_shard("val")
    except (KeyError, ValueError):
        val_ds = None
    max_steps = cfg.get("max_steps")
    while state["epoch"] < cfg["epochs"]:
        model.train()
        model.transform.min_size = min_sizes  # GeneralizedRCNNTransform picks one at random in training
        totals: dict[str, float] = {}
        n, step_losses = 0, []
        for rows in train_ds.iter_batches(batch_size=cfg["batch_size"], batch_format="pandas"):
            images, targets = _rows_to_batch(rows.to_dict("records"), cfg["flip"], rng, crop=cfg["crop"],
                                             points=(p68, p5), flip_pose=cfg["flip_pose"])  # fmt: skip
            images = [i.to(device) for i in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            losses = forward(images, targets)
            loss = sum(losses.values())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg["clip"])
            opt.step()
            state["step"] += 1
            n += 1
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach())
            totals["loss"] = totals.get("loss", 0.0) + float(loss.detach())
            step_losses.append(float(loss.detach()))
            if rank == 0 and cfg.get("log_every") and state["step"] % cfg["log_every"] == 0:
                recent = step_losses[-cfg["log_every"]:]
                log.info("train.py: epoch %d step %d: loss %.4f (mean of the last %d steps)", state["epoch"] + 1,
                         state["step"], sum(recent) / len(recent), len(recent))
            if max_steps and state["step"] >= max_steps:
                break
        if cfg.get("val_mode", "train") == "train":
            # As the original: the validation loss in train mode (random min size, the training RPN
            # top-n, the pose head's batch norm on batch statistics, which validation also updates).
            model.train()
            model.transform.min_size = min_sizes
        else:  # --val-mode eval: frozen statistics, the largest min size
            model.eval()
            model.transform.min_size = (cfg["val_min_size"],)
        vtot, vn = 0.0, 0
        with torch.no_grad():
            if val_ds is not None:
                for rows in val_ds.iter_batches(batch_size=cfg["batch_size"], batch_format="pandas"):
                    images, targets = _rows_to_batch(rows.to_dict("records"), False, rng)
                    vl = forward([i.to(device) for i in images], [{k: v.to(device) for k, v in t.items()} for t in targets])
                    vtot += float(sum(vl.values()))
                    vn += 1
        val_loss = vtot / max(vn, 1) if vn else totals.get("loss", 0.0) / max(n, 1)
        if ctx.get_world_size() > 1:
            t = torch.tensor([val_loss], device=device)
            torch.distributed.all_reduce(t)
            val_loss = float(t) / ctx.get_world_size()
        sched.step(val_loss)
        if val_loss < state["best_val"]:
            state["best_val"], state["bad_epochs"] = val_loss, 0
        else:
            state["bad_epochs"] += 1
        state["epoch"] += 1
        metrics = {"step": state["step"], "epoch": state["epoch"], "val_loss": val_loss,
                   "train_loss": totals.get("loss", 0.0) / max(n, 1), "lr": opt.param_groups[0]["lr"],
                   **{f"train_{k}": v / max(n, 1) for k, v in totals.items() if k != "loss"}}
        stop = state["bad_epochs"] >= cfg["early_stop_patience"] or bool(max_steps and state["step"] >= max_steps)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                extra = {**state, **metrics, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "step_losses": step_losses}
                save_checkpoint(Path(tmp), model, extra, cfg)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        if stop:
            break


# --- Driver side -----------------------------------------------------------------------------------
def _local_arrays(args, work: Path) -> tuple[dict[str, str], str | None]:
    """Pose statistics of the data and the reference points, copied to local files for the workers; and the
    weights of ``--init-bundle`` (None without it)."""
    import numpy as np

    from img2pose_core.bundle import open_bundle

    storage = StorageConfig.from_args(None)
    out = {}
    for name in ("pose_mean.npy", "pose_stddev.npy"):
        (work / name).write_bytes(storage.read_bytes(join_uri(args.data, name)))
        out[name] = str(work / name)
    source = args.points_bundle or args.init_bundle
    if source is None:
        raise SystemExit("train.py: give --points-bundle (or --init-bundle) for the 3D reference points")
    b = open_bundle(source)
    for name, arr in (("reference_3d_68_points_trans.npy", b.points_68), ("reference_3d_5_points_trans.npy", b.points_5)):
        np.save(work / name, arr)
        out[name] = str(work / name)
    return out, (str(b.weights_path) if args.init_bundle else None)


def main(argv: list[str] | None = None, prog: str = "train.py") -> int:
    args = build_parser(prog).parse_args(argv)
    import ray
    import ray.data
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    work = Path(tempfile.mkdtemp(prefix="img2pose-train-"))
    arrays, init_weights = _local_arrays(args, work)
    min_sizes = [int(s) for s in args.min_sizes.split(",")]
    resume = latest_checkpoint(args.output, args.name)
    if resume and is_url(resume):  # workers read the state from a local copy
        fs, path = StorageConfig.from_args(None).fs(resume)
        fs.get(path, str(work / "resume"), recursive=True)
        resume = str(work / "resume")
    backbone = None
    if not init_weights and args.backbone_weights != "none":
        # Fetched or checked here, before any worker starts: offline, the error says what to pass.
        import torch

        from img2pose_core.training import BackboneWeightsError, imagenet_resnet18_state_dict

        try:
            state = imagenet_resnet18_state_dict() if args.backbone_weights == "imagenet" else \
                torch.load(args.backbone_weights, map_location="cpu", weights_only=True)
        except BackboneWeightsError as exc:
            raise SystemExit(f"train.py: error: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a missing or unreadable file
            raise SystemExit(f"train.py: error: --backbone-weights {args.backbone_weights}: cannot be read ({exc})") from None
        backbone = str(work / "backbone_resnet18.pth")
        torch.save(state, backbone)
    cfg = {
        "arrays": arrays, "init_weights": init_weights, "backbone_weights": backbone,
        "trainable_layers": args.trainable_layers, "name": args.name, "seed": args.seed,
        "min_sizes": min_sizes, "max_size": args.max_size, "val_min_size": args.val_min_size or max(min_sizes),
        "batch_size": args.batch_size, "lr": args.lr, "momentum": args.momentum, "weight_decay": args.weight_decay,
        "clip": args.clip, "flip": not args.no_flip, "crop": not args.no_crop, "flip_pose": args.flip_pose, "rois_per_image": args.rois_per_image,
        "rpn_train_top_n": args.rpn_train_top_n, "rpn_train_pre_nms_top_n": args.rpn_train_pre_nms_top_n, "plateau_patience": args.plateau_patience,
        "early_stop_patience": args.early_stop_patience, "epochs": args.epochs, "max_steps": args.max_steps,
        "resume_from": resume, "val_mode": args.val_mode, "log_every": args.log_every,
    }
    if resume:
        print(f"train.py: resuming from {resume}", file=sys.stderr)
    ray.init(ignore_reinit_error=True)
    data = args.data.rstrip("/")
    # TorchTrainer's type for its datasets (its dict is invariant): a dataset or a function making one.
    datasets: dict[str, ray.data.Dataset | Callable[[], ray.data.Dataset]] = {
        "train": ray.data.read_parquet(f"{data}/train").randomize_block_order(seed=args.seed)
    }
    try:
        datasets["val"] = ray.data.read_parquet(f"{data}/val")
    except Exception:  # no validation split: the training loss stands in
        pass
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=cfg,
        scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=args.gpu,
                                     resources_per_worker={"CPU": args.cpus_per_worker, **({"GPU": 1} if args.gpu else {})}),
        run_config=RunConfig(name=args.name, storage_path=args.output if "://" in args.output else str(Path(args.output).resolve())),
        datasets=datasets,
    )
    result = trainer.fit()
    print(json.dumps({"metrics": result.metrics, "checkpoint": result.checkpoint.path if result.checkpoint else None}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
