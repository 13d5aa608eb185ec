"""Every model builds for its input kind, maps to class logits, and splits into body/head."""
import pytest
import torch

from pflalign.config import ModelConfig
from pflalign.errors import ConfigError
from pflalign.models import MODELS, build_model


@pytest.mark.parametrize("name, shape", [("mlp", (40,)), ("mlp", (1, 8, 8)), ("cnn1d", (40,)),
                                         ("cnn", (1, 28, 28)), ("cnn", (3, 32, 32)), ("resnet18", (3, 32, 32))])
def test_forward_shape_and_body_head_split(name, shape):
    model = build_model(ModelConfig(name=name, width=8 if name == "resnet18" else None), shape, 10)
    assert model(torch.zeros(2, *shape)).shape == (2, 10)
    names = [k for k, _ in model.named_parameters()]
    assert names and all(k.startswith(("body.", "head.")) for k in names)
    assert any(k.startswith("head.") for k in names) and any(k.startswith("body.") for k in names)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not list(model.buffers())  # parameters are the whole state: averaging is well defined


def test_resnet18_has_the_standard_depth():
    model = build_model(ModelConfig(name="resnet18", width=8), (3, 32, 32), 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 17  # stem + 8 blocks x 2


def test_model_that_does_not_fit_the_data_is_a_config_error():
    with pytest.raises(ConfigError, match="image inputs"):
        build_model(ModelConfig(name="cnn"), (40,), 10)
    with pytest.raises(ConfigError, match="unknown model.name"):
        build_model(ModelConfig(name="vgg"), (40,), 10)
    assert {"mlp", "cnn1d", "cnn", "resnet18"} <= set(MODELS)
