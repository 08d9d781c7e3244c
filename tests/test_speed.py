"""The training-speed switches (``model.speed``): each leaves the training step's loss and gradients as the eager
fp32 step computes them, on every body, at every width of a supernet; and the attention every body calls equals
attention written out, whichever SDPA kernel runs it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from pyramid_dm.errors import UserError
from pyramid_dm.models import PixelDiffusion
from pyramid_dm.models.speed import apply_speed
from pyramid_dm.nets.checkpointing import CheckpointWrapper

BODIES = {
    "unet": {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4],
             "num_heads": 2, "norm_groups": 8},
    "dit": {"hidden_size": 32, "depth": 2, "num_heads": 4, "patch_size": 2},
    "hdit": {"widths": [32, 64], "depths": [1, 1], "head_dim": 8, "patch_size": 1, "window": 2, "mapping_width": 32},
}  # fmt: skip
IMAGES, LABELS = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, -1])


def tiny(network: str, **kw) -> PixelDiffusion:
    torch.manual_seed(0)
    model = PixelDiffusion(8, 1, num_classes=10, network=network, unet=BODIES[network], **kw)
    # a trained network, not adaLN-Zero's identity at initialisation, whose zero output would hide a wrong gradient
    with torch.no_grad():
        for p in model.engine.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def step(model: PixelDiffusion) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One step's per-width losses (the sandwich rule for a supernet) and the summed gradients, same draws."""
    model.engine.net.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    out = model.engine.objective.step(model.engine, IMAGES, LABELS)
    out.total.backward()
    losses = torch.stack([v for k, v in sorted(out.logs.items()) if k.startswith("train/loss")])
    return losses, [p.grad.clone() for p in model.engine.net.parameters()]


def assert_same_step(a, b, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(a[0], b[0], rtol=rtol, atol=atol)
    for ga, gb in zip(a[1], b[1], strict=True):
        torch.testing.assert_close(ga, gb, rtol=rtol, atol=atol)


@pytest.mark.parametrize("network", sorted(BODIES))
def test_activation_checkpointing_and_channels_last_leave_every_widths_step_unchanged(network):
    """A step-aware supernet (widths 1, 0.5): the sandwich step with each block recomputed in the backward pass, in
    NHWC, equals the plain step: so the recomputation ran at the width its forward pass ran at. The checkpoint's
    keys are unchanged, and a plain module loads it."""
    model = tiny(network, step_aware={"widths": [1.0, 0.5]})
    plain = step(model)
    fast = copy.deepcopy(model)
    done = apply_speed(fast.engine.net, {"activation_checkpointing": True, "channels_last": True}, fast.ema.module)
    wrapped = sum(isinstance(m, CheckpointWrapper) for m in fast.engine.net.modules())
    assert wrapped >= 2 and f"activation_checkpointing({wrapped} blocks)" in done and "channels_last" in done
    recomputed, calls = [], []
    fast.engine.net.register_forward_pre_hook(lambda *_: calls.append(1))
    for m in fast.engine.net.modules():
        if isinstance(m, CheckpointWrapper):
            m._checkpoint_wrapped_module.register_forward_pre_hook(lambda *_: recomputed.append(1))
    assert_same_step(plain, step(fast))
    assert len(recomputed) == 2 * len(calls) * wrapped  # every block of every call, run again in the backward pass
    assert list(fast.state_dict()) == list(model.state_dict())
    tiny(network, step_aware={"widths": [1.0, 0.5]}).load_state_dict(fast.state_dict())


def test_a_compiled_network_steps_as_the_eager_one():
    """``compile``: the UNet captured by TorchDynamo into whole graphs, forward and backward traced by AOTAutograd
    (``aot_eager``: the capture a GPU's inductor build starts from, without the C++ compiles that take minutes on
    this CPU; ``bench train`` times inductor), gives the eager loss and gradients, and the state dict keeps its keys
    (a compiled run's checkpoint loads into an eager module)."""
    from torch._dynamo.utils import counters

    model = tiny("unet")
    eager = step(model)
    fast = copy.deepcopy(model)
    torch._dynamo.reset()
    counters.clear()
    assert apply_speed(fast.engine.net, {"compile": True, "compile_options": {"backend": "aot_eager"}}) == [
        "compile{'backend': 'aot_eager'}"
    ]
    assert_same_step(eager, step(fast))
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"]
    assert list(fast.state_dict()) == list(model.state_dict())


def test_bad_speed_settings_are_clear_errors():
    with pytest.raises(UserError, match=r"model.speed has unknown key\(s\) \['compiled'\]"):
        tiny("dit", speed={"compiled": True})
    with pytest.raises(UserError, match="model.speed.matmul_precision 'tf32' is not one of"):
        tiny("dit", speed={"matmul_precision": "tf32"})


def written_out_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("network", sorted(BODIES))
def test_every_bodys_attention_is_softmax_attention_under_the_flash_and_the_math_kernel(network, monkeypatch):
    """Each body's attention calls ``scaled_dot_product_attention``; forced onto the flash kernel (the CPU one here,
    the one a GPU runs where it can) and onto the math kernel, the network's output equals the one from attention
    written out. The hourglass's shifted windows pass a mask, which flash kernels do not take: there the
    memory-efficient or math kernel runs (``bench train`` reports which kernels a GPU allows)."""
    model = tiny(network)
    net, x, t = model.engine.net.eval(), torch.randn(2, 1, 8, 8), torch.rand(2)
    calls = []

    def sdpa(q, k, v, attn_mask=None, **kw):
        calls.append(attn_mask is not None)
        return written_out_attention(q, k, v, attn_mask)

    with torch.no_grad():
        with monkeypatch.context() as m:
            m.setattr(F, "scaled_dot_product_attention", sdpa)
            reference = net(x, t)
        assert calls, "the body never called scaled_dot_product_attention"
        # flash where it can run (no mask), math where it cannot
        for kernels in ([SDPBackend.MATH], [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]):
            with sdpa_kernel(kernels, set_priority=True):
                torch.testing.assert_close(net(x, t), reference, rtol=1e-5, atol=1e-5)


def test_a_compiled_checkpointed_supernet_steps_as_the_eager_one_at_every_width():
    """``compile`` with ``activation_checkpointing`` on a step-aware DiT: the width is read from the traced-width
    mirror inside the graph (not the context variable Dynamo cannot trace), each width compiles its own graphs, and
    every width's loss and gradients equal the eager step's."""
    from torch._dynamo.utils import counters

    model = tiny("dit", step_aware={"widths": [1.0, 0.5]})
    eager = step(model)
    fast = copy.deepcopy(model)
    torch._dynamo.reset()
    counters.clear()
    speed = {"compile": True, "compile_options": {"backend": "aot_eager"}, "activation_checkpointing": True}
    apply_speed(fast.engine.net, speed)
    assert_same_step(eager, step(fast))
    assert not counters["graph_break"] and counters["stats"]["unique_graphs"] == 2  # one graph per width
