"""Latent and pyramid diffusion: autoencoders, first stages, the coarse-to-fine engine, and their CLI runs."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import ROOT, execute_notebook, run_cli
from helpers import fit_run as fit
from test_ddp import free_port

from pyramid_dm.errors import UserError
from pyramid_dm.models import PixelDiffusion, PyramidDiffusion
from pyramid_dm.nets import PyramidUNet
from pyramid_dm.stages import ImagePyramid

TINY_UNET = dict(base_channels=16, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[], norm_groups=8)


# ---- first stages and the pyramid engine ---------------------------------------------------------------------------
@pytest.mark.parametrize("resolutions", [[8, 16], [4, 8, 16]])
def test_an_l_level_pyramid_has_the_stated_shapes(resolutions):
    torch.manual_seed(0)
    m = PyramidDiffusion(16, 1, resolutions=resolutions, unet=TINY_UNET, level_steps=[2] * len(resolutions))
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    levels = m.engine.encode(x)
    assert [tuple(z.shape) for z in levels] == [(3, 1, r, r) for r in resolutions]
    assert torch.allclose(levels[0], F.avg_pool2d(x, 16 // resolutions[0]))
    images, generated = m.sample(2, return_levels=True)
    assert images.shape == (2, 1, 16, 16)
    assert [tuple(z.shape) for z in generated] == [(2, 1, r, r) for r in resolutions]
    assert m.engine.level_shapes == [(1, r, r) for r in resolutions]


def test_coarse_levels_are_cheaper_per_call_and_the_frido_layout_is_not():
    native = PyramidDiffusion(16, 1, resolutions=[4, 8, 16], unet=TINY_UNET)
    frido = PyramidDiffusion(16, 1, resolutions=[4, 8, 16], unet=TINY_UNET, layout="frido")
    n, f = native.engine.flops_per_call(), frido.engine.flops_per_call()
    assert n[0] < n[1] < n[2] and n[0] < n[2] / 8  # each level at its own resolution
    assert min(f) > 0.9 * f[-1]  # every level at the finest resolution, as in Frido's code
    assert frido.engine.training_flops(4) > 2 * native.engine.training_flops(4)


def test_the_fine_level_depends_on_its_coarse_condition():
    torch.manual_seed(0)
    net = PyramidUNet([1, 1], [0, 1], [8, 16], **TINY_UNET)
    for head in net.heads_out:  # the zero-initialised output heads would hide any dependence
        torch.nn.init.normal_(head.weight)
    x, t = torch.randn(2, 1, 16, 16), torch.full((2,), 0.5)
    a = net(x, t, level=1, context=torch.zeros(2, 1, 16, 16))
    b = net(x, t, level=1, context=torch.randn(2, 1, 16, 16))
    c = net(x, t, level=1, context=torch.zeros(2, 1, 16, 16), aug_t=torch.full((2,), 0.3))
    assert (a - b).abs().mean() > 1e-3 and (a - c).abs().mean() > 1e-4
    with pytest.raises(ValueError, match="context of 1 channels"):
        net(x, t, level=1)


def test_conditioning_augmentation_noises_the_context_at_the_given_level():
    m = PyramidDiffusion(16, 1, resolutions=[8, 16], unet=TINY_UNET, conditioning_augmentation=0.5)
    coarse = [torch.ones(4, 1, 8, 8)]
    noise = torch.randn(4, 1, 16, 16)
    clean = m.engine.level_conditioning(1, coarse)["context"]
    assert torch.equal(clean, torch.ones(4, 1, 16, 16))
    t = torch.tensor([0.0, 0.1, 0.3, 0.5])
    cond = m.engine.level_conditioning(1, coarse, t, noise)
    alpha, sigma = m.engine.schedules[1].vp_alpha_sigma(t.double())
    want = alpha.float().view(-1, 1, 1, 1) + sigma.float().view(-1, 1, 1, 1) * noise
    assert torch.allclose(cond["context"], want, atol=1e-6) and torch.equal(cond["aug_t"], t)


def test_per_level_schedules_shift_with_resolution():
    m = PyramidDiffusion(16, 1, resolutions=[4, 8, 16], unet=TINY_UNET, shift_reference_resolution=4)
    t = torch.tensor([0.5], dtype=torch.float64)
    lam = [float(s.log_snr(t)) for s in m.engine.schedules]
    assert lam[0] - lam[1] == pytest.approx(2 * math.log(2), abs=1e-9)
    assert lam[1] - lam[2] == pytest.approx(2 * math.log(2), abs=1e-9)


def test_one_sampled_level_per_step_trains_only_that_level():
    torch.manual_seed(0)
    m = PyramidDiffusion(16, 1, resolutions=[8, 16], unet=TINY_UNET, level_training="sample", level_weights=[0, 1])
    for head in m.net.heads_out:
        torch.nn.init.normal_(head.weight)
    batch = (torch.rand(4, 1, 16, 16) * 2 - 1, torch.zeros(4, dtype=torch.long), torch.arange(4))
    m.training_step(batch, 0).backward()
    assert m.net.heads_in[1].weight.grad.abs().sum() > 0
    assert m.net.heads_in[0].weight.grad.abs().sum() == 0  # the coarse level was not drawn (weight 0)


# ---- bad settings ---------------------------------------------------------------------------------------------------
def test_bad_pyramid_settings_are_named(tmp_path):
    with pytest.raises(UserError, match=r"model.resolutions.*6 does not divide 16"):
        PyramidDiffusion(16, 1, resolutions=[6, 16], unet=TINY_UNET)
    with pytest.raises(UserError, match="finest pyramid resolution must be the image size 16"):
        PyramidDiffusion(16, 1, resolutions=[4, 8], unet=TINY_UNET)
    with pytest.raises(UserError, match=r"model.level_steps \[20, 8\] gives 2 values but the model has 3 levels"):
        PyramidDiffusion(16, 1, resolutions=[4, 8, 16], unet=TINY_UNET, level_steps=[20, 8])
    with pytest.raises(UserError, match="model.layout 'stacked' is not one of"):
        PyramidDiffusion(16, 1, resolutions=[8, 16], layout="stacked")
    with pytest.raises(UserError, match="model.autoencoder_ckpt .*missing.ckpt' does not exist"):
        PyramidDiffusion(16, 1, first_stage="autoencoder", autoencoder_ckpt=str(tmp_path / "missing.ckpt"))
    m = PyramidDiffusion(16, 1, resolutions=[8, 16], unet=TINY_UNET)
    with pytest.raises(UserError, match=r"steps \[5, 5, 5\] gives 3 values but the model has 2 levels"):
        m.sample(1, steps=[5, 5, 5])
    with pytest.raises(ValueError, match="at least 2 levels"):
        ImagePyramid(1, 16, [16])


def test_a_pyramid_checkpoint_refuses_a_config_with_other_levels():
    two = PyramidDiffusion(16, 1, resolutions=[8, 16], unet=TINY_UNET)
    ckpt = {"state_dict": two.state_dict(), "hyper_parameters": dict(two.hparams)}
    two.on_save_checkpoint(ckpt)
    three = PyramidDiffusion(16, 1, resolutions=[4, 8, 16], unet=TINY_UNET)
    with pytest.raises(UserError, match=r"checkpoint's model has 2 level\(s\).*this config builds 3"):
        three.on_load_checkpoint(ckpt)


def test_pixel_checkpoints_from_before_latent_scales_still_load():
    m = PixelDiffusion(8, 1, unet=TINY_UNET)
    state = {k: v for k, v in m.state_dict().items() if k != "latent_scale"}
    ckpt = {"state_dict": state, "hyper_parameters": dict(m.hparams)}
    m.on_load_checkpoint(ckpt)
    m.load_state_dict(ckpt["state_dict"])
    assert torch.equal(m.latent_scale, torch.ones(1))


# ---- the latent scale is the same on every DDP rank ----------------------------------------------------------------
class _Strategy:
    def reduce(self, tensor, reduce_op="sum"):
        dist.all_reduce(tensor)
        return tensor


class _Trainer:
    world_size, strategy = 2, _Strategy()


def _scale_rank(rank: int, port: int, ckpt: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from pyramid_dm.models import LatentDiffusion

    model = LatentDiffusion(8, 1, autoencoder_ckpt=ckpt, unet=TINY_UNET)
    model._trainer = _Trainer()
    torch.manual_seed(100 + rank)  # each rank sees a different batch
    model.fit_latent_scale(torch.rand(16, 1, 8, 8) * 2 - 1)
    torch.save(model.latent_scale, Path(out) / f"scale{rank}.pt")
    dist.destroy_process_group()


# ---- through the CLI ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory, stage_one) -> Path:
    """The tiny stage-one runs (conftest's ``stage_one``: the KL and the multi-scale VQ autoencoder of the digits),
    copied into this module's runs root."""
    root = tmp_path_factory.mktemp("runs")
    for run in ("ae-digits_kl", "ae-digits_msvq"):
        shutil.copytree(stage_one / run, root / run)
    return root


def test_autoencoder_runs_log_reconstructions_psnr_codebook_and_fid(runs):
    from pyramid_dm.eval.history import run_history

    run = runs / "ae-digits_msvq"
    rows = run_history(next((run / "wandb").glob("offline-run-*")), prefix="")
    keys = set().union(*rows)
    assert {"val/psnr", "val/loss", "val/rec_fid_digits_clf", "train/perplexity_level0", "train/usage_level1"} <= keys
    assert list((run / "samples").glob("reconstructions-step*.png"))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["pyramid_dm"]["family"] == "autoencoder"


def test_patchgan_starts_at_disc_start_without_double_counting_steps(runs):
    from pyramid_dm.eval.history import run_history

    run = runs / "ae-digits_kl"
    rows = run_history(next((run / "wandb").glob("offline-run-*")), prefix="train/")
    steps_with_d = [r["trainer/global_step"] for r in rows if "train/d_loss" in r]
    assert steps_with_d and min(steps_with_d) >= 10  # hinge loss only from disc_start on
    assert all(r["train/disc_adaptive_weight"] > 0 for r in rows if "train/disc_adaptive_weight" in r)
    # two optimizers, one global step per batch: max_steps 30 means 30 batches
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 30


def test_latent_scale_is_identical_on_two_ddp_ranks(runs, tmp_path):
    ckpt = str(runs / "ae-digits_kl" / "checkpoints" / "last.ckpt")
    mp.spawn(_scale_rank, args=(free_port(), ckpt, str(tmp_path)), nprocs=2, join=True)
    s0, s1 = (torch.load(tmp_path / f"scale{r}.pt") for r in (0, 1))
    assert torch.equal(s0, s1) and torch.isfinite(s0).all() and (s0 > 0).all()
    # ... and it is the scale of both ranks' batches together
    from pyramid_dm.models import LatentDiffusion

    model = LatentDiffusion(8, 1, autoencoder_ckpt=ckpt, unet=TINY_UNET)
    both = []
    for rank in (0, 1):
        torch.manual_seed(100 + rank)
        both.append(torch.rand(16, 1, 8, 8) * 2 - 1)
    model.fit_latent_scale(torch.cat(both))
    assert torch.allclose(model.latent_scale, s0, rtol=1e-5)


def test_latent_diffusion_trains_samples_and_counts_the_decoder(runs, session_env, tmp_path):
    run = fit("configs/latent/digits.yaml", runs, session_env, 4)
    ckpt = run / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert torch.isfinite(state["latent_scale"]).all() and float(state["latent_scale"]) != 1.0  # fitted and saved
    out = tmp_path / "samples"
    proc = run_cli(
        ["sample", "--ckpt_path", str(ckpt), "--steps", "3", "--num_samples", "4", "--out", str(out)], session_env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "samples.json").read_text())
    assert record["family"] == "latent" and record["nfe"] == 3 and len(list(out.glob("0*.png"))) == 4
    from pyramid_dm.engine.load import build_model

    model = build_model(torch.load(ckpt, weights_only=True), str(ckpt), None, torch.device("cpu"))
    assert model.decoder_flops() > 0  # the cost accounting includes decoding the latent


