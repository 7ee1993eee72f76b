"""The adversarial critic of the scene trainer (``train.w_gan > 0``): a U-Net discriminator
with spectral normalisation, as Real-ESRGAN trains its x4plus model with (Wang et al. 2021,
``UNetDiscriminatorSN``), trained here from scratch, so no downloaded weights are needed.

A pixel loss alone rewards the average of what a heavy degradation leaves ambiguous (the
learned x4 upscaler's outputs had 0.13-0.17 of the truth's gradient energy); a critic that
says, per pixel, whether a patch looks like a clean photo pushes the restorer off that
average. It is used in training only and never exported.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["UNetDiscriminator", "critic_losses"]


class UNetDiscriminator(nn.Module):
    """Per-pixel realness logits of an RGB batch.

    Three stride-2 steps down, three up with skip connections, then two 3x3 layers: each
    output pixel judges its own neighbourhood and the image's coarse structure.

    Args:
        channels: width of the first level (64 in Real-ESRGAN; x2, x4, x8 below it).
    """

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        c = channels
        self.conv0 = nn.Conv2d(3, c, 3, 1, 1)
        self.down = nn.ModuleList(
            spectral_norm(nn.Conv2d(a, b, 4, 2, 1, bias=False))
            for a, b in ((c, 2 * c), (2 * c, 4 * c), (4 * c, 8 * c))
        )
        self.up = nn.ModuleList(
            spectral_norm(nn.Conv2d(a, b, 3, 1, 1, bias=False))
            for a, b in ((8 * c, 4 * c), (4 * c, 2 * c), (2 * c, c))
        )
        self.head = nn.Sequential(
            spectral_norm(nn.Conv2d(c, c, 3, 1, 1, bias=False)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(c, c, 3, 1, 1, bias=False)),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c, 1, 3, 1, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x``: :math:`(B, 3, H, W)` in [0, 1], H and W multiples of 8 -> logits
        :math:`(B, 1, H, W)` (positive: looks clean)."""
        feats = [F.leaky_relu(self.conv0(x * 2 - 1), 0.2)]
        for conv in self.down:
            feats.append(F.leaky_relu(conv(feats[-1]), 0.2))
        y = feats.pop()
        for conv in self.up:
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
            y = F.leaky_relu(conv(y), 0.2) + feats.pop()
        return self.head(y)


def critic_losses(critic: nn.Module, fake: Tensor, real: Tensor) -> tuple[Tensor, Tensor]:
    """The non-saturating GAN losses of a batch: (the restorer's, the critic's).

    The restorer's term reaches the restorer's weights through ``fake`` (the critic's own
    weights get no gradient from it); the critic's term sees ``fake`` detached. Both are
    binary cross-entropies on the logits, averaged over pixels.
    """

    def logits(x: Tensor) -> Tensor:
        return critic(x).float()  # the losses in fp32 under autocast

    critic.requires_grad_(False)
    g_loss = F.softplus(-logits(fake)).mean()
    critic.requires_grad_(True)
    d_loss = F.softplus(-logits(real)).mean() + F.softplus(logits(fake.detach())).mean()
    return g_loss, d_loss
