"""Few-step generation: the consistency function's boundary, ECT's gap schedule, MeanFlow's JVP target (against finite
differences and the closed-form average velocity of Gaussian data), the few-step samplers, and a two-rank DDP
MeanFlow step (ranks agree with each other and with one process on the whole batch)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from pyramid_dm.bench.ddp import free_port
from pyramid_dm.diffusion import Denoiser, build_schedule, sample
from pyramid_dm.diffusion.samplers.few_step import consistency, meanflow
from pyramid_dm.diffusion.training.consistency import ConsistencyFunction, GapSchedule, ect_loss, lognormal_sigma
from pyramid_dm.diffusion.training.meanflow import AverageVelocity, TimeSampler, check_times, meanflow_target, velocity
from pyramid_dm.engine.few_step import MeanFlow, MeanFlowSettings
from pyramid_dm.nets import UNet

TINY = dict(base_channels=16, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[4], norm_groups=8)


def tiny_unet(**kw) -> UNet:
    torch.manual_seed(0)
    net = UNet(in_channels=1, image_size=8, num_classes=3, **TINY, **kw)
    with torch.no_grad():  # zero-initialised output layers would hide every bug: give every weight a value
        for p in net.parameters():
            p.normal_(0, 0.2) if p.ndim > 1 else p.uniform_(-0.1, 0.1)
    return net


@pytest.mark.parametrize(
    "prediction,schedule", [("eps", "cosine"), ("v", "cosine"), ("edm", "edm"), ("flow", "flow"), ("x0", "linear")]
)
def test_the_consistency_function_is_the_identity_at_sigma_min_exactly(prediction, schedule):
    sched = build_schedule(schedule, 0 if schedule in ("flow", "edm") else 1000)
    f = ConsistencyFunction(Denoiser(tiny_unet(), sched, prediction))
    x = torch.randn(4, 1, 8, 8) * 3
    lo = f.sigma_min
    sigma = torch.tensor([lo, lo / 2, lo * 1.5, 3.0], dtype=torch.float64)
    out = f(x, sigma)
    assert torch.equal(out[:2], x[:2])  # at and below sigma_min: x itself, bit for bit
    assert not torch.allclose(out[2:], x[2:])  # above it the network acts
    d = f.denoiser(x, sigma)  # and far above it f tends to the teacher's denoiser (kappa -> 1)
    kappa = (3.0 - lo) / 3.0
    torch.testing.assert_close(out[3], x[3] + kappa * (d[3] - x[3]))
    assert torch.equal(f(x, torch.tensor(lo, dtype=torch.float64)), x)  # a 0-d sigma too


def test_ect_gap_schedule_halves_and_zero_gap_runs_are_refused():
    gaps = GapSchedule(q=2, k=8, b=1, double_every=100)
    t = torch.tensor([0.05, 1.0, 20.0], dtype=torch.float64)
    r0, r3 = gaps.r(t, 0), gaps.r(t, 3)
    adj = 1 + 8 * torch.sigmoid(-t)
    torch.testing.assert_close(r3, (t * (1 - adj / 16)).clamp(min=0))  # ECT's t_to_r_sigmoid at stage 3
    assert (r0[:2] == 0).all() and r0[2] > 9.9  # stage 0: r = 0 (pre-training) while adj > 2, i.e. t below ~2.9
    assert ((t - r3) / t * 2 - (t - gaps.r(t, 4)) / t * 4).abs().max() < 1e-12  # the gap halves per stage
    assert gaps.stage(250) == 2
    end = gaps.last_useful_step()
    assert 2.0 ** -(end // 100 + 1) <= 2**-23 < 2.0 ** -(end // 100)  # its stage is the first at float32's resolution
    gaps.check(end)  # up to the last useful step: fine
    with pytest.raises(ValueError, match=r"falls to float32 resolution at step 2200.*double_every to at least"):
        gaps.check(end + 1)
    with pytest.raises(ValueError, match="q must be > 1"):
        GapSchedule(q=1.0)


def test_ect_loss_is_the_l2_norm_or_pseudo_huber_over_the_gap():
    a, b = torch.zeros(2, 1, 2, 2), torch.full((2, 1, 2, 2), 0.5)  # ||a - b|| = 1 per sample
    t, r = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.0])
    torch.testing.assert_close(ect_loss(a, b, t, r), torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(ect_loss(a, b, t, r, huber_c=1.0), (math.sqrt(2) - 1) / torch.tensor([0.5, 1.0]))
    u = torch.tensor([0.5, 0.8413447460685429], dtype=torch.float64)  # Phi(0), Phi(1)
    torch.testing.assert_close(lognormal_sigma(u, -1.1, 2.0), torch.tensor([math.exp(-1.1), math.exp(0.9)]).double())


def test_meanflow_jvp_equals_a_central_finite_difference_in_float64():
    net = tiny_unet(interval_embedding=True).double()
    with torch.no_grad():
        net.interval_mlp[2].weight.normal_(0, 0.2)  # the interval input must matter too
    den = Denoiser(net, build_schedule("flow", 0), "flow")
    g = torch.Generator().manual_seed(1)
    z, v = torch.randn(3, 1, 8, 8, generator=g).double(), torch.randn(3, 1, 8, 8, generator=g).double()
    t = torch.tensor([0.9, 0.5, 0.3], dtype=torch.float64)
    r = torch.tensor([0.2, 0.5, 0.1], dtype=torch.float64)
    labels = torch.tensor([0, 1, 2])

    def fn(z_, r_, t_):
        return velocity(den, z_, r_, t_, class_labels=labels)

    u, target = meanflow_target(fn, z, r, t, v)
    h = 1e-7  # the time embedding's frequencies reach 1000 / unit t: a small step keeps the truncation error small
    fd = (fn(z + h * v, r, t + h) - fn(z - h * v, r, t - h)) / (2 * h)  # d/dt u along (v, 0, 1)
    expected = v - (t - r).reshape(-1, 1, 1, 1) * fd
    torch.testing.assert_close(target, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(u, fn(z, r, t))
    assert not target.requires_grad and u.requires_grad  # the target is detached, u keeps its graph
    torch.testing.assert_close(target[1], v[1])  # r = t: the target is the velocity itself


MU, STD = 0.7, 0.4  # data x0 ~ N(MU, STD^2) per pixel


def gaussian_flow(z, t):
    """Mean and std of z_t = (1 - t) x0 + t eps, and the marginal velocity E[eps - x0 | z_t]."""
    m, s = (1 - t) * MU, ((1 - t) ** 2 * STD**2 + t**2).sqrt()
    ds = ((t - 1) * STD**2 + t) / s  # d s / d t
    return m, s, -MU + ds / s * (z - m)  # the affine flow z_t = m(t) + s(t) w moves at dm/dt + ds/dt w


def gaussian_u(z, r, t):
    """The exact average velocity (z_t - z_r) / (t - r), z_r the ODE's point at r (the flow map is affine), r < t."""
    shape = (-1, *([1] * (z.ndim - 1)))
    t_, r_ = t.reshape(shape), r.reshape(shape)
    mt, st, _ = gaussian_flow(z, t_)
    mr, sr, _ = gaussian_flow(z, r_)
    return (z - (mr + sr / st * (z - mt))) / (t_ - r_)