def test_pyramid_in_a_multiscale_autoencoder_trains_and_samples_per_level(runs, session_env, tmp_path):
    run = fit("configs/pyramid/digits_msvq.yaml", runs, session_env, 4)
    ckpt = run / "checkpoints" / "last.ckpt"
    assert list((run / "samples").glob("step*-coarse_to_fine.png")) and list((run / "samples").glob("step*-level0.png"))
    out = tmp_path / "samples"
    args = ["sample", "--ckpt_path", str(ckpt), "--steps", "4", "2", "--num_samples", "3", "--out", str(out)]
    proc = run_cli(args, session_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "samples.json").read_text())
    assert record["level_nfe"] == [4, 2] and record["levels"] == [[4, 4, 4], [4, 8, 8]]
    bad = ["sample", "--ckpt_path", str(ckpt), "--steps", "4", "2", "2", "--out", str(tmp_path / "bad")]
    bad = run_cli(bad, session_env)
    assert bad.returncode == 2 and "gives 3 values but" in bad.stderr and "2-level model" in bad.stderr


def test_frido_baseline_config_runs_end_to_end(session_env, tmp_path):
    run = fit(
        "configs/pyramid/fashion_mnist_frido.yaml",
        tmp_path,
        session_env,
        2,
        "--data.init_args.batch_size",
        "8",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.callbacks.num_samples",
        "4",
        "--model.init_args.level_steps",
        "[2, 2, 2]",
    )
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["hyper_parameters"]["layout"] == "frido"
    assert ckpt["pyramid_dm"]["level_shapes"] == [[1, 8, 8], [1, 16, 16], [1, 32, 32]]


