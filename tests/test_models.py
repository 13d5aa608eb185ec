"""Every model builds for its input kind, maps to class logits, and splits into body/head."""
import pytest
import torch

from pflalign.algorithms import ALGORITHMS, build_algorithm
from pflalign.cli import main
from pflalign.config import ModelConfig, load_config
from pflalign.errors import ConfigError
from pflalign.experiment import prepare
from pflalign.federation import Federation
from pflalign.models import MODELS, build_model
from pflalign.runtime.local import LocalRuntime


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
    assert {"mlp", "cnn1d", "cnn", "resnet18", "charlstm", "logreg"} <= set(MODELS)


def test_logreg_is_one_linear_head_on_the_flattened_input():
    model = build_model(ModelConfig(name="logreg"), (1, 8, 8), 10)
    assert [k for k, _ in model.named_parameters()] == ["head.weight", "head.bias"]
    assert model.head.in_features == 64 and model.head.out_features == 10
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(model(x), x.flatten(1) @ model.head.weight.T + model.head.bias)


# The methods that share, keep or train the body on its own: with no body parameters they would
# silently become Local (fedper, fedrep), FedAvg (lg_fedavg) or train nothing (fedbabu, fedas' alignment).
NEEDS_BODY = {"fedper", "fedrep", "lg_fedavg", "fedbabu", "fedas"}


def test_the_body_methods_declare_that_they_need_a_body():
    declared = {name for name, cls in ALGORITHMS.items() if "body" in cls().needs_parts}
    assert NEEDS_BODY <= declared
    assert not {"fedavg", "fedrod", "feddbe", "fedala", "pflalign"} & declared


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_logreg_runs_every_algorithm_or_is_refused_before_the_run(tiny, algorithm):
    """A method that declares a body need is refused with one clear error; every other one runs
    (pflalign with gate_scope=head too), new clients included: an undeclared need fails here."""
    overrides = ["algo.gate_scope=head"] if algorithm == "pflalign" else []
    cfg = load_config(None, [*tiny, f"algorithm={algorithm}", "model.name=logreg", "client_fraction=0.5",
                             "data.holdout_clients=1", *overrides])
    if "body" in build_algorithm(cfg).needs_parts:
        with pytest.raises(ConfigError, match=f"^algorithm={algorithm} needs parameters in the model's body "
                                              f"\\(.+\\), and model.name=logreg has none there"):
            prepare(cfg)
        return
    data = prepare(cfg)
    fed = Federation(cfg, data, LocalRuntime(cfg, data))
    records = [fed.step(rnd) for rnd in range(2)]
    assert all(0 <= r["acc"] <= 1 and 0 <= r["new_acc"] <= 1 for r in records)


def test_fedas_without_alignment_takes_logreg(tiny):
    cfg = load_config(None, [*tiny, "algorithm=fedas", "model.name=logreg", "algo.align_epochs=0"])
    assert prepare(cfg).num_clients == 6


def test_a_refused_model_exits_2_with_one_line_before_the_run_directory(tiny, tmp_path, capsys):
    assert main(["run", *tiny, "algorithm=fedper", "model.name=logreg"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fedper needs parameters in the model's body" in err
    assert not (tmp_path / "runs").exists()
