"""Sampling wrappers (issue 25): the engine applies them in the order their positions declare, so NFE, width and
classifier-call accounting come out the same whatever order a caller lists them in."""

from __future__ import annotations

import itertools

import pytest
import torch

from pyramid_dm.diffusion import nfe as sampler_nfe
from pyramid_dm.engine import ClassifierGuide
from pyramid_dm.engine.step_policy import LevelPolicy, StepPolicy
from pyramid_dm.engine.wrappers import Count, Guidance, Replace, SamplingWrapper, Widths, ordered
from pyramid_dm.errors import UserError
from pyramid_dm.models import NoisyClassifier, PixelDiffusion, PyramidDiffusion

UNET = dict(base_channels=16, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[], norm_groups=8)
CLASSIFIER = dict(base_channels=8, channel_mult=[1, 2], norm_groups=4)


@pytest.fixture(scope="module")
def guide(tmp_path_factory) -> ClassifierGuide:
    """An (untrained) noise-conditional classifier read back from its checkpoint as the commands read it."""
    torch.manual_seed(1)
    clf = NoisyClassifier(8, 1, num_classes=3, net=CLASSIFIER)
    ckpt = {"state_dict": clf.state_dict(), "hyper_parameters": dict(clf.hparams), "global_step": 0}
    clf.on_save_checkpoint(ckpt)
    path = tmp_path_factory.mktemp("clf") / "clf.ckpt"
    torch.save(ckpt, path)
    return ClassifierGuide(path, 0.5)


def test_counts_are_the_same_in_every_wrapper_order(guide):
    torch.manual_seed(0)
    model = PixelDiffusion(8, 1, num_classes=3, label_dropout=0.1, unet=UNET, step_aware={"widths": [1.0, 0.5]})
    engine = model.engine.eval()
    engine.fit_latent_scale(torch.randn(4, 1, 8, 8))
    labels, steps = torch.tensor([0, 1, 2, 0]), 4
    policy = StepPolicy([LevelPolicy([0.0], [0.5, 1.0])])  # noisy calls at half width
    seen = []
    for order in itertools.permutations(range(4)):
        widths, count = Widths(policy), Count()
        parts = [Guidance(3.0), guide, widths, count]
        g = torch.Generator().manual_seed(0)
        images = engine.sample(4, "heun", steps, labels, g, wrappers=[parts[i] for i in order])
        seen.append((images, count.nfe, dict(widths.calls[0]), guide.calls))
    calls = sampler_nfe("heun", steps)
    for images, nfe, per_width, clf_calls in seen:
        assert torch.equal(images, seen[0][0])
        assert nfe == [2 * calls]  # two evaluations per guided step, batched or not
        assert per_width == seen[0][2] and set(per_width) == {0.5, 1.0} and sum(per_width.values()) == 2 * calls * 4
        assert clf_calls == calls  # one gradient per denoiser call of the sampler


def test_order_is_by_position_and_stable():
    class Mine(SamplingWrapper):
        position = 25  # between counting and guidance: a cache would go here

    a, b, mine, count = Guidance(2.0), Guidance(3.0), Mine(), Count()
    assert ordered([b, mine, a, count]) == [count, mine, b, a]
    with pytest.raises(TypeError, match="is not a sampling wrapper"):
        ordered([lambda den, level: den])


def test_replace_is_single_level_and_guidance_is_checked_before_sampling():
    model = PyramidDiffusion(8, 1, resolutions=[4, 8], unet=UNET)
    with pytest.raises(UserError, match="replaces a single level's denoiser"):
        model.engine.sample(1, wrappers=[Replace(lambda x, sigma, **c: x)])
    with pytest.raises(UserError, match="guidance -1.0 .*needs a class-conditional model"):
        model.engine.sample(1, wrappers=[Guidance(-1.0)])
    conditional = PixelDiffusion(8, 1, num_classes=3, label_dropout=0.1, unet=UNET)
    with pytest.raises(UserError, match="guidance scale must be >= 0"):
        conditional.engine.sample(1, labels=torch.tensor([0]), wrappers=[Guidance(-1.0)])
