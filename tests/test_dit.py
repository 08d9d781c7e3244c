"""DiT (pyramid_dm/nets/dit.py): the same function as diffusers' DiTTransformer2DModel given the same weights, zero
at initialisation (adaLN-Zero), clear errors for sizes that do not fit, and a registered network of every family."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import ROOT, run_cli, run_main

from pyramid_dm.nets.dit import DiT


def tiny(**kw) -> DiT:
    args = {"level_channels": [3], "level_sizes": [16], "num_classes": 10, "patch_size": 2, "hidden_size": 64,
            "depth": 2, "num_heads": 4} | kw  # fmt: skip
    return DiT(**args)


class DiTTimestepFeatures(torch.nn.Module):
    """facebookresearch/DiT's ``TimestepEmbedder.timestep_embedding``, written out, in the input's precision
    (diffusers' ``Timesteps`` computes in float32 and shifts the frequencies, ``downscale_freq_shift=1``)."""

    def forward(self, t):
        half = 128
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=t.dtype) / half)
        args = t[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def test_dit_matches_diffusers_dit_transformer_with_the_same_weights():
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    ours = tiny().double()
    with torch.no_grad():
        for p in ours.parameters():  # every weight random: the zero-initialised parts must be compared too
            p.normal_(0, 0.3)
    ref = DiTTransformer2DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=3, out_channels=3, num_layers=2, sample_size=16,
        patch_size=2, num_embeds_ada_norm=10, norm_eps=1e-6,
    ).double()  # fmt: skip
    state = {"pos_embed.proj.weight": ours.embed_patches[0].weight, "pos_embed.proj.bias": ours.embed_patches[0].bias}
    for i, (block, theirs) in enumerate(zip(ours.blocks, ref.transformer_blocks)):
        # diffusers gives every block its own copy of the embedders (and uses block 0's for the final layer)
        theirs.norm1.emb.time_proj = DiTTimestepFeatures()
        embedder = "norm1.emb.timestep_embedder"
        pairs = {
            f"{embedder}.linear_1": ours.time_mlp[0], f"{embedder}.linear_2": ours.time_mlp[2],
            "norm1.linear": block.ada[1], "attn1.to_q": block.attn.to_q, "attn1.to_k": block.attn.to_k,
            "attn1.to_v": block.attn.to_v, "attn1.to_out.0": block.attn.to_out, "ff.net.0.proj": block.mlp[0],
            "ff.net.2": block.mlp[2],
        }  # fmt: skip
        for name, layer in pairs.items():
            state[f"transformer_blocks.{i}.{name}.weight"] = layer.weight
            state[f"transformer_blocks.{i}.{name}.bias"] = layer.bias
        state[f"transformer_blocks.{i}.norm1.emb.class_embedder.embedding_table.weight"] = ours.class_emb.weight
    for name, layer in {"proj_out_1": ours.finals[0].ada, "proj_out_2": ours.finals[0].proj}.items():
        state[f"{name}.weight"], state[f"{name}.bias"] = layer.weight, layer.bias
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if "pos_embed.pos_embed" not in k], missing
    ref.eval()
    x, t = torch.randn(3, 3, 16, 16, dtype=torch.float64), torch.rand(3, dtype=torch.float64)
    labels = torch.tensor([0, 7, 10])  # 10: the null class of classifier-free guidance
    with torch.no_grad():
        expected = ref(x, timestep=t * ours.time_scale, class_labels=labels).sample
        got = ours(x, t, labels)
    assert expected.abs().mean() > 0.1
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_dit_outputs_zero_at_initialisation_and_trains_away_from_it():
    net = tiny()
    x, t = torch.randn(2, 3, 16, 16), torch.rand(2)
    assert net(x, t, torch.tensor([1, 2])).abs().max() == 0  # adaLN-Zero: every block the identity, output zero
    loss = (net(x, t, torch.tensor([1, 2])) - x).pow(2).mean()
    loss.backward()
    assert net.finals[0].proj.weight.grad.abs().sum() > 0