def test_meanflow_target_equals_the_closed_form_average_velocity_on_gaussian_data():
    g = torch.Generator().manual_seed(2)
    t = torch.tensor([0.95, 0.6, 0.4, 0.8], dtype=torch.float64)
    r = torch.tensor([0.1, 0.3, 0.0, 0.79], dtype=torch.float64)
    z = torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64) * 0.8 + 0.2
    v = gaussian_flow(z, t.reshape(-1, 1, 1, 1))[2]
    u, target = meanflow_target(gaussian_u, z, r, t, v)
    torch.testing.assert_close(target, u, rtol=1e-9, atol=1e-10)  # the MeanFlow identity holds for the true u
    # and a wrong tangent (dt/dt = -1, a common sign slip) does not satisfy it
    with torch.no_grad():
        _, dudt = torch.func.jvp(lambda z_, t_: gaussian_u(z_, r, t_), (z, t), (v, -torch.ones_like(t)))
    assert (v - (t - r).reshape(-1, 1, 1, 1) * dudt - u).abs().max() > 1e-3
    # the flow sampler's one jump with the exact u lands where the ODE does
    z0 = z - (t - r).reshape(-1, 1, 1, 1) * u
    mt, st, _ = gaussian_flow(z, t.reshape(-1, 1, 1, 1))
    mr, sr, _ = gaussian_flow(z, r.reshape(-1, 1, 1, 1))
    torch.testing.assert_close(z0, mr + sr / st * (z - mt))


def test_meanflow_times_are_sorted_with_the_share_of_r_equal_t_and_bad_times_are_named():
    r, t = TimeSampler(-0.4, 1.0, 0.25).draw(20000, generator=torch.Generator().manual_seed(0))
    assert (r <= t).all() and (t < 1).all() and (r > 0).all()
    assert abs(float((r < t).float().mean()) - 0.25) < 0.02
    with pytest.raises(ValueError, match="r <= t"):
        check_times(torch.tensor([0.5, 0.6]), torch.tensor([0.7, 0.4]))
    with pytest.raises(ValueError, match="ratio"):
        TimeSampler(ratio=1.5)


class _Exact(nn.Module):  # a MeanFlow "network" that is the exact average velocity of the Gaussian data
    def forward(self, z, c_noise, class_labels=None, interval=None):
        t = c_noise.double()
        return gaussian_u(z.double(), t - interval.double(), t).float()

    def parameters(self, recurse=True):
        yield torch.zeros(1)


