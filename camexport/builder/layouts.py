"""How a layer's output becomes the explained map ``A`` [N, C, h, w], and back.

Each layout knows its map's shape, how to read the output as the map (``to_map``) and how to hand the network
a tensor laid out as its output again (``from_map``), which tracing uses to put the gradient's leaf in its
place. The eager reference (:mod:`camexport.builder.reference`) reads the same fields but keeps its own
transforms on purpose, so that a wrong transform here cannot hide.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


class Layout(ABC):
    """How one layer's output is read as the explained map [N, C, h, w]."""

    @abstractmethod
    def map_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The map's shape without the batch, (C, h, w), for an output of ``shape``."""

    @abstractmethod
    def to_map(self, output: torch.Tensor) -> torch.Tensor:
        """The output as [N, C, h, w]."""

    @abstractmethod
    def from_map(self, leaf: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """A tensor laid out as ``output``, made from the map ``leaf`` (a new tensor, so that in-place ops of the
        network after the layer leave the leaf alone)."""

    def from_maps(self, maps: torch.Tensor, output: torch.Tensor, per_image: int) -> torch.Tensor:
        """Like :meth:`from_map` for ``per_image`` maps of each image of ``output`` ([N·per_image, C, h, w], image
        by image), as ReciproCAM's masked maps are: what the output holds beyond the map (a Vision
        Transformer's class token) is kept, once per map. Layouts whose output is all map just lay them out."""
        del per_image
        return self.from_map(maps, output)

    @abstractmethod
    def describe(self) -> str:
        """How the output is read, for humans: '' when it is already [N, C, h, w]."""

    @abstractmethod
    def as_json(self) -> object:
        """For the build report."""


@dataclass(frozen=True)
class ChannelsFirst(Layout):
    """The output already is [N, C, h, w] (a CNN feature map)."""

    def map_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape[1:])

    def to_map(self, output: torch.Tensor) -> torch.Tensor:
        return output

    def from_map(self, leaf: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        del output
        return leaf.clone()

    def describe(self) -> str:
        return ""

    def as_json(self) -> object:
        return "nchw"


@dataclass(frozen=True)
class ChannelsLast(Layout):
    """A channels-last map [N, h, w, C] (Swin Transformer, ConvNeXt block internals)."""

    def map_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (shape[3], shape[1], shape[2])

    def to_map(self, output: torch.Tensor) -> torch.Tensor:
        return output.permute(0, 3, 1, 2)

    def from_map(self, leaf: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        del output
        return leaf.permute(0, 2, 3, 1).clone()

    def describe(self) -> str:
        return "[N, h, w, C]: read as [N, C, h, w]"

    def as_json(self) -> object:
        return ["nhwc"]


@dataclass(frozen=True)
class Tokens(Layout):
    """Tokens [N, T, C] of a Vision Transformer: ``prefix`` class/distillation tokens, then an h x w patch grid."""

    prefix: int
    height: int
    width: int

    def map_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (shape[2], self.height, self.width)

    def to_map(self, output: torch.Tensor) -> torch.Tensor:
        return output[:, self.prefix :].unflatten(1, (self.height, self.width)).permute(0, 3, 1, 2)

    def from_map(self, leaf: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return torch.cat([output[:, : self.prefix].detach(), leaf.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)

    def from_maps(self, maps: torch.Tensor, output: torch.Tensor, per_image: int) -> torch.Tensor:
        prefix = output[:, : self.prefix].detach()
        prefix = prefix[:, None].expand(-1, per_image, -1, -1).flatten(0, 1)
        return torch.cat([prefix, maps.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)

    def describe(self) -> str:
        return f"tokens: {self.prefix} prefix + {self.height}x{self.width} grid"

    def as_json(self) -> object:
        return ["tokens", self.prefix, self.height, self.width]


@dataclass(frozen=True)
class Windows(Layout):
    """MaxViT's partitioned tokens [N, gh*gw, p*p, C]: windows of p x p cells on a gh x gw layout; ``swap``: the
    two token axes exchanged (grid attention). Read as [N, C, gh*p, gw*p], as torchvision's WindowDepartition."""

    p: int
    gh: int
    gw: int
    swap: bool

    def map_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (shape[3], self.gh * self.p, self.gw * self.p)

    def to_map(self, output: torch.Tensor) -> torch.Tensor:
        p, gh, gw = self.p, self.gh, self.gw
        tokens = output.transpose(1, 2) if self.swap else output
        cells = tokens.unflatten(1, (gh, gw)).unflatten(3, (p, p)).permute(0, 5, 1, 3, 2, 4)
        return cells.flatten(4, 5).flatten(2, 3)

    def from_map(self, leaf: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        del output
        p, gh, gw = self.p, self.gh, self.gw
        back = leaf.unflatten(2, (gh, p)).unflatten(4, (gw, p)).permute(0, 2, 4, 3, 5, 1)
        back = back.flatten(3, 4).flatten(1, 2)
        return (back.transpose(1, 2) if self.swap else back).contiguous()

    def describe(self) -> str:
        side = f"{self.gh * self.p}x{self.gw * self.p}"
        return f"{'grid' if self.swap else 'window'}-partitioned tokens: read as a {side} map"

    def as_json(self) -> object:
        return ["windows", self.p, self.gh, self.gw, self.swap]


CHANNELS_FIRST = ChannelsFirst()
