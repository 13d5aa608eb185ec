import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One dataset cache for the session: generated data is built once."""
    return tmp_path_factory.mktemp("data-cache")


@pytest.fixture
def tiny(tmp_path, data_cache):
    """Overrides for a federation that runs in about a second."""
    return [f"data.cache_dir={data_cache}", f"out_dir={tmp_path / 'runs'}", "data.dataset=digits",
            "data.num_clients=6", "data.alpha=0.5", "model.hidden=[32]", "rounds=3",
            "wandb.mode=disabled", "progress=false", "train.batch_size=32"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def run_cli(args: list[str]) -> Path:
    """Run ``pflalign run`` in-process and return its run directory."""
    from pflalign.cli import main
    import io
    import contextlib

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["run", *args])
    assert code == 0, out.getvalue()
    return Path(out.getvalue().strip().splitlines()[-1])


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One local 2-CPU Ray instance for the session, started as ``pflalign run runtime=ray`` starts
    one (loopback only, owner-only files), with its own temp dir and HOME (Ray writes its auth
    token under $HOME/.ray): nothing is left behind."""
    import shutil
    import tempfile

    import ray

    from pflalign.config import RayConfig
    from pflalign.runtime.cluster import connect

    home = tmp_path_factory.mktemp("ray-home")
    temp_dir = tempfile.mkdtemp(prefix="pfr-", dir="/tmp")  # short: Ray's unix sockets live here
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    connect(RayConfig(local_cpus=2, temp_dir=temp_dir))
    try:
        yield ray
    finally:
        ray.shutdown()
        if old_home is not None:
            os.environ["HOME"] = old_home
        shutil.rmtree(temp_dir, ignore_errors=True)
