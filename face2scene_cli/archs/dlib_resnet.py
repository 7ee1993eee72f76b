"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``) in torch.

The network Davis King trained for dlib 19.3 (``dnn_face_recognition_ex.cpp``: a ResNet-34
variant with a few layers dropped and half the filters; 99.38% on LFW), ported so the
identity embeddings run on torch's multi-threaded convolutions instead of dlib's
single-threaded ones (74 ms a face here), with the same outputs:

* input: a 150x150 RGB face chip (dlib's ``get_face_chip_details(shape, 150, 0.25)``), each
  channel minus dlib's mean (122.782, 117.001, 104.298) and divided by 256;
* stem: 7x7 conv, stride 2, no padding (150 -> 72), affine, ReLU, 3x3 max pool, stride 2
  (-> 35);
* 14 residual blocks in five levels (32 x 3, 64 x 4, 128 x 3, 256 x 3, 256 x 1 channels);
  a block is 3x3 conv, affine, ReLU, 3x3 conv, affine, plus its input, ReLU. The first block
  of every level but the first halves the resolution: its first conv has stride 2 and no
  padding, and its input is 2x2 average-pooled for the sum. dlib adds tensors of different
  shapes by zero-padding the smaller one at the high-index end of each dimension (more
  channels; at 8 -> 3 vs 4 and 4 -> 1 vs 2 px the conv branch is smaller), so this does too;
* global average pool, then a 256 -> 128 linear map without bias: the embedding (not
  normalised; same person below a euclidean distance of 0.6).

dlib's ``affine`` layers (its batch norms, frozen) are folded into the convolution before
them by ``scripts/convert_dlib_resnet.py``, so every conv here has a bias. Weights:
``models/dlib-resnet-v1``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor

from face2scene_cli.errors import ConfigError

__all__ = ["DlibFaceResNet", "ResidualBlock", "add_padded"]


def add_padded(a: Tensor, b: Tensor) -> Tensor:
    """``a + b`` the way dlib's ``add_prev`` adds tensors of different shapes: the result has
    the larger size in every dimension and the smaller tensor counts as zero outside itself
    (it sits at index 0 of every dimension).

    Args:
        a, b: (B, C, H, W) with equal B.
    """
    if a.shape == b.shape:
        return a + b
    shape = [max(x, y) for x, y in zip(a.shape, b.shape, strict=True)]
    out = a.new_zeros(shape)
    out[:, : a.shape[1], : a.shape[2], : a.shape[3]] += a
    out[:, : b.shape[1], : b.shape[2], : b.shape[3]] += b
    return out


class ResidualBlock(nn.Module):
    """conv, ReLU, conv (affines folded in), plus the input (2x2 average-pooled when the
    block halves the resolution), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool) -> None:
        super().__init__()
        stride = 2 if downsample else 1
        # dlib pads a convolution by half its size only at stride 1
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1 - (stride - 1))
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        skip = F.avg_pool2d(x, 2, 2) if self.downsample else x
        return F.relu(add_padded(skip, y))


class DlibFaceResNet(ModelMixin, ConfigMixin):
    r"""dlib's face-recognition ResNet (see the module docstring).

    Args:
        input_size: the chip side the network was trained on (150).
        mean_rgb: dlib's per-channel input mean, in 0-255 levels.
        input_scale: the divisor after the mean (256).
        stem_channels: the 7x7 stem's filters (32).
        level_channels: filters of each level's blocks, input side first.
        level_blocks: blocks in each level; every level but the first starts with a
            downsampling block.
        embedding_dim: the embedding's size (128).
    """

    @register_to_config
    def __init__(
        self,
        input_size: int = 150,
        mean_rgb: tuple[float, float, float] = (122.782, 117.001, 104.298),
        input_scale: float = 256.0,
        stem_channels: int = 32,
        level_channels: tuple[int, ...] = (32, 64, 128, 256, 256),
        level_blocks: tuple[int, ...] = (3, 4, 3, 3, 1),
        embedding_dim: int = 128,
    ) -> None:
        super().__init__()
        if len(level_channels) != len(level_blocks) or min(level_blocks, default=0) < 1:
            raise ConfigError(
                f"level_channels {level_channels} and level_blocks {level_blocks} must have "
                "equal lengths and >= 1 block a level"
            )
        self.stem = nn.Conv2d(3, stem_channels, 7, 2)
        blocks = []
        channels = stem_channels
        for level, (width, count) in enumerate(zip(level_channels, level_blocks, strict=True)):
            for i in range(count):
                blocks.append(ResidualBlock(channels, width, downsample=level > 0 and i == 0))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels, embedding_dim, bias=False)
        self.register_buffer(
            "mean", torch.tensor(mean_rgb, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )

    def forward(self, chips: Tensor) -> Tensor:
        """Embed face chips.

        Args:
            chips: (B, 3, S, S) RGB float in 0-255 levels (uint8 values), S = ``input_size``.

        Returns:
            (B, ``embedding_dim``) float embeddings.
        """
        x = (chips - self.mean) / self.config.input_scale
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))