def test_wrong_first_stage_checkpoints_are_named(runs, session_env, digits_shards):
    from pyramid_dm.models import LatentDiffusion

    pixel = fit("configs/quickstart.yaml", runs, session_env, 2) / "checkpoints" / "last.ckpt"
    with pytest.raises(UserError, match=r"model.autoencoder_ckpt .*holds a pixel model .*, not an autoencoder"):
        LatentDiffusion(8, 1, autoencoder_ckpt=str(pixel))
    ms = str(runs / "ae-digits_msvq" / "checkpoints" / "last.ckpt")
    with pytest.raises(UserError, match="2-level multi-scale autoencoder; use pyramid_dm.models.PyramidDiffusion"):
        LatentDiffusion(8, 1, autoencoder_ckpt=ms)
    kl = str(runs / "ae-digits_kl" / "checkpoints" / "last.ckpt")
    with pytest.raises(UserError, match="single latent level; pyramid diffusion needs a multi-scale"):
        PyramidDiffusion(8, 1, first_stage="autoencoder", autoencoder_ckpt=kl)
    with pytest.raises(UserError, match=r"trained on 1x8x8 images but the data gives 1x16x16"):
        LatentDiffusion(16, 1, autoencoder_ckpt=kl)
    proc = run_cli(
        [
            "fit",
            "--config",
            "configs/latent/digits.yaml",
            "--exp.root",
            str(runs),
            "--exp.name",
            "x",
            "--model.init_args.autoencoder_ckpt",
            "nowhere.ckpt",
        ],
        session_env,
    )
    saved = ROOT / "nowhere.ckpt"  # the config's relative path, made absolute as the run's config.yaml stores it
    assert proc.returncode == 2 and f"model.autoencoder_ckpt '{saved}' does not exist" in proc.stderr


