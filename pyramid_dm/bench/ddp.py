"""``python -m pyramid_dm bench ddp``: data-parallel scaling of one UNet training step, 1 rank against N ranks.

Each world size runs in its own process group (gloo on CPU, NCCL on GPUs), with the same per-rank batch (weak scaling)
and the same threads per rank on CPU. Every rank times forward + backward + AdamW; one rank alone is the plain module,
more ranks are wrapped in DistributedDataParallel, whose bucketed gradient all-reduce overlaps the backward pass. The
all-reduce of one step's gradient bytes is also timed alone, the cost that DDP hides behind the backward at best.
A one-integer all-reduce, the per-step requeue check of :class:`pyramid_dm.resume.RequeueAtStepBoundary`, is timed too.
The last line is ``ddp_efficiency: X`` = images/s of the largest world / (its ranks x images/s of one rank).
"""

from __future__ import annotations

import os
import socket
import statistics
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from .layout import add_layout_args, unet_from_args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, args, results) -> None:
    try:
        _measure_rank(rank, world, port, args, results)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    # Skip the interpreter's teardown: gloo's threads sometimes abort it ("terminate called without an active
    # exception", seen in about 1 run in 5 here), which would discard results already sent.
    os._exit(0)


def _measure_rank(rank: int, world: int, port: int, args, results) -> None:
    cuda = args.device == "cuda"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    try:
        if cuda:
            torch.cuda.set_device(rank)
        else:
            torch.set_num_threads(args.threads)
        device = torch.device("cuda", rank) if cuda else torch.device("cpu")
        torch.manual_seed(0)
        net = unet_from_args(args).to(device)
        model = DistributedDataParallel(net) if world > 1 else net
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        x = torch.randn(args.batch, args.channels, args.image_size, args.image_size, device=device)
        t = torch.rand(args.batch, device=device)
        dtype = {"fp32": None, "bf16": torch.bfloat16}[args.dtype]

        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = model(x, t).float().square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def timed(fn, n: int) -> float:
            if cuda:
                torch.cuda.synchronize()
            dist.barrier()
            start = time.perf_counter()
            for _ in range(n):
                fn()
            if cuda:
                torch.cuda.synchronize()
            return (time.perf_counter() - start) / n

        timed(step, args.warmup)
        step_s = statistics.median(timed(step, args.steps) for _ in range(args.rounds))
        grads = torch.zeros(sum(p.numel() for p in net.parameters()), device=device)
        reduce_s = statistics.median(timed(lambda: dist.all_reduce(grads), 3) for _ in range(args.rounds))
        flag = torch.zeros(1, dtype=torch.int32, device=device)  # the per-step requeue check (RequeueAtStepBoundary)
        flag_s = statistics.median(timed(lambda: dist.all_reduce(flag), 20) for _ in range(args.rounds))
        if rank == 0:
            results.put(
                {
                    "world": world,
                    "step_s": step_s,
                    "allreduce_s": reduce_s,
                    "flag_s": flag_s,
                    "grad_bytes": grads.numel() * 4,
                }
            )
        dist.barrier()  # no rank leaves while another still talks to it
    finally:
        dist.destroy_process_group()


def measure(world: int, args) -> dict:
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.start_processes(_rank, args=(world, free_port(), args, results), nprocs=world, start_method="spawn")
    return results.get()


def bench_ddp(args) -> float:
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and max(args.ranks) > torch.cuda.device_count():
        raise SystemExit(f"bench ddp: {max(args.ranks)} ranks need as many GPUs, found {torch.cuda.device_count()}")
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // max(args.ranks))
    widths = [args.base * m for m in args.mult]
    print(
        f"device {args.device} | per-rank batch {args.batch} | {args.channels}x{args.image_size}x{args.image_size} | "
        f"widths {widths} | blocks {args.blocks} | attention at {args.attn} | {args.dtype}"
        + (f" | {args.threads} threads per rank" if args.device == "cpu" else "")
    )
    rows = [measure(world, args) for world in args.ranks]
    base = next((r for r in rows if r["world"] == 1), None)
    print(
        "| ranks | step s | img/s per rank | img/s total | grad all-reduce s | all-reduce / step | 1-int all-reduce s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        per_rank = args.batch / r["step_s"]
        share = r["allreduce_s"] / r["step_s"] if r["world"] > 1 else float("nan")
        print(
            f"| {r['world']} | {r['step_s']:.4f} | {per_rank:.1f} | {per_rank * r['world']:.1f} | "
            f"{r['allreduce_s']:.4f} | {share:.2f} | {r['flag_s']:.6f} |"
        )
    print(f"gradient bytes all-reduced per step: {rows[0]['grad_bytes'] / 2**20:.1f} MiB (fp32)")
    if base is None:
        return float("nan")
    top = max(rows, key=lambda r: r["world"])
    efficiency = base["step_s"] / top["step_s"]  # same per-rank batch: total img/s ratio / ranks
    print(f"ddp_efficiency: {efficiency:.2f}  ({top['world']} ranks vs 1, images/s per rank)")
    return efficiency


def add_parser(sub) -> None:
    d = sub.add_parser("ddp", help="data-parallel scaling of a UNet training step: 1 rank vs N ranks")
    d.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    d.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    d.add_argument("--threads", type=int, default=None, help="CPU threads per rank (default: cores / max ranks)")
    add_layout_args(d, image_size=8, channels=1, batch=64, attn=[4])  # --batch: per rank
    d.add_argument("--warmup", type=int, default=2)
    d.add_argument("--steps", type=int, default=5)
    d.add_argument("--rounds", type=int, default=5)
