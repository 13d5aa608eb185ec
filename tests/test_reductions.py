"""ALGORITHM.md's ablations reduce pFLAlign to the simpler methods it names, exactly."""
import pytest

from conftest import read_jsonl, run_cli

ACC = ("acc", "loss", "global_acc", "global_loss")


def history(args):
    return [{k: r[k] for k in ACC if k in r} for r in read_jsonl(run_cli(args) / "metrics.jsonl")]


def test_both_mechanisms_off_is_fedavg_ft(tiny):
    assert history(tiny + ["algorithm=pflalign", "algo.m1=false", "algo.m2=false"]) == \
        history(tiny + ["algorithm=fedavg_ft"])


def test_unit_preconditioner_with_momentum_is_persistent_momentum_control(tiny):
    assert history(tiny + ["algorithm=pflalign", "algo.m2=false", "algo.precond=none"]) == \
        history(tiny + ["algorithm=fedavg_ft", "algo.persistent_momentum=true"])


def test_zero_gates_and_unit_preconditioner_give_fedavg_server(tiny):
    pfl = history(tiny + ["algorithm=pflalign", "algo.m1=false", "algo.gamma0=0", "algo.eta_g=0"])
    avg = history(tiny + ["algorithm=fedavg"])
    server = lambda h: [(r["global_acc"], r["global_loss"]) for r in h]  # noqa: E731
    assert server(pfl) == server(avg)


@pytest.mark.parametrize("switch", ["algo.m1=false", "algo.m2=false"])
def test_each_mechanism_changes_the_result(tiny, switch):
    """The reductions above would hold trivially if a mechanism did nothing: check it acts."""
    assert history(tiny + ["algorithm=pflalign", switch]) != history(tiny + ["algorithm=pflalign"])