def test_a_pyramid_dit_takes_each_levels_context_patch_size_and_grid():
    net = DiT([3, 3], [8, 16], context_channels=[0, 3], patch_size=[2, 4], hidden_size=32, depth=1, num_heads=2)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    coarse = net(torch.randn(2, 3, 8, 8), torch.rand(2), level=0)
    ctx = torch.randn(2, 3, 16, 16)
    fine = net(torch.randn(2, 3, 16, 16), torch.rand(2), level=1, context=ctx, aug_t=torch.rand(2))
    assert coarse.shape == (2, 3, 8, 8) and fine.shape == (2, 3, 16, 16)
    x, t = torch.randn(1, 3, 16, 16), torch.rand(1)
    assert not torch.equal(net(x, t, level=1, context=ctx[:1]), net(x, t, level=1, context=-ctx[:1]))  # context used
    with pytest.raises(ValueError, match="level 1 takes a context of 3 channels, got 0"):
        net(x, t, level=1)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"patch_size": 3}, "patch_size 3 does not divide level 0's side 16"),
        ({"num_heads": 5}, "hidden_size 64 does not split into num_heads 5 heads"),
        ({"hidden_size": 66, "num_heads": 3}, "hidden_size 66 must be a multiple of 4"),
        ({"patch_size": [2, 2]}, "one entry per level"),
    ],
)
def test_dit_sizes_that_do_not_fit_are_clear_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kw)


def test_attention_flops_are_counted_on_the_cpu_as_on_the_meta_device():
    from pyramid_dm.flops import count_flops, training_flops

    b, heads, n, e = 2, 4, 64, 16
    q = torch.randn(b, heads, n, e)
    attention = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert attention == 2 * (2 * b * heads * n * n * e)  # q k^T and scores v (flop_counter alone counts 0 here)
    net = tiny()
    x, t, labels = torch.randn(2, 3, 16, 16), torch.rand(2), torch.tensor([1, 2])
    on_cpu = count_flops(lambda: net(x, t, labels))
    on_meta = training_flops(tiny, (3, 16, 16), 2, backward=False)
    assert on_cpu == on_meta and on_cpu > 2 * attention  # two blocks' attention among them


BODIES = {
    "dit": ('{"hidden_size": 32, "depth": 1, "num_heads": 2, "patch_size": [1, 2]}', ".blocks.0.attn.to_q"),
    "hdit": ('{"widths": [32, 64], "depths": [1, 1], "window": 2, "head_dim": 16, "mapping_width": 32, '
             '"patch_size": [1, 2]}', ".down.0.0.attn.qkv"),
}  # fmt: skip


@pytest.mark.parametrize("network", sorted(BODIES))
def test_a_pyramid_with_a_transformer_body_fits_samples_and_refuses_a_resume_with_another_backbone(
    network, session_env, tmp_path, monkeypatch, capsys
):
    body, weight = BODIES[network]
    args = ["fit", "--config", "configs/pyramid/digits.yaml", "--exp.root", str(tmp_path),
            "--data.init_args.num_workers", "0", "--trainer.val_check_interval", "5",
            "--model.init_args.network", network, "--model.init_args.unet", body]  # fmt: skip
    fit = run_cli([*args, "--trainer.max_steps", "10"], session_env)
    assert fit.returncode == 0, fit.stderr[-2000:]
    last = tmp_path / "pyramid-digits" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["hyper_parameters"]["network"] == network and any(weight in k for k in ckpt["state_dict"])
    out = tmp_path / "s.png"
    sample = run_cli(["sample", "--ckpt_path", str(last), "--num_samples", "4", "--out", str(out)], session_env)
    assert sample.returncode == 0 and out.exists(), sample.stderr[-2000:]
    unet = [a if a != network else "unet" for a in args[:-1]] + ['{"base_channels": 16}']
    code, err = run_main([*unet, "--trainer.max_steps", "12", "--ckpt_path", "last"], session_env, monkeypatch, capsys)
    assert code == 2 and f"network: '{network}' -> 'unet'" in err, err


@pytest.mark.parametrize("width", [0.5, 0.25])
def test_a_dit_sub_width_is_a_plain_smaller_dit_of_the_sliced_weights(width):
    from pyramid_dm.nets.slimmable import slim_channels

    torch.manual_seed(0)
    full = tiny(num_heads=8, hidden_size=64, width_multipliers=[1.0, 0.5, 0.25])
    with torch.no_grad():
        for p in full.parameters():
            p.normal_(0, 0.3)
    heads, hidden = round(8 * width), slim_channels(256, width)
    small = tiny(num_heads=heads, head_dim=8, hidden_size=64, mlp_ratio=hidden / 64)
    state = {}
    for name, value in full.state_dict().items():
        if ".attn.to_out.weight" in name or name.endswith("mlp.2.weight"):
            value = value[:, : heads * 8 if "attn" in name else hidden]
        elif ".attn.to_" in name and ".to_out." not in name:
            value = value[: heads * 8]
        elif ".mlp.0." in name:
            value = value[:hidden]
        state[name] = value
    small.load_state_dict(state)
    x, t, labels = torch.randn(2, 3, 16, 16), torch.rand(2), torch.tensor([3, 10])
    assert torch.equal(full(x, t, labels, width=width), small(x, t, labels))
    plain = tiny(num_heads=8, hidden_size=64)
    plain.load_state_dict(full.state_dict())
    assert torch.equal(full(x, t, labels, width=1.0), plain(x, t, labels))  # width 1: the plain network, bit for bit
    with pytest.raises(ValueError, match="dit: width 0.05 leaves no whole head of num_heads 8"):
        tiny(num_heads=8, width_multipliers=[1.0, 0.05])
    with pytest.raises(ValueError, match="not slimmable"):
        plain(x, t, labels, width=0.5)


