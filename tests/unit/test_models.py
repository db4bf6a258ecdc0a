"""Models: timm registration, the head API the coreset code relies on, and build errors."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from advtrain.errors import UserError
from advtrain.models import MODELS, Classifier, Normalize, build_model, is_known_model

OURS = ["preact_resnet18_cifar", "resnet18_cifar", "resnet50_cifar", "resnet_tiny_cifar", "small_cnn",
        "wrn34_10_cifar"]
GREY = dict(mean=(0.5,), std=(0.25,))
RGB = dict(mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))


def _check_head(model: Classifier, x: torch.Tensor, num_classes: int) -> None:
    """Logits shape, and logits == last_linear(embedding) through every entry point."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
        emb = model.embed(x)
        both = model.logits_and_embedding(x)
    assert logits.shape == (len(x), num_classes)
    assert emb.shape == (len(x), model.embedding_dim)
    assert isinstance(model.last_linear, nn.Linear)
    torch.testing.assert_close(model.last_linear(emb), logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[0], logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[1], emb)


def test_registry_lists_our_models_and_timm_knows_them() -> None:
    assert MODELS.names() == OURS
    for name in OURS:
        assert timm.is_model(name) and is_known_model(name)
        assert MODELS.get(name).summary
    assert is_known_model("resnet18") and not is_known_model("resnet81_cifar")


@pytest.mark.parametrize("name", OURS)
def test_every_registered_model_rgb_and_grey(name: str) -> None:
    size = 16 if name in ("resnet50_cifar", "wrn34_10_cifar") else 32  # the heads pool adaptively
    rgb = build_model(name, num_classes=10, in_chans=3, **RGB)
    assert rgb.model_name == name and rgb.num_classes == 10 and isinstance(rgb.normalize, Normalize)
    _check_head(rgb, torch.rand(2, 3, size, size), 10)
    grey = timm.create_model(name, num_classes=7, in_chans=1)  # timm's factory, with its extra kwargs
    _check_head(Classifier(grey, **GREY, model_name=name), torch.rand(2, 1, size, size), 7)


def test_architectures_match_reference_parameter_counts() -> None:
    # Published sizes of the kuangliu CIFAR ResNets and of WRN-34-10 (TRADES); PreAct adds a final BN.
    expected = {"resnet18_cifar": 11_173_962, "resnet50_cifar": 23_520_842, "wrn34_10_cifar": 46_160_474,
                "preact_resnet18_cifar": 11_171_146 + 2 * 512}
    for name, count in expected.items():
        net = timm.create_model(name, num_classes=10)
        assert sum(p.numel() for p in net.parameters()) == count, name
    small = timm.create_model("small_cnn", num_classes=10, in_chans=1)
    assert sum(p.numel() for p in small.parameters()) < 200_000
    assert not any(isinstance(m, nn.Dropout) for m in small.modules())


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_small_050"])
def test_stock_timm_models_keep_the_embedding_contract(name: str) -> None:
    model = build_model(name, num_classes=5, in_chans=3, **RGB)
    _check_head(model, torch.rand(2, 3, 32, 32), 5)


def test_head_api_reset_classifier_and_drop_rate() -> None:
    net = timm.create_model("resnet_tiny_cifar", num_classes=10, drop_rate=0.5)
    net.reset_classifier(3)
    assert net.num_classes == 3 and net.get_classifier().out_features == 3
    x = torch.rand(4, 3, 32, 32)
    net.eval()
    torch.testing.assert_close(net(x), net.get_classifier()(net.forward_head(net.forward_features(x), True)))
    net.train()
    assert not torch.equal(net.forward_head(net.forward_features(x), pre_logits=True),
                           net.forward_head(net.forward_features(x), pre_logits=True))  # dropout is active
    net.reset_classifier(0)
    assert net.eval()(x).shape == (4, net.num_features)


def test_normalize_is_first_and_saved() -> None:
    model = build_model("resnet_tiny_cifar", num_classes=10, in_chans=3, **RGB)
    assert next(iter(model.named_children()))[0] == "normalize"
    x = torch.rand(2, 3, 4, 4)
    mean, std = torch.tensor(RGB["mean"]).view(1, 3, 1, 1), torch.tensor(RGB["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(model.normalize(x), (x - mean) / std)
    assert {"normalize.mean", "normalize.std"} <= set(model.state_dict())


def test_gradients_reach_every_parameter() -> None:
    model = build_model("resnet_tiny_cifar", num_classes=10, in_chans=3, **RGB)
    x = torch.rand(8, 3, 32, 32, requires_grad=True)
    model(x).logsumexp(1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_unknown_model_suggests_the_closest_name() -> None:
    with pytest.raises(UserError) as err:
        build_model("resnet81_cifar", num_classes=10, in_chans=3, **RGB)
    message = str(err.value)
    assert "unknown model 'resnet81_cifar'; did you mean 'resnet18_cifar'?" in message
    assert "any timm model name" in message and "wrn34_10_cifar" in message
    assert "vit_base_patch16_224" not in message  # timm's 1000+ names are not listed


def test_build_errors_are_user_errors() -> None:
    with pytest.raises(UserError, match="1 channel"):
        build_model("small_cnn", num_classes=10, in_chans=1, **RGB)
    with pytest.raises(UserError, match="model.kwargs"):
        build_model("small_cnn", num_classes=10, in_chans=1, **GREY, no_such_option=1)
    with pytest.raises(UserError, match="no pretrained weights"):
        build_model("resnet18_cifar", num_classes=10, in_chans=3, pretrained=True, **RGB)


def test_failed_pretrained_download_is_a_user_error(monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(UserError, match="could not load pretrained weights for 'resnet18'.*pretrained=false"):
        build_model("resnet18", num_classes=10, in_chans=3, pretrained=True, **RGB)


def test_small_cnn_learns_digits() -> None:
    from advtrain.data import DATASETS, iterate_batches

    data = DATASETS.get("digits").build()
    model = build_model("small_cnn", num_classes=10, in_chans=1, mean=data.mean, std=data.std)
    _check_head(model, data.test.load(torch.arange(4)), 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        model.train()
        for x, y, _ in iterate_batches(data.train, torch.arange(len(data.train)), 64, shuffle=True,
                                       generator=gen):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(data.test.load(torch.arange(len(data.test)))).argmax(1)
    acc = (pred == data.test.labels).float().mean()
    assert acc > 0.95