def test_the_meanflow_sampler_with_the_exact_average_velocity_samples_the_data_in_one_step():
    den = AverageVelocity(Denoiser(_Exact(), build_schedule("flow", 0), "flow"))
    sched = den.schedule
    torch.manual_seed(0)
    for steps in (1, 2):
        x = sample(den, torch.randn(4000, 1, 2, 2), sched, "meanflow", steps)
        assert abs(float(x.mean()) - MU) < 0.02 and abs(float(x.std()) - STD) < 0.02
    noise = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    sigmas = torch.tensor([1e6, 0.0], dtype=torch.float64)
    one = meanflow(den, noise, sigmas)
    t0 = 1e6 / (1 + 1e6)
    exact = noise - gaussian_u(noise, torch.zeros(3).double(), torch.full((3,), t0))
    torch.testing.assert_close(one, exact, rtol=1e-4, atol=1e-5)  # the network runs in float32


def test_the_consistency_sampler_calls_once_per_step_and_mid_sigmas_choose_the_levels():
    seen = []

    def f(x, sigma, **cond):
        seen.append(float(sigma))
        return torch.zeros_like(x) + 0.5

    x = torch.randn(2, 1, 4, 4)
    sigmas = torch.tensor([80.0, 5.0, 0.0], dtype=torch.float64)
    out = consistency(f, x, sigmas, mid_sigmas=[0.821], generator=torch.Generator().manual_seed(0))
    assert seen == [80.0, 0.821] and torch.equal(out, torch.full_like(out, 0.5).double())
    seen.clear()
    consistency(f, x, sigmas, stochastic=False)
    assert seen == [80.0, 5.0]
    with pytest.raises(ValueError, match="mid_sigmas"):
        consistency(f, x, sigmas, mid_sigmas=[1.0, 0.5])


# ---- DDP: the JVP inside the DDP-wrapped forward keeps gradient synchronisation ------------------------------------


class MeanFlowStep(nn.Module):
    """One MeanFlow loss on a batch with its draws given: what a training step runs inside the DDP-wrapped module."""

    def __init__(self):
        super().__init__()
        self.net = tiny_unet(interval_embedding=True)
        with torch.no_grad():
            self.net.interval_mlp[2].weight.normal_(0, 0.2)
        self.objective = MeanFlow(MeanFlowSettings())

    def forward(self, x0, noise, r, t, labels):
        f = AverageVelocity(Denoiser(self.net, build_schedule("flow", 0), "flow"))
        return self.objective.loss_at(f, x0, noise, r, t, class_labels=labels).mean()


def batch():
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(8, 1, 8, 8, generator=g), torch.randn(8, 1, 8, 8, generator=g)
    r, t = TimeSampler(ratio=0.75).draw(8, generator=g)
    return x0, noise, r, t, torch.arange(8) % 3


def sgd_step(model: nn.Module, loss_of) -> list[torch.Tensor]:
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    opt.zero_grad()
    loss_of().backward()
    opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _rank(rank: int, port: int, out: str, unwrapped: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    step = MeanFlowStep()
    ddp = DDP(step)
    half = [b[rank * 4 : (rank + 1) * 4] for b in batch()]
    # unwrapped: the public ports' slip, the loss (and its JVP) run on ddp.module outside DDP's forward
    weights = sgd_step(ddp, lambda: (ddp.module if unwrapped else ddp)(*half))
    torch.save(weights, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_a_two_rank_ddp_meanflow_step_leaves_identical_weights_equal_to_one_process(tmp_path):
    mp.spawn(_rank, args=(free_port(), str(tmp_path), False), nprocs=2, join=True)
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    single = sgd_step(one := MeanFlowStep(), lambda: one(*batch()))
    before = [p.detach() for p in MeanFlowStep().parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(single, before))  # the step moved the weights
    for a, b, c in zip(w0, w1, single):
        assert torch.equal(a, b)  # both ranks hold the same weights
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)  # = the single-process step on the whole batch
    # the control: the JVP of the unwrapped module never reaches DDP's reducer, and the ranks drift apart
    mp.spawn(_rank, args=(free_port(), str(tmp_path), True), nprocs=2, join=True)
    u0, u1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert any(not torch.allclose(a, b) for a, b in zip(u0, u1))


def test_guidance_folded_into_meanflow_mixes_the_null_class_velocity_for_labelled_samples_in_its_interval():
    net = tiny_unet(interval_embedding=True)
    f = AverageVelocity(Denoiser(net, build_schedule("flow", 0), "flow"))
    settings = MeanFlowSettings(guidance_scale=3.0, guidance_interval=(0.2, 0.9))
    objective = MeanFlow(settings, num_classes=3, label_dropout=0.1)
    g = torch.Generator().manual_seed(4)
    z, v = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([0.5, 0.5, 0.95, 0.3])
    labels = torch.tensor([1, 3, 2, 0])  # 3 = the null class (a label dropped this step)
    out = objective.target_velocity(f, z, t, v, {"class_labels": labels})
    u_null = velocity(f.denoiser, z, t, t, class_labels=torch.full_like(labels, 3)).detach()
    torch.testing.assert_close(out[[0, 3]], 3.0 * v[[0, 3]] + (1 - 3.0) * u_null[[0, 3]])
    torch.testing.assert_close(out[[1, 2]], v[[1, 2]])  # dropped label; t outside the interval
    with pytest.raises(ValueError, match="label_dropout > 0"):
        MeanFlow(settings, num_classes=3, label_dropout=0.0)
