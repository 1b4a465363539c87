"""Batched pad-and-crop / flip augmentation expressed as a finite set of discrete views.

A view is one fixed transformation of an image: a crop offset ``(dy, dx)`` in the zero-padded
image and a horizontal-flip bit ``f``. With padding ``p`` and ``F = 2`` if flips are on (else
``F = 1``), the view id is::

    view = (dy * (2p + 1) + dx) * F + f        0 <= dy, dx <= 2p,  f in {0, F - 1}

so ``f = view % F``, ``dx = (view // F) % (2p + 1)``, ``dy = view // (F * (2p + 1))``. The crop
takes rows ``dy .. dy+H-1`` and columns ``dx .. dx+W-1`` of the padded image (so the content
moves by ``p - dy`` rows and ``p - dx`` columns), then mirrors the columns when ``f == 1``. The
view ``(dy=p, dx=p, f=0)``, id :attr:`Augmentation.identity_view`, returns the input unchanged.
Because views are discrete, a teacher's outputs can be cached per (sample, view).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdtune.errors import KdtuneError

__all__ = ["Augmentation"]


@dataclass(frozen=True)
class Augmentation:
    """Zero-pad by ``pad``, crop back to the original size at a random offset, maybe flip.

    View ids: ``view = (dy * (2*pad + 1) + dx) * F + f`` (see the module docstring);
    ``identity_view`` (``dy = dx = pad``, ``f = 0``) leaves the image unchanged.
    """

    pad: int = 4
    flip: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.pad, bool) or not isinstance(self.pad, int) or self.pad < 0:
            raise KdtuneError(f"augmentation pad must be an integer >= 0, got {self.pad!r}")

    @property
    def num_flips(self) -> int:
        """``F``: 2 when flips are on, else 1."""
        return 2 if self.flip else 1

    @property
    def num_views(self) -> int:
        """Number of distinct views: ``(2*pad+1)**2 * F``."""
        return (2 * self.pad + 1) ** 2 * self.num_flips

    @property
    def identity_view(self) -> int:
        """Id of the view that returns the image unchanged (``dy = dx = pad``, no flip)."""
        return self.encode(self.pad, self.pad, 0)

    def encode(self, dy: int, dx: int, f: int) -> int:
        """View id of crop offset ``(dy, dx)`` and flip bit ``f``."""
        side = 2 * self.pad + 1
        if not (0 <= dy < side and 0 <= dx < side and 0 <= f < self.num_flips):
            raise ValueError(f"no view (dy={dy}, dx={dx}, f={f}) for {self}")
        return (dy * side + dx) * self.num_flips + f

    def decode(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Split view ids into ``(dy, dx, f)`` tensors (same shape and device as ``views``)."""
        side = 2 * self.pad + 1
        nf = self.num_flips
        f = views % nf
        rest = torch.div(views, nf, rounding_mode="floor")
        return torch.div(rest, side, rounding_mode="floor"), rest % side, f

    def sample_views(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Draw ``n`` view ids uniformly (int64, on the generator's device)."""
        return torch.randint(
            0, self.num_views, (n,), generator=generator, device=generator.device, dtype=torch.int64
        )

    def apply(self, x: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Return view ``views[i]`` of image ``x[i]`` for a batch ``x`` of shape (N, C, H, W).

        Vectorised (one gather for the whole batch); output has the dtype and device of ``x``.
        View ids are range-checked (``ValueError``) on CPU only: a check on an accelerator would
        synchronise it.
        """
        if x.dim() != 4:
            raise ValueError(f"augmentation expects a (N, C, H, W) batch, got {tuple(x.shape)}")
        n, c, h, w = x.shape
        if views.shape != (n,):
            raise ValueError(f"need one view id per image: {n} images, views of shape "
                             f"{tuple(views.shape)}")
        views = views.to(device=x.device, dtype=torch.int64)
        if views.device.type == "cpu" and n and (
            int(views.min()) < 0 or int(views.max()) >= self.num_views
        ):
            raise ValueError(f"view ids must lie in [0, {self.num_views}) for {self}")
        if self.pad == 0 and not self.flip:
            return x.clone()
        p = self.pad
        padded = torch.nn.functional.pad(x, (p, p, p, p)) if p else x
        dy, dx, f = self.decode(views)
        ar_h = torch.arange(h, device=x.device)
        ar_w = torch.arange(w, device=x.device)
        rows = dy[:, None] + ar_h  # (N, H) rows of the padded image
        cols = torch.where(f[:, None].bool(), w - 1 - ar_w, ar_w) + dx[:, None]  # (N, W)
        flat = (rows[:, :, None] * (w + 2 * p) + cols[:, None, :]).view(n, 1, h * w)
        out = padded.flatten(2).gather(2, flat.expand(n, c, h * w))
        return out.view(n, c, h, w)