@pytest.fixture(scope="module")
def trained_pyramid(runs, session_env) -> Path:
    """The digits image pyramid (4x4, then 8x8 given it) trained for 1000 steps of batch 64 with a 100-step warm-up
    (about 2 minutes on 2 cores; its agreement below: 0.145 against 0.565; 400 or 500 steps of batch 128 fall short)."""
    extra = ["--trainer.callbacks.every_n_steps", "100000", "--data.init_args.batch_size", "64"]
    run = fit("configs/pyramid/digits.yaml", runs, session_env, 1000, *extra, "--model.init_args.warmup_steps", "100")
    return run / "checkpoints" / "last.ckpt"


def test_generated_fine_level_agrees_with_its_coarse_condition(trained_pyramid):
    """Average-pooling the generated 8x8 level gives back the 4x4 level it was conditioned on: RMS error below 0.2
    (pixels in [-1, 1]) and below 0.4x the error against another sample's coarse level (measured: 0.145 and 0.565)."""
    from pyramid_dm.engine.load import build_model

    path = str(trained_pyramid)
    model = build_model(torch.load(path, weights_only=True), path, None, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    _, (coarse, fine) = model.sample(100, generator=g, return_levels=True)
    pooled = F.avg_pool2d(fine, 2)
    err = (pooled - coarse).pow(2).mean().sqrt()
    other = (pooled - coarse.roll(1, dims=0)).pow(2).mean().sqrt()
    assert err < 0.2 and err < 0.4 * other, (float(err), float(other))


def test_pyramid_notebook_shows_levels_and_per_level_costs(trained_pyramid, session_env):

    env = {
        **session_env,
        "PYRAMID_DM_PYRAMID_CKPT": str(trained_pyramid),
    }
    nb = execute_notebook("pyramid.ipynb", env)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "2 levels (C, H, W): [(1, 4, 4), (1, 8, 8)]" in text
    assert "   0     4   20" in text and "   1     8    8" in text  # level, grid, NFE: 20 steps coarse, 8 fine
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2


def test_evaluate_reports_per_level_nfe_and_flops(trained_pyramid, session_env, tmp_path):
    args = ["evaluate", "--ckpt_path", str(trained_pyramid), "--sampler", "dpmpp_2m", "--level_steps", "4", "2"]
    args += ["--num_samples", "20", "--batch_size", "10", "--num_real", "200", "--kid_subset_size", "10"]
    proc = run_cli([*args, "--no_wandb", "--no_progress", "--out", str(tmp_path)], session_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert row["nfe"] == 6 and [lv["nfe"] for lv in row["levels"]] == [4, 2]
    coarse, fine = row["levels"]
    per_call = [lv["gflops_per_call"] for lv in row["levels"]]
    assert coarse["resolution"] == 4 and fine["resolution"] == 8 and per_call[0] < per_call[1]
    assert row["gflops_per_sample"] == pytest.approx(4 * per_call[0] + 2 * per_call[1] + row["decoder_gflops"])
    bad = run_cli([*args[:6], "4", "2", "2", "--no_wandb", "--out", str(tmp_path / "bad")], session_env)
    assert bad.returncode == 2 and "--level_steps [4, 2, 2] gives 3 values but the model has 2 levels" in bad.stderr
