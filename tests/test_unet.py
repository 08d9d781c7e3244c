import pytest
import torch

from pyramid_dm.nets import UNet
from pyramid_dm.nets.unet import SelfAttention


def test_ddpm_cifar_layout_has_the_published_parameter_count():
    net = UNet(
        3, image_size=32, base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16,)
    )
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(35.7e6, rel=0.005)


def test_shapes_attention_placement_and_gradients():
    net = UNet(
        3,
        image_size=16,
        base_channels=16,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        dropout=0.1,
    )
    attn = [name for name, m in net.named_modules() if isinstance(m, SelfAttention)]
    assert sorted(attn) == ["down.1.attn.0", "mid_attn", "up.1.attn.0", "up.1.attn.1"]  # 8 px level + middle
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    y = net(x, torch.rand(4))
    assert y.shape == x.shape
    y.square().mean().backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is not None for p in net.parameters())


def test_noise_level_and_class_embedding_change_the_output():
    torch.manual_seed(0)
    net = UNet(
        1,
        image_size=8,
        base_channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(),
        num_classes=10,
    ).eval()
    for p in net.parameters():  # zero-initialised nothing, but make sure the output layer is non-trivial
        p.data.add_(0.01 * torch.randn_like(p))
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([0.3, 0.3])
    base = net(x, t, torch.tensor([1, 1]))
    assert not torch.allclose(base, net(x, t, torch.tensor([2, 2])))
    assert not torch.allclose(base, net(x, torch.tensor([0.7, 0.7]), torch.tensor([1, 1])))
    assert torch.allclose(net(x, t), net(x, t, torch.tensor([10, 10])))  # no label = the null class


def test_bad_layout_is_a_clear_error():
    with pytest.raises(ValueError, match="image_size 18 is not divisible by 2\\^2"):
        UNet(3, image_size=18, channel_mult=(1, 2, 2))
