"""Augmentation as discrete views: decoding, identity, crops and flips, batched == per-sample."""

from __future__ import annotations

import pytest
import torch

from kdtune.data import Augmentation
from kdtune.errors import KdtuneError


def reference_view(img: torch.Tensor, view: int, pad: int, flip: bool) -> torch.Tensor:
    """One image's view, the slow obvious way (documented decoding, explicit zero canvas)."""
    nf = 2 if flip else 1
    side = 2 * pad + 1
    f = view % nf
    dx = (view // nf) % side
    dy = view // (nf * side)
    c, h, w = img.shape
    canvas = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=img.dtype)
    canvas[:, pad:pad + h, pad:pad + w] = img
    out = canvas[:, dy:dy + h, dx:dx + w]
    if f:
        out = torch.flip(out, dims=[2])
    return out


def test_num_views() -> None:
    assert Augmentation().num_views == 162
    assert Augmentation(pad=4, flip=False).num_views == 81
    assert Augmentation(pad=2, flip=True).num_views == 50
    assert Augmentation(pad=0, flip=False).num_views == 1


@pytest.mark.parametrize(("pad", "flip"), [(4, True), (2, False), (0, True), (1, True)])
def test_identity_view(pad: int, flip: bool) -> None:
    aug = Augmentation(pad=pad, flip=flip)
    x = torch.randn(5, 3, 10, 12)
    ident = aug.identity_view
    assert ident == (pad * (2 * pad + 1) + pad) * aug.num_flips
    out = aug.apply(x, torch.full((5,), ident))
    assert torch.equal(out, x)


@pytest.mark.parametrize(("pad", "flip", "shape"), [
    (4, True, (3, 32, 32)), (2, False, (1, 8, 8)), (3, True, (2, 7, 11)), (0, True, (3, 5, 5)),
])
def test_apply_matches_reference(pad: int, flip: bool, shape: tuple[int, int, int]) -> None:
    aug = Augmentation(pad=pad, flip=flip)
    x = torch.randn(2 * aug.num_views, *shape)
    views = torch.cat([torch.arange(aug.num_views), torch.arange(aug.num_views).flip(0)])
    out = aug.apply(x, views)
    assert out.shape == x.shape and out.dtype == x.dtype
    for i in range(len(x)):
        assert torch.equal(out[i], reference_view(x[i], int(views[i]), pad, flip)), i


def test_all_views_distinct() -> None:
    aug = Augmentation(pad=2, flip=True)
    x = torch.randn(1, 1, 6, 6).expand(aug.num_views, 1, 6, 6)
    out = aug.apply(x, torch.arange(aug.num_views)).flatten(1)
    assert len({tuple(row.tolist()) for row in out}) == aug.num_views


def test_hand_made_crops_and_flips() -> None:
    aug = Augmentation(pad=1, flip=True)
    x = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]])[None]  # (1,1,3,3)

    def view(dy: int, dx: int, f: int) -> torch.Tensor:
        v = aug.encode(dy, dx, f)
        assert v == (dy * 3 + dx) * 2 + f
        return aug.apply(x, torch.tensor([v]))[0, 0]

    assert torch.equal(view(1, 1, 0), x[0, 0])
    assert view(1, 1, 1).tolist() == [[3, 2, 1], [6, 5, 4], [9, 8, 7]]
    # dy=0, dx=0: crop starts in the padding, content moves down-right by one pixel
    assert view(0, 0, 0).tolist() == [[0, 0, 0], [0, 1, 2], [0, 4, 5]]
    # dy=2, dx=2: content moves up-left
    assert view(2, 2, 0).tolist() == [[5, 6, 0], [8, 9, 0], [0, 0, 0]]
    # flip is applied to the crop: crop as view(2, 0, 0), then mirror its columns
    assert view(2, 0, 0).tolist() == [[0, 4, 5], [0, 7, 8], [0, 0, 0]]
    assert view(2, 0, 1).tolist() == [[5, 4, 0], [8, 7, 0], [0, 0, 0]]


def test_decode_inverts_encode() -> None:
    aug = Augmentation(pad=3, flip=True)
    dy, dx, f = aug.decode(torch.arange(aug.num_views))
    again = [aug.encode(int(a), int(b), int(c)) for a, b, c in zip(dy, dx, f, strict=True)]
    assert again == list(range(aug.num_views))


def test_keeps_dtype() -> None:
    aug = Augmentation()
    x = torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8)
    views = torch.tensor([0, 5, 80, 161])
    out = aug.apply(x, views)
    assert out.dtype == torch.uint8
    assert torch.equal(out.float(), aug.apply(x.float(), views))
    half = aug.apply(x.to(torch.float16), views)
    assert half.dtype == torch.float16


def test_sample_views_deterministic() -> None:
    aug = Augmentation()
    a = aug.sample_views(1000, torch.Generator().manual_seed(3))
    b = aug.sample_views(1000, torch.Generator().manual_seed(3))
    c = aug.sample_views(1000, torch.Generator().manual_seed(4))
    assert a.dtype == torch.int64 and a.shape == (1000,)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < 162
    assert len(torch.unique(a)) > 150  # roughly uniform over the 162 views


def test_bad_input() -> None:
    with pytest.raises(KdtuneError, match="pad"):
        Augmentation(pad=-1)
    aug = Augmentation()
    x = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match="view ids"):
        aug.apply(x, torch.tensor([0, 162]))
    with pytest.raises(ValueError, match="one view id per image"):
        aug.apply(x, torch.tensor([0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    aug = Augmentation()
    x = torch.randn(64, 3, 32, 32)
    views = aug.sample_views(64, torch.Generator().manual_seed(0))
    out = aug.apply(x.cuda(), views.cuda())
    assert out.device.type == "cuda"
    assert torch.equal(out.cpu(), aug.apply(x, views))
    g = torch.Generator(device="cuda").manual_seed(0)
    assert aug.sample_views(8, g).device.type == "cuda"
