"""``python -m pyramid_dm bench train``: the training step of a config as ``fit`` builds it (its model, objective,
first stage, EMA and AdamW), under each speed variant, with the data loader excluded (one batch kept on the device)
and included (the config's loader, as ``fit`` iterates it), and the loader alone.

For each config and variant it reports images/s, the achieved TFLOP/s (training FLOPs of forward + backward counted
by ``torch.utils.flop_counter`` on a meta copy, :meth:`~pyramid_dm.engine.DiffusionEngine.training_flops`), the MFU
against the device's dense peak (:mod:`.peaks`; none on a CPU), peak memory, and on a GPU which
``scaled_dot_product_attention`` kernels the network's attention can run on. Variants:

- ``eager``: fp32, matmuls at "highest" precision; ``tf32``: fp32 with TF32 matmuls (``matmul_precision: high``);
- ``compiled``: eager fp32 with the network compiled (``model.speed.compile``);
- ``bf16``: bf16 autocast with TF32 matmuls; ``bf16-compiled``: that, compiled, with NHWC convolutions
  (``configs/trainer/gpu.yaml``).

All variants of a config are timed in alternating rounds in one process (the median round each), so they see the
same machine. ``--set backbones`` is the UNet, DiT and hourglass own-data configs at 32, 64 and 128 px. Data: the
config's shards with ``--shards``, else a generated set of textured colour PNGs at the config's size (decoding them
costs about what photographs cost). ``--encoded-shards``: the same shards encoded by the config's autoencoder
(``shards encode``); every variant then also runs as ``<variant>+latents``, reading the stored latents instead of
encoding each batch. Rows go to ``--json``.
"""

from __future__ import annotations

import datetime
import json
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .peaks import numeric_mode, peak_tflops
from .timing import time_steps

SETS = {
    "backbones": [
        f"configs/own/{stem}_{size}.yaml" for size in (32, 64, 128) for stem in ("pixel", "pixel_dit", "pixel_hdit")
    ]
}
VARIANTS = {  # name -> (model.speed switches, autocast dtype, float32 matmul precision)
    "eager": ({}, None, "highest"),
    "tf32": ({}, None, "high"),
    "compiled": ({"compile": True}, None, "highest"),
    "bf16": ({}, torch.bfloat16, "high"),
    "bf16-compiled": ({"compile": True, "channels_last": True}, torch.bfloat16, "high"),
}
DEFAULT_VARIANTS = {"cuda": ["eager", "tf32", "bf16", "bf16-compiled"], "cpu": ["eager", "bf16"]}
CLASSES = 10


def generated_shards(root: Path, size: int, train: int = 512, val: int = 64) -> str:
    """Textured colour images (smooth random fields plus grain) with 10 labels, as PNG shards under ``root``."""
    from PIL import Image

    from ..data.shards import write_shards
    from ..data.sources import ImageSet, _array_examples

    rng = np.random.default_rng(0)
    n = train + val
    coarse = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    fields = np.stack([np.asarray(Image.fromarray(c).resize((size, size), Image.BICUBIC)) for c in coarse])
    images = np.clip(fields + rng.normal(0, 24, fields.shape), 0, 255).astype(np.uint8)
    labels = rng.integers(0, CLASSES, n)
    examples = _array_examples(images, labels, "bench")
    images_set = ImageSet("bench-textures", [str(c) for c in range(CLASSES)], {"train": examples[:train]})
    images_set.splits["val"] = examples[train:]
    write_shards(images_set, root, per_shard=128, progress=False)
    return str(root)


def instantiate(config: str, overrides: list[str], root: Path):
    """(model, data module) of ``config`` with ``overrides``, as ``fit`` builds them (no Trainer run)."""
    from .steps import config_cli

    for name in ("lightning.pytorch", "lightning.fabric"):  # the Trainer's "GPU available", "Seed set" lines
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*`srun` command is available")
    cli = config_cli(config, overrides, ["--exp.root", str(root), "--trainer.logger", "false"])
    return cli.model, cli.datamodule


def config_size(config: str) -> int:
    from ..config import load_config

    data = (load_config(config).get("data") or {}).get("init_args") or {}
    return int(data.get("resize") or 32)


