"""``pflalign report --wandb DIR...``: a W&B Report of compare and sweep directories.

:func:`plan_report` reads the run directories (nothing online) and :func:`build_report` turns
that into a ``wandb_workspaces`` Report without touching the network (tests check its blocks,
panels and runset filters); only :func:`publish` saves it, which needs an API key and the W&B
host (:func:`check_online` refuses before anything is written). One runset per W&B group (a
compare's or a sweep's directory name, a plain run's experiment: see ``callbacks.wandb``),
curves grouped by job type (= the label) with a std band, final-metric bars, and for a sweep a
parallel-coordinates plot of its hyperparameters against the validation metric it selected on.
Needs the optional ``wandb-workspaces`` package (``pip install 'pflalign[reports]'``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pflalign.compare import COLUMNS, summary_table
from pflalign.errors import InputError
from pflalign.plots import CURVES
from pflalign.report import history_rows, load_runs
from pflalign.sweep_report import NOT_USED, SweepInfo, find_sweeps, read_sweep

from .wandb import PROBE_TIMEOUT_S, base_url, has_api_key, host_port, reachable, wandb_group

# W&B summary key (results.json's, final/* for the last round) -> bar title
FINALS = {"acc_mean_last10": "acc (mean, last 10)", "acc_last10": "acc (weighted, last 10)",
          "final/acc_worst": "worst client (final round)", "final/acc_bottom10": "bottom 10% (final round)",
          "new_acc_mean_last10": "new clients acc (mean, last 10)"}
INSTALL = "pip install 'pflalign[reports]' (or: pip install wandb-workspaces)"


@dataclass
class ReportPlan:
    project: str
    entity: str | None                # None: the API key's default entity (looked up when saving)
    title: str
    description: str
    groups: list[str]                 # W&B groups, one runset each
    curves: list[tuple[str, str]]     # (metrics.jsonl key, title) that the runs have
    finals: list[str]                 # FINALS keys that the runs have
    sweeps: list[tuple[SweepInfo, str]] = field(default_factory=list)  # and its trials' W&B group
    offline: list[Path] = field(default_factory=list)  # offline W&B runs: `wandb sync` them first


def plan_report(dirs: list[Path]) -> ReportPlan:
    """What the report shows, from the run directories under ``dirs`` (their W&B project, groups,
    metrics and sweeps); runs that did not log to W&B are bad input."""
    runs = load_runs(dirs)[0]
    wb = [c.get("wandb") if isinstance(c.get("wandb"), dict) else {} for c in runs["config"]]
    logged = runs[[w.get("mode", "disabled") != "disabled" for w in wb]]
    if logged.empty:
        raise InputError(f"report --wandb: no run under {', '.join(map(str, dirs))} logged to W&B (wandb.mode=disabled)")
    projects = {(c["wandb"].get("entity"), c["wandb"].get("project", "pflalign")) for c in logged["config"]}
    if len(projects) > 1:
        names = ", ".join(f"{e or '-'}/{p}" for e, p in sorted(projects, key=str))
        raise InputError(f"report --wandb: the runs logged to {len(projects)} W&B projects ({names}); "
                         "give one project's runs")
    (entity, project), = projects
    group_of = {d: wandb_group(c.get("experiment", "default"), c.get("out_dir", "")) for d, c in
                zip(logged["run_dir"], logged["config"])}
    groups = list(dict.fromkeys(group_of.values()))
    sweeps = [(s, next((g for d, g in group_of.items() if Path(d).parent == s.sweep_dir / "trials"), s.sweep_dir.name))
              for s in map(read_sweep, find_sweeps(dirs))]
    rows = history_rows(logged)
    order = list(summary_table(logged).index)
    settings = "; ".join(dict.fromkeys(logged["title"]))
    description = (f"{len(logged)} runs ({', '.join(order)}) of {settings}. Curves: mean over the runs of each label "
                   f"(W&B job type), band ± 1 std over seeds; bars: mean ± std over seeds. Tables, per-client and "
                   f"partition plots: pflalign report {' '.join(map(str, dirs))}.")
    return ReportPlan(project, entity, f"pflalign: {', '.join(groups)}"[:128], description, groups,
                      [(k, t) for k, t, _ in CURVES if k in rows], [k for k in FINALS if _has(logged, k)],
                      sweeps,
                      sorted(p for d in dirs for p in Path(d).rglob("wandb/offline-run-*") if p.is_dir()))


def _has(runs, key: str) -> bool:
    """Whether any run's results.json has ``key`` (``final/x``: x in its final round)."""
    header = COLUMNS.get(key.replace("/", "."))
    return header is not None and header in runs and runs[header].notna().any()


def build_report(plan: ReportPlan, entity: str):
    """The Report object (nothing is sent: :func:`publish` saves it)."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    def runset(group: str):
        return wr.Runset(entity=entity, project=plan.project, name=group, filters=[expr.Metric("Group") == group])

    runsets = [runset(g) for g in plan.groups]
    by_label = {"groupby": "JobType", "groupby_aggfunc": "mean", "groupby_rangefunc": "stddev"}
    blocks = [wr.P(plan.description),
              wr.H2("Accuracy vs round"),
              wr.PanelGrid(runsets=runsets, panels=[wr.LinePlot(title=t, x="round", y=[k], **by_label)
                                                    for k, t in plan.curves]),
              wr.H2("Final metrics"),
              wr.PanelGrid(runsets=runsets, panels=[wr.BarPlot(title=FINALS[k], metrics=[k], **by_label)
                                                    for k in plan.finals])]
    for sweep, group in plan.sweeps:
        columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(k), log=v.startswith("loguniform") or None)
                   for k, v in sweep.space.items()]
        columns += [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(sweep.metric),
                                                     display_name=f"{sweep.metric} (selection, validation)"),
                    wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric("acc_mean_last10"),
                                                     display_name=f"test acc, mean last 10 {NOT_USED}")]
        history = sweep.metric.removesuffix("_last10")
        blocks += [wr.H2(f"Sweep {sweep.name}"),
                   wr.P(f"Selected on {sweep.metric} ({sweep.mode}, validation split)"
                        + (f"; selected trial {sweep.selected}" if sweep.selected else "") + "."),
                   wr.PanelGrid(runsets=[runset(group)], panels=[
                       wr.ParallelCoordinatesPlot(title=f"{sweep.name}: hyperparameters vs {sweep.metric}",
                                                  columns=columns),
                       wr.LinePlot(title=f"{history} per trial", x="round", y=[history])])]
    return wr.Report(project=plan.project, entity=entity, title=plan.title, description="pflalign report --wandb",
                     blocks=blocks, width="fluid")


def check_online() -> None:
    """Saving a report needs wandb-workspaces, an API key and the W&B host: refused otherwise, at once."""
    try:
        import wandb_workspaces.reports.v2  # noqa: F401
    except ImportError:
        raise InputError(f"report --wandb needs the wandb-workspaces package: {INSTALL}") from None
    if not has_api_key():
        raise InputError("report --wandb saves a W&B Report online and needs an API key (WANDB_API_KEY or "
                         "`wandb login`); without --wandb the report is made locally")
    host, port = host_port(base_url())
    if not reachable(host, port):
        raise InputError(f"report --wandb: the W&B host {host}:{port} ({base_url()}) did not answer within "
                         f"{PROBE_TIMEOUT_S:g} s; save the report from a machine with network access")


def publish(plan: ReportPlan) -> str:
    """Save the report (after :func:`check_online`); returns its URL."""
    import wandb

    entity = plan.entity or wandb.Api().default_entity
    return build_report(plan, entity).save().url
