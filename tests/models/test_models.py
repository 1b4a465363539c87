"""Tests for kdtune.models: every registered model on every input shape, plus the rules."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from kdtune.errors import KdtuneError
from kdtune.models import (
    count_params,
    create_model,
    list_models,
    model_options,
    register_model,
    unregister_model,
)

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
NUM_CLASSES = 7


def _is_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", list_models())
def test_every_model_on_every_shape(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES, shape)
    n = count_params(model)
    assert n > 0
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)
    # Batch of 2: BatchNorm in training mode needs more than one value per channel.
    x = torch.randn(2, *shape)
    out = model(x)
    assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, NUM_CLASSES)


@pytest.mark.parametrize("name", list_models())
def test_every_model_declares_its_options(name: str) -> None:
    """Every option has a default (the model builds without it) and is a config field, so
    ``kdtune train`` and a search space can set it; an unknown name says "did you mean"."""
    from kdtune.config import MODEL_FIELDS
    from kdtune.models import MODELS
    from kdtune.models.catalog import builder_options
    from kdtune.registry import loaded

    options = model_options(name)
    builder = loaded(MODELS.get(name).build)
    assert builder_options(name, builder) == options  # declared as the builder takes them
    assert set(options) <= set(MODEL_FIELDS), f"{name}: options {set(options)} not config fields"
    assert all(v is not inspect.Parameter.empty for v in options.values())
    with pytest.raises(KdtuneError, match=f"did you mean {name!r}"):
        create_model(name + "x", NUM_CLASSES, SHAPES[0])


def test_count_params_skips_frozen() -> None:
    model = create_model("mlp", 10, (1, 8, 8), hidden=[50])
    assert count_params(model) == 64 * 50 + 50 + 50 * 10 + 10
    model[1].weight.requires_grad_(False)
    assert count_params(model) == 50 + 50 * 10 + 10


@pytest.mark.parametrize(
    ("name", "num_classes", "expected", "rel"),
    [
        ("resnet20", 10, 0.27e6, 0.02),  # He et al. 2016, Table 6
        ("resnet56", 10, 0.85e6, 0.02),
        ("wrn_16_2", 100, 0.7e6, 0.05),  # Zagoruyko & Komodakis; CRD's table
        ("wrn_40_2", 100, 2.2e6, 0.03),
        ("resnet18", 10, 11.17e6, 0.01),
    ],
)
def test_known_param_counts(name: str, num_classes: int, expected: float, rel: float) -> None:
    n = count_params(create_model(name, num_classes, (3, 32, 32)))
    assert n == pytest.approx(expected, rel=rel)


def test_mlp_options() -> None:
    linear = create_model("mlp", 10, (1, 8, 8), hidden=[])
    assert count_params(linear) == 64 * 10 + 10
    deep = create_model("mlp", 10, (1, 28, 28), hidden=(1200, 1200), dropout=0.2)
    assert count_params(deep) == 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 10 + 10
    assert any(isinstance(m, nn.Dropout) for m in deep.modules())


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"hidden": [50, 0]}, "0"),
        ({"hidden": [50, -3]}, "-3"),
        ({"hidden": [2.5]}, "2.5"),
        ({"hidden": 300}, "300"),
        ({"hidden": "300"}, "'300'"),
        ({"dropout": 1.0}, "1.0"),
        ({"dropout": -0.1}, "-0.1"),
    ],
)
def test_mlp_bad_values(kw: dict, needle: str) -> None:
    with pytest.raises(KdtuneError, match=needle):
        create_model("mlp", 10, (1, 8, 8), **kw)


def _resnet_params(blocks: list[int]) -> int:
    return count_params(create_model("resnet", 10, (1, 8, 8), blocks=blocks, width=4))


def test_resnet_zero_drops_later_stages() -> None:
    two = create_model("resnet", 10, (1, 8, 8), blocks=[1, 1, 0, 0], width=4)
    assert len(two.stages) == 2
    assert two.fc.in_features == 8
    sizes = [_resnet_params(b) for b in ([1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1])]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4


def test_resnet_bottleneck_expands_by_four() -> None:
    model = create_model("resnet", 10, (1, 8, 8), blocks=[1, 1, 0, 0], block="bottleneck", width=4)
    assert model.fc.in_features == 4 * 2 * 4


@pytest.mark.parametrize(
    ("blocks", "needle"),
    [
        ([0, 0, 0, 0], r"\[0, 0, 0, 0\]"),
        ([1, -1, 0, 0], "-1"),
        ([1, 0, 1, 0], r"blocks \[1, 0, 1, 0\]: a stage after a 0 must be 0"),
        ([1, 1, 1], r"\[1, 1, 1\]"),
        ([1, 1, 1, 1, 1], r"\[1, 1, 1, 1, 1\]"),
        ([1, 1.5, 0, 0], "1.5"),
        ("1100", "'1100'"),
    ],
)
def test_resnet_bad_blocks(blocks: object, needle: str) -> None:
    with pytest.raises(KdtuneError, match=needle):
        create_model("resnet", 10, (1, 8, 8), blocks=blocks)


@pytest.mark.parametrize("name", ["resnet", "resnet8"])
def test_resnet_bad_stem_stride(name: str) -> None:
    with pytest.raises(KdtuneError, match=r"stem_stride 3\b.*1, 2, 4"):
        create_model(name, 10, (1, 8, 8), stem_stride=3)


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_resnet_stem_stride(stride: int) -> None:
    model = create_model("resnet8", 10, (1, 8, 8), stem_stride=stride)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_resnet_bad_block_and_width() -> None:
    with pytest.raises(KdtuneError, match=r"'basc'.*basic, bottleneck.*did you mean 'basic'"):
        create_model("resnet", 10, (1, 8, 8), block="basc")
    with pytest.raises(KdtuneError, match="width 0"):
        create_model("resnet", 10, (1, 8, 8), width=0)


def test_resnet_preset_overrides() -> None:
    assert model_options("resnet20") == {"width": 16, "stem_stride": 1}
    assert model_options("resnet50") == {"width": 64, "stem_stride": 1}
    narrow = create_model("resnet20", 10, (3, 32, 32), width=8)
    assert count_params(narrow) < count_params(create_model("resnet20", 10, (3, 32, 32)))
    assert narrow.fc.in_features == 32


@pytest.mark.parametrize("depth", [12, 4, -2, 16.0, True])
def test_wrn_bad_depth(depth: object) -> None:
    with pytest.raises(KdtuneError, match=rf"depth {depth!r}: .*10, 16, 22, 28, 40"):
        create_model("wrn", 10, (1, 8, 8), depth=depth)


def test_wrn_options() -> None:
    model = create_model("wrn", 10, (1, 8, 8), depth=10, widen_factor=3, dropout=0.3)
    assert model.fc.in_features == 64 * 3
    assert any(isinstance(m, nn.Dropout) for m in model.modules())
    with pytest.raises(KdtuneError, match="widen_factor 0"):
        create_model("wrn", 10, (1, 8, 8), widen_factor=0)
    with pytest.raises(KdtuneError, match="dropout 1"):
        create_model("wrn_16_1", 10, (1, 8, 8), dropout=1)


def test_unknown_kwarg() -> None:
    with pytest.raises(
        KdtuneError, match=r"^model 'mlp' does not take 'blocks'; it takes: dropout, hidden$"
    ):
        create_model("mlp", 10, (1, 8, 8), blocks=[1, 1, 0, 0])
    with pytest.raises(KdtuneError, match="'resnet18' does not take 'blocks'"):
        create_model("resnet18", 10, (1, 8, 8), blocks=[1, 1, 0, 0])


def test_unknown_model() -> None:
    with pytest.raises(KdtuneError, match=r"unknown model 'resnet19'.*mlp.*wrn_40_2"):
        create_model("resnet19", 10, (1, 8, 8))


@pytest.mark.parametrize(
    ("num_classes", "shape", "needle"),
    [
        (0, (1, 8, 8), "num_classes 0"),
        (10, (8, 8), r"in_shape \(8, 8\)"),
        (10, (1, 0, 8), r"in_shape \(1, 0, 8\)"),
    ],
)
def test_bad_classes_and_shape(num_classes: int, shape: tuple, needle: str) -> None:
    with pytest.raises(KdtuneError, match=needle):
        create_model("mlp", num_classes, shape)


@pytest.mark.parametrize("name", [n for n in list_models() if n not in {"resnet152"}])
def test_construction_is_deterministic(name: str) -> None:
    shape = (1, 8, 8)
    torch.manual_seed(3)
    a = create_model(name, 10, shape).state_dict()
    torch.manual_seed(3)
    b = create_model(name, 10, shape).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", [n for n in list_models() if n != "resnet152"])
def test_channels_last(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, 10, (3, 8, 8))
    if not _is_conv(model):
        pytest.skip("not a conv net")
    x = torch.randn(2, 3, 8, 8)
    model.eval()
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    assert out.shape == (2, 10)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_register_model_adds_a_model() -> None:
    @register_model("_tiny_test_model")
    def tiny(num_classes: int, in_shape: tuple[int, int, int], scale: int = 1) -> nn.Module:
        c, h, w = in_shape
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes * scale))

    try:
        assert "_tiny_test_model" in list_models()
        assert model_options("_tiny_test_model") == {"scale": 1}
        assert create_model("_tiny_test_model", 3, (1, 2, 2)).__class__ is nn.Sequential
        with pytest.raises(ValueError, match="already registered"):
            register_model("_tiny_test_model")(tiny)
    finally:
        unregister_model("_tiny_test_model")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", list_models())
def test_forward_features_in_one_pass(name: str, shape: tuple[int, int, int]) -> None:
    """Logits equal to the plain forward, one stage output per stage, the embedding the
    classifier reads; maps for conv nets, vectors for MLPs."""
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES, shape).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        feats = model.forward_features(x)
        plain = model(x)
    assert torch.equal(feats.logits, plain)
    assert feats.stages, "every default model has at least one stage"
    for f in feats.stages:
        assert f.shape[0] == 2 and f.dim() == (4 if _is_conv(model) else 2)
        assert torch.isfinite(f).all()
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert feats.embedding.shape == (2, head.in_features)
    assert torch.allclose(head(feats.embedding), plain, atol=1e-6)
    if _is_conv(model):  # channels of the last stage = the embedding's width
        assert feats.stages[-1].shape[1] == feats.embedding.shape[1]
        assert feats.stages[-1].shape[2] <= shape[1]


def test_mlp_stages_are_the_hidden_activations() -> None:
    model = create_model("mlp", 3, (1, 8, 8), hidden=[5, 4], dropout=0.1).eval()
    feats = model.forward_features(torch.randn(6, 1, 8, 8))
    assert [tuple(f.shape) for f in feats.stages] == [(6, 5), (6, 4)]
    assert (feats.stages[0] >= 0).all() and feats.embedding is feats.stages[-1]
    linear = create_model("mlp", 3, (1, 8, 8), hidden=[])
    out = linear.forward_features(torch.randn(2, 1, 8, 8))
    assert out.stages == [] and out.embedding.shape == (2, 64)
