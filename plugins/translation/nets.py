"""Small convolutional networks for 28x28-scale images that take and return *flat* points.

- ``UNetMap``: a two-level UNet (conv blocks at full, 1/2 and 1/4 resolution, skip connections) from
  ``[n, (C + z_channels) * H * W]`` to ``[n, C * H * W]``; the extra channels carry the weak NOT's noise. Its
  output layer starts at zero (used as the residual of x + UNet(x), the map starts as the identity).
  H and W must be divisible by 4 (28 and 16 are).
- ``ResNetPotential``: a ResNet-like scalar potential: a stem conv, ``blocks`` residual blocks with a stride-2
  downsampling between them and a linear head over every location of the last feature map (not a global
  average: pooling divides the potential's pixel gradients by the number of locations, and NOT's map moves
  by exactly those gradients, so short runs barely left the identity): ``[n, C * H * W] -> [n, 1]``.
Both are size-agnostic (any H, W divisible by 4), without normalisation layers (so train and eval modes agree).
"""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1), nn.SiLU())


class UNetMap(nn.Module):
    """Flat images (plus optional noise channels) -> flat images of ``shape``; a small two-level UNet."""

    def __init__(self, shape: tuple[int, int, int], channels: int = 16, z_channels: int = 0) -> None:
        super().__init__()
        c, h, w = shape
        if h % 4 or w % 4:
            raise ValueError(f"UNetMap needs H and W divisible by 4, got {h}x{w}")
        self.shape, self.z_channels = (c, h, w), z_channels
        ch = channels
        self.enc1 = _block(c + z_channels, ch)
        self.enc2 = _block(ch, 2 * ch)
        self.mid = _block(2 * ch, 4 * ch)
        self.up2 = nn.ConvTranspose2d(4 * ch, 2 * ch, 2, stride=2)
        self.dec2 = _block(4 * ch, 2 * ch)
        self.up1 = nn.ConvTranspose2d(2 * ch, ch, 2, stride=2)
        self.dec1 = _block(2 * ch, ch)
        self.out = nn.Conv2d(ch, c, 1)
        # zero-initialised output: as the residual of a map x + UNet(x), training starts from the identity
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        c, h, w = self.shape
        x = flat.reshape(flat.shape[0], c + self.z_channels, h, w)
        e1 = self.enc1(x)
        e2 = self.enc2(nn.functional.avg_pool2d(e1, 2))
        m = self.mid(nn.functional.avg_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.out(d1).reshape(flat.shape[0], c * h * w)


class _Residual(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNetPotential(nn.Module):
    """Flat images -> one scalar each ``[n, 1]``: stem conv, residual blocks with stride-2 downsampling, linear head."""

    def __init__(self, shape: tuple[int, int, int], channels: int = 16, blocks: int = 3) -> None:
        super().__init__()
        c, h, w = shape
        self.shape = (c, h, w)
        layers: list[nn.Module] = [nn.Conv2d(c, channels, 3, padding=1)]
        ch = channels
        for i in range(blocks):
            layers.append(_Residual(ch))
            if i < blocks - 1:  # downsample between blocks, doubling the width
                layers.append(nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1))
                ch *= 2
        layers.append(nn.SiLU())
        body = nn.Sequential(*layers)
        with torch.no_grad():  # the head sees every location: its input size follows the image size
            width = body(torch.zeros(1, c, h, w)).numel()
        self.net = nn.Sequential(body, nn.Flatten(), nn.Linear(width, 1))

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        return self.net(flat.reshape(flat.shape[0], *self.shape))