@pytest.mark.parametrize(
    ("network", "body"),
    [
        ("dit", {"hidden_size": 32, "depth": 1, "num_heads": 4, "patch_size": 2}),
        ("hdit", {"widths": [32, 64], "depths": [1, 1], "head_dim": 8, "patch_size": 2, "mapping_width": 32}),
    ],
)
def test_a_step_aware_transformer_trains_every_width_by_the_sandwich_rule_and_samples_under_a_policy(network, body):
    from pyramid_dm.engine.step_policy import LevelPolicy, StepPolicy
    from pyramid_dm.engine.wrappers import Widths
    from pyramid_dm.models import PixelDiffusion
    from pyramid_dm.nets.slimmable import current_width

    torch.manual_seed(0)
    model = PixelDiffusion(8, 1, num_classes=10, network=network, unet=body, step_aware={"widths": [1.0, 0.5, 0.25]})
    seen = []
    model.engine.net.register_forward_pre_hook(lambda *_: seen.append(current_width()))
    terms = model.engine.objective.terms(model.engine, torch.randn(4, 1, 8, 8), torch.arange(4))
    assert sorted(w for w, _, _ in terms) == [0.25, 0.5, 1.0] and seen == [w for w, _, _ in terms]
    sum(loss for _, loss, _ in terms).backward()
    engine = model.engine
    assert engine.flops_per_call(width=0.25)[0] < engine.flops_per_call(width=1.0)[0]
    # sampled under a step policy: the noisy steps (log-SNR below 0) at width 0.25, the rest at full width
    policy = Widths(StepPolicy([LevelPolicy([0.0], [0.25, 1.0])]))
    seen.clear()
    engine.sample(2, "dpmpp_2m", 6, labels=torch.tensor([1, 2]), wrappers=[policy])
    assert set(seen) == {0.25, 1.0} and sum(policy.calls[0].values()) == 2 * 6


OWN_TRANSFORMERS = [f"{family}_{body}_{size}" for family in ("pixel", "pyramid", "latent") for body in ("dit", "hdit")
                    for size in (32, 64, 128)]  # fmt: skip


@pytest.mark.parametrize("name", OWN_TRANSFORMERS)
def test_the_own_data_transformer_configs_build_bodies_whose_tokens_do_not_grow_with_the_image(
    name, digits_shards, monkeypatch
):
    """A DiT keeps 256 tokens per level (64 at an 8x8 latent or level), an hourglass keeps its global bottom stage
    at 8x8 tokens or fewer; both train with soft-min-SNR. Pixel and pyramid configs are built as ``fit`` builds them;
    a latent config's body is built at its autoencoder's 4 x s/4 x s/4 latent (the autoencoder is not trained here)."""
    from omegaconf import OmegaConf

    from pyramid_dm.cli import expand_defaults, make_cli
    from pyramid_dm.nets import NETWORKS
    from pyramid_dm.nets.registry import NetSpec

    family, body, size = name.split("_")
    config = ROOT / "configs" / "own" / f"{name}.yaml"
    if family == "latent":
        args = OmegaConf.load(config).model.init_args
        assert args.loss_weighting == "soft_min_snr"
        latent = int(size) // 4
        net = NETWORKS.get(args.network)(NetSpec((4,), (latent,), (0,), 3), **OmegaConf.to_container(args.unet))
        sizes = [latent]
    else:
        monkeypatch.setattr("sys.argv", ["pyramid_dm"])  # the arguments are given below, not pytest's
        args = expand_defaults(["--config", str(config), "--data.init_args.shards", str(digits_shards)])
        cli = make_cli(subcommands=False, run=False, args=args)
        net = cli.model.engine.net
        sizes = [s for _, s, _ in cli.model.engine.level_shapes]
        assert cli.model.hparams.loss_weighting == "soft_min_snr"
    grids = [s // p for s, p in zip(sizes, net.patches)]
    if body == "dit":
        assert type(net).__name__ == "DiT" and len(net.blocks) == 12
        assert [g * g for g in grids] == [min(256, s * s) for s in sizes], grids
    else:
        assert type(net).__name__ == "HourglassDiT"
        assert all(g >> len(net.down) <= 8 for g in grids), grids
