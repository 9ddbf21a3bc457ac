"""Backbones: what turns an input into the feature map the key/value tokens are read from.

Each takes the input batch and returns features (B, d_backbone, *grid), with d_backbone =
`CTMConfig.d_backbone`: an image grid (H', W') or a sequence (L,). `build_backbone(config)` picks one:

* `tutorial`: the seed tutorial's two conv-BatchNorm-ReLU-maxpool blocks (the fast engine's backbone);
* `tutorial-s2d`: each 2x2 patch of pixels stacked into channels (space-to-depth), then the tutorial's two
  blocks at that half resolution, pooling only after the second: the same (H/4, W/4) grid as `tutorial`, with
  the first block at a quarter of the positions (a training step of its backbone takes 40 instead of 74 ms at
  batch 128 and width 64, 2 threads);
* `resnet<depth>-<stages>`: a ResNet of depth 18, 34, 50, 101 or 152 cut after 1..4 stages, with a 3x3 stem
  (stride 1) and a 1x1 convolution in front that maps the input's channels to 3, as the official CTM has it;
* `shallow-wide`: one strided and one grouped 3x3 convolution, each with a GLU and BatchNorm, 2048 wide;
* `sign-embedding`: an embedding of each +-1 entry of a sequence (B, L) -> (B, d_input, L) (the official
  parity model's backbone; named parity in runs of earlier versions);
* `none`: the input itself (B, in_channels, ...).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..config import CTMConfig

# ResNet depth -> (block, blocks per stage)
RESNET_LAYOUTS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
                  101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 4, 36, 3))}


def build_backbone(c: CTMConfig) -> nn.Module:
    """The backbone `c.backbone` names, producing `c.d_backbone` channels."""
    if c.backbone == "tutorial":
        return nn.Sequential(
            nn.Conv2d(c.in_channels, c.d_input, kernel_size=3, padding=1), nn.BatchNorm2d(c.d_input), nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(c.d_input, c.d_input, kernel_size=3, padding=1), nn.BatchNorm2d(c.d_input), nn.ReLU(),
            nn.MaxPool2d(2, 2),
        )
    if c.backbone == "tutorial-s2d":
        return nn.Sequential(
            nn.PixelUnshuffle(2),  # (B, C, H, W) -> (B, 4C, H/2, W/2)
            nn.Conv2d(4 * c.in_channels, c.d_input, kernel_size=3, padding=1), nn.BatchNorm2d(c.d_input), nn.ReLU(),
            nn.Conv2d(c.d_input, c.d_input, kernel_size=3, padding=1), nn.BatchNorm2d(c.d_input), nn.ReLU(),
            nn.MaxPool2d(2, 2),
        )
    if c.backbone.startswith("resnet"):
        depth, stages = c.backbone[len("resnet"):].split("-")
        return TruncatedResNet(c.in_channels, int(depth), int(stages))
    if c.backbone == "shallow-wide":
        return nn.Sequential(
            nn.Conv2d(c.in_channels, 4096, kernel_size=3, stride=2, padding=1), nn.GLU(dim=1), nn.BatchNorm2d(2048),
            nn.Conv2d(2048, 4096, kernel_size=3, padding=1, groups=32), nn.GLU(dim=1), nn.BatchNorm2d(2048),
        )
    if c.backbone == "sign-embedding":
        return SignEmbedding(c.d_input)
    return nn.Identity()


class SignEmbedding(nn.Module):
    """A sequence of +-1 (B, L) -> one learned vector per entry, channels first (B, d, L)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(2, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.embedding((x == 1).long()).transpose(1, 2)


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(c_in, width, 3, stride)
        self.conv2, self.bn2 = _conv_bn(width, width, 3)
        self.downsample = _shortcut(c_in, width, stride)

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn1(self.conv1(x)).relu()
        h = self.bn2(self.conv2(h))
        return (h + (x if self.downsample is None else self.downsample(x))).relu()


class Bottleneck(nn.Module):
    """1x1 down, 3x3, 1x1 up to 4x the width, and a residual connection (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(c_in, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = _conv_bn(width, 4 * width, 1)
        self.downsample = _shortcut(c_in, 4 * width, stride)

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn1(self.conv1(x)).relu()
        h = self.bn2(self.conv2(h)).relu()
        h = self.bn3(self.conv3(h))
        return (h + (x if self.downsample is None else self.downsample(x))).relu()


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Sequential | None:
    """A strided 1x1 convolution where the block changes the shape, else None (the identity)."""
    return nn.Sequential(*_conv_bn(c_in, c_out, 1, stride)) if stride != 1 or c_in != c_out else None


class TruncatedResNet(nn.Module):
    """A ResNet's first `stages` stages: (B, C, H, W) -> (B, 64 e 2^(stages-1), H/2^stages, W/2^stages)
    with e = 1 (basic blocks) or 4 (bottlenecks). The stem is a 3x3 stride-1 convolution and a 3x3
    stride-2 max-pool, after a 1x1 convolution from the input's channels to 3 (`rgb`)."""

    def __init__(self, in_channels: int, depth: int, stages: int) -> None:
        super().__init__()
        kind, blocks = RESNET_LAYOUTS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.rgb = nn.Conv2d(in_channels, 3, kernel_size=1)
        self.conv1, self.bn1 = _conv_bn(3, 64, 3)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        c_in = 64
        for stage in range(stages):
            width, layers = 64 * 2 ** stage, []
            for i in range(blocks[stage]):
                layers.append(block(c_in, width, 2 if i == 0 and stage > 0 else 1))
                c_in = width * block.expansion
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layers))
        self.stages = stages

    def forward(self, x: Tensor) -> Tensor:
        h = self.maxpool(self.bn1(self.conv1(self.rgb(x))).relu())
        for stage in range(1, self.stages + 1):
            h = getattr(self, f"layer{stage}")(h)
        return h
