"""Test-time views: each query also classified as its copies shifted by 1..n pixels, scores summed.

The one place that knows what a view is: the engine expands images into views and sums their
scores here, the export describes the same gather in the graph here, and the cost counts here.
The copies are ``data.shifted_copies``'s (zero fill, up / down / left / right per step), the same
as the bank's ``--bank-shifts`` copies, so a query a pixel off finds its match among shifted
prototypes and a prototype a pixel off among the query's shifted copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .data import copies_per_image, shift_check, shifted_copies
from .errors import InputError

if TYPE_CHECKING:
    from .graph import Graph


@dataclass(frozen=True)
class Views:
    shifts: int = 0  # pixels: the query, then its copies shifted by 1..shifts (4 per step); 0 = the query alone

    def __post_init__(self) -> None:
        ok, message = shift_check("query_shifts", self.shifts)
        if not ok:
            raise InputError(message)

    @property
    def count(self) -> int:
        return copies_per_image(self.shifts)

    def expand(self, images: np.ndarray) -> np.ndarray:
        """uint8 images [N, H, W] -> their views, view-major [V * N, H, W] (the images come first)."""
        return shifted_copies(images, np.zeros(len(images), dtype=np.int64), self.shifts)[0]

    def combine(self, scores: torch.Tensor, n_images: int) -> torch.Tensor:
        """Per-view scores [V * N, C] -> each image's scores summed over its views [N, C]."""
        return scores.reshape(self.count, n_images, -1).sum(0)

    def layout(self, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The views as a gather from one flattened image: (pixel index [V * H * W], int64; keep
        [1, V * H * W], 0.0 where a shifted view's pixel is zero fill). Image-major, unlike ``expand``:
        the graph runs image b's views as rows b * V .. b * V + V - 1."""
        height, width = image_size
        ids = np.arange(1, height * width + 1, dtype=np.int64).reshape(1, height, width)  # 0 marks fill
        views = shifted_copies(ids, np.zeros(1, dtype=np.int64), self.shifts)[0].reshape(-1)
        return np.maximum(views - 1, 0), (views > 0).astype(np.float32)[None]

    def describe(self, g: Graph, x: str, *, batch: int, image_size: tuple[int, int]) -> str:
        """The graph's input [batch, 1, H, W] -> its views [batch * V, 1, H, W] (one Gather, one Mul)."""
        if self.count == 1:
            return x
        height, width = image_size
        pixels, keep = self.layout(image_size)
        x = g.reshape(x, (batch, height * width), name="image_flat")
        x = g.mul(g.gather(x, g.constant("view_index", pixels), axis=1, name="views_gathered"),
                  g.constant("view_keep", keep), name="views_flat")
        return g.reshape(x, (batch * self.count, 1, height, width), name="views")

    def describe_sum(self, g: Graph, votes: str, *, batch: int) -> str:
        """Per-view votes [batch * V, C] -> each image's votes summed over its views [batch, C]."""
        if self.count == 1:
            return votes
        grouped = g.reshape(votes, (batch, self.count, -1), name="view_votes_grouped")
        return g.reduce_sum(grouped, axes=(1,), keepdims=False, name="view_votes_summed")