def attention_kernels(variant: Variant) -> list[str]:
    """The ``scaled_dot_product_attention`` kernels that every attention call of one training step's forward pass
    (bf16) can run on; math always can."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    usable = []
    for name, kernel in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
        try:
            with torch.no_grad(), torch.autocast(variant.device.type, torch.bfloat16), sdpa_kernel([kernel]):
                variant.engine.objective.step(variant.engine, *variant.fixed)
            usable.append(name)
        except RuntimeError:
            pass
    return [*usable, "math"]


class Data:
    """One shard set's training loader (shared by the variants that read it) and a batch of it kept on the device."""

    def __init__(self, dm, device: torch.device):
        dm.setup("fit")
        self.dm, self.device = dm, device
        self.loader = iter(dm.train_dataloader())
        self.fixed = self.next()

    def next(self):
        try:
            images, labels, _ = next(self.loader)
        except StopIteration:  # the epoch ended: the next one, as fit goes on
            self.loader = iter(self.dm.train_dataloader())
            images, labels, _ = next(self.loader)
        return images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def images_per_s(self, batches: int) -> float:
        """The loader alone."""
        start, n = time.perf_counter(), 0
        for _ in range(batches):
            n += self.next()[0].shape[0]
        return n / (time.perf_counter() - start)


class Variant:
    """One speed variant of a config: its own model copy, optimizer and step, on ``data`` (images or latents)."""

    def __init__(self, name: str, config: str, overrides: list[str], root: Path, device: torch.device, data: dict):
        from ..models.speed import apply_speed

        base, _, reads = name.partition("+")
        speed, self.dtype, self.precision = VARIANTS[base]
        torch.manual_seed(0)
        self.name, self.reads = name, reads or "images"
        self.model, dm = instantiate(config, overrides, root)
        if not hasattr(self.model, "engine"):
            raise UserError(f"bench train times diffusion models; {config} builds a {type(self.model).__name__}")
        self.image_size, self.device = dm.image_size, device
        key = str(dm.manifest.path)
        if key not in data:
            data[key] = Data(dm, device)
        self.data = data[key]
        self.fixed = self.data.fixed
        self.model.to(device).train()
        self.engine = self.model.engine
        if torch.isnan(self.engine.latent_scale).any():  # fitted on the first batch, as fit does
            self.engine.fit_latent_scale(self.fixed[0])
        apply_speed(self.engine.net, speed, self.model.ema.module)
        params = [p for p in self.engine.net.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")

    def step(self, images, labels) -> None:
        torch.set_float32_matmul_precision(self.precision)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            out = self.engine.objective.step(self.engine, images, labels)
        out.total.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.model.ema.update_parameters(self.engine.net)


def bench_config(config: str, args, root: Path, device: torch.device, stamp: str) -> list[dict]:
    shards = args.shards or generated_shards(root / "shards", config_size(config))
    common = [*args.overrides, "--data.init_args.num_workers", str(args.workers)]
    if args.batch:
        common += ["--data.init_args.batch_size", str(args.batch)]
    data, variants = {}, []
    for name in args.variants:
        variants.append(Variant(name, config, [*common, "--data.init_args.shards", shards], root, device, data))
        if args.encoded_shards:  # the same step reading the first stage's stored latents
            overrides = [*common, "--data.init_args.shards", args.encoded_shards]
            variants.append(Variant(f"{name}+latents", config, overrides, root, device, data))
    batch = variants[0].fixed[0].shape[0]
    steps, peak_mem = {}, {}
    for v in variants:  # warm-up (and compilation), one variant at a time: its own peak memory
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        steps[(v.name, False)] = lambda v=v: v.step(*v.fixed)
        steps[(v.name, True)] = lambda v=v: v.step(*v.data.next())
        time_steps(steps[(v.name, False)], args.warmup, device)
        if device.type == "cuda":
            peak_mem[v.name] = torch.cuda.max_memory_allocated(device) / 2**30
    times = {k: [] for k in steps}
    for _ in range(args.rounds):
        for key, fn in steps.items():
            times[key].append(time_steps(fn, args.steps, device))
    loader_ips = {id(d): d.images_per_s(args.loader_batches) for d in data.values()}
    flops = variants[0].engine.training_flops(batch)
    kernels = attention_kernels(variants[0]) if device.type == "cuda" else None
    rows = []
    for v in variants:
        ips = {loaded: batch / statistics.median(times[(v.name, loaded)]) for loaded in (False, True)}
        torch.set_float32_matmul_precision(v.precision)
        mode = numeric_mode(v.dtype)
        peak = peak_tflops(device, mode, args.peak_tflops)
        achieved = ips[False] * flops / batch / 1e12
        rows.append(
            {
                "config": config,
                "variant": v.name,
                "reads": v.reads,
                "family": v.model.family,
                "network": v.model.hparams.network,
                "image_size": v.image_size,
                "batch": batch,
                "train_gflops_per_image": flops / batch / 1e9,
                "images_per_s": ips[False],
                "images_per_s_with_loader": ips[True],
                "loader_images_per_s": loader_ips[id(v.data)],
                "loader_workers": args.workers,
                "tflops_achieved": achieved,
                "numeric_mode": mode,
                "peak_tflops": peak,
                "mfu": achieved / peak if peak else None,
                "peak_mem_gib": peak_mem.get(v.name),
                "attention_kernels": kernels,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "torch": torch.__version__,
                "speed": VARIANTS[v.name.partition("+")[0]][0],
                "rounds": args.rounds,
                "steps_per_round": args.steps,
                "date": stamp,
            }
        )
    torch.set_float32_matmul_precision("highest")
    return rows


def print_row(row: dict) -> None:
    mfu = f"{row['mfu']:6.1%}" if row["mfu"] is not None else "     -"
    mem = f"{row['peak_mem_gib']:6.2f}" if row["peak_mem_gib"] is not None else "     -"
    print(
        f"{Path(row['config']).stem:18s} {row['variant']:14s} {row['batch']:5d} {row['train_gflops_per_image']:9.2f} "
        f"{row['images_per_s']:9.1f} {row['images_per_s_with_loader']:9.1f} {row['loader_images_per_s']:9.1f} "
        f"{row['tflops_achieved']:8.3f} {mfu} {mem}",
        flush=True,
    )


def bench_train(args) -> list[dict]:
    configs = [*(args.config or []), *(c for s in args.set or [] for c in SETS[s])]
    if not configs:
        raise UserError("bench train: name a --config (repeat for several) or a --set (" + ", ".join(SETS) + ")")
    for config in configs:
        if not Path(config).is_file():
            raise UserError(f"bench train: no config file {config!r}")
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    args.variants = args.variants or DEFAULT_VARIANTS["cuda" if device.type == "cuda" else "cpu"]
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"device {device} | torch {torch.__version__} | {args.rounds} rounds x {args.steps} steps", end="")
    print(f" | loader workers {args.workers}")
    print(
        f"{'config':18s} {'variant':14s} {'batch':>5s} {'GFLOP/img':>9s} {'img/s':>9s} {'+loader':>9s} "
        f"{'loader':>9s} {'TFLOP/s':>8s} {'MFU':>6s} {'GiB':>6s}"
    )
    rows = []
    for config in configs:
        with tempfile.TemporaryDirectory(prefix="pyramid_dm-bench-train-") as tmp:
            for row in bench_config(config, args, Path(tmp), device, stamp):
                rows.append(row)
                print_row(row)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="a config's training step per speed variant: images/s, TFLOP/s, MFU, loader")
    t.add_argument("--config", action="append", help="a config to time (repeat for several)")
    t.add_argument("--set", action="append", choices=list(SETS), help="a named set of configs")
    t.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None, help="default: by device")
    t.add_argument("--shards", default=None, help="the data (default: generated textured images at the size)")
    t.add_argument(
        "--encoded-shards",
        default=None,
        help="the same data encoded by the config's autoencoder (shards encode): each variant also reading latents",
    )
    t.add_argument("--batch", type=int, default=None, help="default: the config's batch size")
    t.add_argument("--workers", type=int, default=2, help="data loader workers")
    t.add_argument("--device", default="auto")
    t.add_argument("--peak-tflops", type=float, default=None, help="the device's dense peak (default: bench/peaks.py)")
    t.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (compilation happens here)")
    t.add_argument("--steps", type=int, default=3)
    t.add_argument("--rounds", type=int, default=3)
    t.add_argument("--loader-batches", type=int, default=8, help="batches read to time the loader alone")
    t.add_argument("--json", default=None, help="write the rows here (rewritten after every config)")
    t.add_argument("overrides", nargs="*", help="fit options for every config, after --")
