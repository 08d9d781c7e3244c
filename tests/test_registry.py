"""The registry mechanism (one home for every variant's name) and the review's defects fixed with it (issue 25)."""

from __future__ import annotations

import copy

import pytest
import torch

from pyramid_dm.diffusion import SAMPLERS, SamplerSpec, build_schedule, nfe, sample
from pyramid_dm.diffusion.samplers.core import ddim
from pyramid_dm.engine import BoundEngine
from pyramid_dm.models import PixelDiffusion
from pyramid_dm.nets import UNet
from pyramid_dm.nets.slimmable import use_width
from pyramid_dm.registry import Registry, load_plugins

SCHEDULE = build_schedule("cosine", 1000)
TINY = dict(base_channels=8, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[], norm_groups=4)


def test_a_registry_names_its_parts_and_refuses_unknown_and_duplicate_names():
    reg = Registry("widget", {"a": 1})
    reg.register("b", 2)

    @reg.register("c")
    def c():
        return 3

    assert sorted(reg) == ["a", "b", "c"] and reg["c"] is c and "b" in reg and "z" not in reg and len(reg) == 3
    with pytest.raises(ValueError, match=r"unknown widget 'z'; choose one of \['a', 'b', 'c'\].*PYRAMID_DM_PLUGINS"):
        reg.lookup("z")
    with pytest.raises(KeyError, match="unknown widget 'z'"):
        reg["z"]
    with pytest.raises(ValueError, match="widget 'a' is registered already"):
        reg.register("a", 5)
    reg.register("a", 5, replace=True)
    assert reg["a"] == 5


def test_plugins_are_imported_from_the_variable_and_a_missing_one_is_named(monkeypatch, tmp_path):
    (tmp_path / "my_widgets.py").write_text("from pyramid_dm.registry import Registry\nLOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYRAMID_DM_PLUGINS", " my_widgets , ")
    assert load_plugins() == ["my_widgets"]
    monkeypatch.setenv("PYRAMID_DM_PLUGINS", "no_such_plugin_module")
    with pytest.raises(ValueError, match="PYRAMID_DM_PLUGINS: cannot import plug-in module 'no_such_plugin_module'"):
        load_plugins()


def test_one_sampler_record_holds_its_function_grid_and_nfe_rule_with_its_own_defaults():
    assert SAMPLERS["heun"].grid == "karras" and nfe("heun", 5) == 9
    assert SAMPLERS["ald"].options == {"step_size": None, "n_steps_each": 5, "final_denoise": True}
    assert nfe("ald", 10) == 51 and nfe("ald", 10, n_steps_each=2, final_denoise=False) == 20  # defaults: ald's own
    assert nfe("pc", 4) == 8 and nfe("pc", 4, corrector_steps=2) == 12
    # a new sampler is one function and one registration; nothing else knows its name
    SAMPLERS.register("ddim_again", SamplerSpec(ddim, "trailing"))
    try:
        x = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
        ours = sample(lambda x, s: x * 0, x, SCHEDULE, "ddim_again", 5)
        assert torch.allclose(ours, sample(lambda x, s: x * 0, x, SCHEDULE, "ddim", 5, discretization="trailing"))
    finally:
        SAMPLERS._parts.pop("ddim_again")


def test_a_networks_own_type_error_surfaces_as_itself():
    def broken(x, sigma):  # e.g. a network called with a keyword it does not take
        raise TypeError("forward() got an unexpected keyword argument 'context'")

    with pytest.raises(TypeError, match="forward\\(\\) got an unexpected keyword argument 'context'"):
        sample(broken, torch.zeros(2, 1, 2, 2), SCHEDULE, "ddim", 3)
    with pytest.raises(ValueError, match=r"sampler 'ddim' does not take these options: \['bogus'\] \(its options: "):
        sample(broken, torch.zeros(2, 1, 2, 2), SCHEDULE, "ddim", 3, bogus=1)


def test_a_plain_network_refuses_an_ambient_width_instead_of_running_a_slice_of_itself():
    plain = UNet(1, **TINY)
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    with use_width(0.5), pytest.raises(ValueError, match="width 0.5 asked of a network that is not slimmable"):
        plain(x, t)
    supernet = UNet(1, **TINY, width_multipliers=[1.0, 0.5])
    with use_width(0.5):
        supernet(x, t)
    with use_width(0.25), pytest.raises(ValueError, match=r"width 0.25 is not one of this network's widths"):
        supernet(x, t)


def test_a_bound_engine_runs_its_own_network_for_the_loss_and_refuses_training_calls():
    model = PixelDiffusion(8, 1, unet=TINY)
    engine = model.engine
    other = copy.deepcopy(engine.net)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1)
    bound = BoundEngine(engine, other)
    images, labels = torch.randn(3, 1, 8, 8), torch.zeros(3, dtype=torch.long)
    seeds = torch.arange(3)
    assert torch.equal(bound.seeded_loss(images, labels, seeds), engine.seeded_loss(images, labels, seeds, net=other))
    assert not torch.equal(bound.seeded_loss(images, labels, seeds), engine.seeded_loss(images, labels, seeds))
    u, noise = torch.rand(3), torch.randn(3, 1, 8, 8)
    assert torch.equal(bound.loss(images, labels, u, noise), engine.loss(images, labels, u, noise, net=other))
    with pytest.raises(AttributeError, match="training_loss trains the engine's own network"):
        bound.training_loss(images, labels)
    assert bound.flops_per_call(1.0) == engine.flops_per_call(1.0, other) == engine.flops_per_call(width=1.0)


def test_a_network_option_it_does_not_take_is_one_line_naming_the_network():
    from pyramid_dm.errors import UserError
    from pyramid_dm.models import PixelDiffusion

    with pytest.raises(UserError, match=r"model.unet \(the options of network 'unet'\): .*base_channel"):
        PixelDiffusion(8, 1, unet={"base_channel": 8})  # a typo of base_channels
    with pytest.raises(UserError, match=r"model: unknown network 'transformer'; choose one of \[.*'unet'.*\]"):
        PixelDiffusion(8, 1, network="transformer")
