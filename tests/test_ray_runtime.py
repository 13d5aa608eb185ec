"""The Ray runtime gives the local runtime's numbers exactly, survives worker deaths, resumes."""
import pytest

from conftest import run_cli
from pflalign.cli import main


@pytest.fixture
def ray_tiny(tiny, ray_cluster):
    return tiny + ["client_fraction=0.5", "ray.num_workers=2"]


def jsonl(run_dir):
    return (run_dir / "metrics.jsonl").read_text()


def test_ray_equals_local_even_when_a_worker_dies(ray_tiny):
    local = run_cli(ray_tiny + ["name=local"])
    on_ray = run_cli(ray_tiny + ["name=ray", "runtime=ray"])
    faulty = run_cli(ray_tiny + ["name=faulty", "runtime=ray", "ray.fault_round=2"])
    on_disk = run_cli(ray_tiny + ["name=disk", "runtime=ray", "state_store=disk", "ray.fault_round=2"])
    assert "acc" in jsonl(local)
    assert jsonl(on_ray) == jsonl(local)
    assert jsonl(faulty) == jsonl(local)
    assert jsonl(on_disk) == jsonl(local)
    sim = ["sim.dropout=0.3", "sim.stragglers=0.5", "sim.straggler_work=0.3"]  # the same drop-outs and partial work
    sim_local, sim_ray = (run_cli(ray_tiny + sim + [f"name=sim-{r}", f"runtime={r}"]) for r in ("local", "ray"))
    assert jsonl(sim_ray) == jsonl(sim_local) != jsonl(local)


def test_resume_on_ray_matches_uninterrupted(ray_tiny):
    full = run_cli(ray_tiny + ["name=full", "rounds=4"])
    part = run_cli(ray_tiny + ["name=part", "runtime=ray", "rounds=2", "checkpoint_every=1"])
    assert main(["run", "--resume", str(part), "rounds=4"]) == 0
    assert jsonl(part) == jsonl(full)


def test_asking_for_more_than_the_cluster_has_is_bad_input(ray_tiny, capsys):
    assert main(["run", *ray_tiny, "runtime=ray", "ray.num_workers=3"]) == 2
    assert "ray.num_workers=3" in capsys.readouterr().err
    assert main(["run", *ray_tiny, "runtime=ray", "ray.num_workers=0", "ray.num_gpus=0.5"]) == 2
    assert "GPUs" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", sorted(__import__("pflalign.algorithms", fromlist=["ALGORITHMS"]).ALGORITHMS))
def test_every_algorithm_gives_the_same_numbers_on_ray(ray_tiny, algorithm):
    """No runtime special cases: each plug-in runs unchanged on Ray, bit for bit."""
    args = ray_tiny + [f"algorithm={algorithm}", "rounds=2"]
    assert jsonl(run_cli(args + ["name=ray", "runtime=ray"])) == jsonl(run_cli(args + ["name=local"]))


def test_cli_started_instance_gives_the_local_numbers(tiny, tmp_path):
    """`pflalign run runtime=ray` in a fresh process: it starts its own instance while the engine
    imports (cluster.connected), runs, shuts the instance down and exits 0."""
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    home = Path(tempfile.mkdtemp(prefix="pfh-", dir="/tmp"))  # Ray writes $HOME/.ray/auth_token
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), PYTHONPATH=str(root))
    temp_dir = tempfile.mkdtemp(prefix="pfc-", dir="/tmp")  # short: Ray's unix sockets live here
    try:
        proc = subprocess.run([sys.executable, "-m", "pflalign.cli", "run", *tiny, "name=fresh", "runtime=ray",
                               "ray.local_cpus=2", f"ray.temp_dir={temp_dir}"],
                              cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert Path(proc.stdout.strip().splitlines()[-1]) == tmp_path / "runs" / "fresh"
        assert jsonl(tmp_path / "runs" / "fresh") == jsonl(run_cli(tiny + ["name=local"]))
    finally:
        import shutil

        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_batches_cover_the_jobs_in_order_within_their_limits(tiny):
    """Batches are consecutive, cover every job once, balance cost and respect max_turns."""
    from pflalign.config import load_config
    from pflalign.experiment import prepare
    from pflalign.runtime.ray import RayRuntime

    cfg = load_config(None, tiny + ["data.num_clients=40"])
    data = prepare(cfg)
    runtime = RayRuntime(cfg, data, actors=["a", "b"])  # placeholders: batching never calls an actor
    jobs = [(cid, None) for cid in range(40)]
    batches = list(runtime._batches("train", jobs))
    assert [job for _, batch in batches for job in batch] == jobs
    assert [start for start, _ in batches] == [sum(len(b) for _, b in batches[:i]) for i in range(len(batches))]
    assert 3 <= len(batches) <= 4  # about one batch per in-flight slot (2 workers x 2)
    costs = [runtime.cost["train"][[c for c, _ in batch]].sum() for _, batch in batches[:-1]]
    assert min(costs) >= sum(runtime.cost["train"]) / 4 and max(costs) < 2 * min(costs)
    runtime.max_turns["train"] = 3
    assert max(len(batch) for _, batch in runtime._batches("train", jobs)) == 3
