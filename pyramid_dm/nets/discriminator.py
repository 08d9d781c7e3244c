"""PatchGAN discriminator (Isola et al. 2017, pix2pix; the ``NLayerDiscriminator`` VQGAN trains against).

A stack of stride-2 convolutions (3x3 stride-1 ones at the end, so 8x8 inputs work too) ending in one logit per
overlapping patch; GroupNorm instead of BatchNorm, so its statistics do not depend on the batch split across ranks.
"""

from __future__ import annotations

from torch import Tensor, nn

from .unet import group_norm


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = base_channels
        for i in range(1, num_layers + 1):
            out = base_channels * min(2**i, 8)
            conv = nn.Conv2d(ch, out, 4, 2, 1, bias=False) if i < num_layers else nn.Conv2d(ch, out, 3, 1, 1)
            layers += [conv, group_norm(out), nn.LeakyReLU(0.2)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
