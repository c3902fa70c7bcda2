"""The dashboard as code: which panels, over which runs, and the question each section answers.

Built with wandb-workspaces twice from the same sections: as a workspace (the project's live
view of its runs) and as a report (a page to share). Names are those runs really log
(docs/DESIGN.md §9; `tests/dashboard` checks every one against a real run): config keys as W&B
columns (`method.budget`: the app logs the nested resolved config), per-prompt metrics with
`run.log` (whose summary the run overwrites with their means over prompts), and the `rounds`
table of per-step records.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable

import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws
from wandb_workspaces.reports.v2 import internal

PARAMS = ("method.budget", "method.gamma", "method.chunk_size")
ACCEPTANCE = ("mean_accepted_len", "accept_rate/middle", "accept_rate/draft")
GROUP_BY = ("method.name", "method.middle_cache")
# time_s/<phase>: a run's own phases (verify at the top of a speculative method, decode for
# autoregressive, draft/middle below, rebuild with method.rebuild) and its baseline's
PHASES = ("time_s/prefill", "time_s/draft", "time_s/middle", "time_s/verify", "time_s/decode", "time_s/rebuild",
          "baseline_time_s/prefill", "baseline_time_s/decode")
ROUNDS_TABLE = "rounds"
# method=auto (docs/DESIGN.md §12): how often a prompt's plan changed, the speculative rounds it ran
# only to measure again (while plain decoding won, or another chain's while a speculative plan won:
# its second looks)
PLANS = ("plan/switches", "plan/probes", "plan/second_looks")


@dataclasses.dataclass(frozen=True)
class Section:
    title: str
    answers: str  # the questions its panels answer: report text, the dry-run outline, the README
    panels: Callable[[], list]  # fresh panel objects: each carries its own id, so none is shared
    rows: int = 2  # rows of panels a workspace page shows (3 per row)


def _acceptance() -> list:
    """A 3x3 grid: rows are the metrics, columns the parameters."""
    return [wr.ScatterPlot(title=f"{metric} vs {param}", x=wr.Config(param), y=wr.SummaryMetric(metric),
                           layout=wr.Layout(x=8 * col, y=6 * row, w=8, h=6))
            for row, metric in enumerate(ACCEPTANCE) for col, param in enumerate(PARAMS)]


def _speedup() -> list:
    axes = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(p), display_name=p.split(".", 1)[1]) for p in PARAMS]
    axes.append(wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric("speedup"), display_name="speedup"))
    return [wr.ParallelCoordinatesPlot(title="budget, gamma, chunk_size -> speedup", columns=axes,
                                       layout=wr.Layout(x=0, y=0, w=16, h=8)),
            wr.ScatterPlot(title="speedup vs mean_accepted_len", x=wr.SummaryMetric("mean_accepted_len"),
                           y=wr.SummaryMetric("speedup"), layout=wr.Layout(x=16, y=0, w=8, h=8))]


def _latency() -> list:
    return [wr.BarPlot(title="latency per phase (s per prompt)", metrics=list(PHASES), orientation="v",
                       layout=wr.Layout(x=0, y=0, w=16, h=8)),
            wr.ScatterPlot(title="prefill time vs prompt length", x=wr.SummaryMetric("prompt_tokens"),
                           y=wr.SummaryMetric("prefill_s"), layout=wr.Layout(x=16, y=0, w=8, h=8))]


def _throughput() -> list:
    return [wr.ScatterPlot(title="throughput (tokens/s over the batch) vs batch size", x=wr.Config("hardware.batch_size"),
                           y=wr.SummaryMetric("throughput"), layout=wr.Layout(x=0, y=0, w=12, h=8)),
            wr.ScatterPlot(title="throughput speedup vs batch size", x=wr.Config("hardware.batch_size"),
                           y=wr.SummaryMetric("throughput_speedup"), layout=wr.Layout(x=12, y=0, w=12, h=8))]


def _plans() -> list:
    return [wr.BarPlot(title="plan switches and probes per prompt", metrics=list(PLANS), orientation="v",
                       layout=wr.Layout(x=0, y=0, w=8, h=8)),
            wr.ScatterPlot(title="tokens/s vs tokens/s of the run's plain-decoding rounds",
                           x=wr.SummaryMetric("plan_tokens_per_s/autoregressive"), y=wr.SummaryMetric("tokens_per_s"),
                           layout=wr.Layout(x=8, y=0, w=8, h=8)),
            wr.ScatterPlot(title="speedup vs method", x=wr.Config("method.name"), y=wr.SummaryMetric("speedup"),
                           layout=wr.Layout(x=16, y=0, w=8, h=8))]


def _trees() -> list:
    return [wr.ScatterPlot(title=f"{metric} vs tree shape", x=wr.Config("method.tree"), y=wr.SummaryMetric(metric),
                           layout=wr.Layout(x=8 * i, y=0, w=8, h=8))
            for i, metric in enumerate(("mean_accepted_len", "speedup", "ms_per_token"))]


def _rounds() -> list:
    return [wr.WeavePanelSummaryTable(table_name=ROUNDS_TABLE, layout=wr.Layout(x=0, y=0, w=24, h=12))]


SECTIONS = (
    Section("Acceptance vs budget, gamma, chunk_size",
            "How many tokens does each top-level forward yield (mean_accepted_len), and how often does "
            "each level's proposal survive (accept_rate/middle: retrieval cache vs full cache; "
            "accept_rate/draft: draft vs middle), as method.budget, method.gamma and method.chunk_size "
            "change? Runs are grouped by method.name and method.middle_cache.", _acceptance, rows=3),
    Section("Speedup",
            "Which (budget, gamma, chunk_size) settings are fastest against the autoregressive baseline, "
            "and how much of the acceptance turns into speed on this hardware?", _speedup),
    Section("Latency",
            "Where does a prompt's time go (prefill, draft, middle, verify or decode, rebuild; the "
            "baseline's prefill and decode beside them), and how does prefill time grow with the prompt?",
            _latency),
    Section("Throughput vs batch size",
            "How many tokens per second does the batch generate as hardware.batch_size grows, and how "
            "much faster than batched autoregressive decoding of the same prompts (throughput_speedup)?",
            _throughput, rows=1),
    Section("Adaptive plans (method=auto)",
            "How often does a prompt's plan change and how often does plain decoding probe speculation "
            "again; is a run faster than the plain-decoding rounds it also ran (plan_tokens_per_s/"
            "autoregressive), and how does method=auto compare with fixed methods? The `rounds` table "
            "names each step's plan (its `plan` column) and the tokens/s it predicted.", _plans, rows=1),
    Section("Token trees (method.tree)",
            "How many tokens does one top-level forward yield with a tree of candidates (mean_accepted_len: "
            "the accepted path and the token after it) against a chain (method.tree=[]), and does the "
            "larger forward pay (speedup, ms_per_token)? docs/DESIGN.md §13.", _trees, rows=1),
    Section("Per-step records",
            "The `rounds` table: tokens emitted, accepted/<level> and proposed/<level>, the plan and its "
            "predicted tokens/s, and wall ms of every top-level step of every prompt, for finding slow or "
            "poorly accepted stretches.", _rounds),
)


def title(group: str | None) -> str:
    return f"TriForce: {group}" if group else "TriForce: all runs"


def _group_filter(group: str | None) -> ws.And | str:
    return ws.And(ws.Metric("Group") == group) if group else ""


def workspace(entity: str, project: str, group: str | None = None) -> ws.Workspace:
    """The project's workspace: one section per Section, runs of `group` (all when None)."""
    return ws.Workspace(
        entity=entity, project=project, name=title(group),
        sections=[ws.Section(name=s.title, panels=s.panels(), is_open=True,
                             layout_settings=ws.SectionLayoutSettings(columns=3, rows=s.rows)) for s in SECTIONS],
        runset_settings=ws.RunsetSettings(filters=_group_filter(group), groupby=[ws.Config(k) for k in GROUP_BY]))


def report(entity: str, project: str, group: str | None = None) -> wr.Report:
    """The same sections as a report: a heading, what the panels answer, and the panels over the
    runs of `group`."""
    def runs() -> wr.Runset:
        return wr.Runset(entity=entity, project=project, name=group or "all runs", filters=_group_filter(group),
                         groupby=[f"config.{k}" for k in GROUP_BY])

    scope = f"the runs of group `{group}`" if group else "all runs"
    blocks: list = [wr.P(f"Acceptance, speedup and latency of {scope} in {project}, grouped by method and "
                         "middle cache. Built by `python -m triforce.dashboard`.")]
    for s in SECTIONS:
        blocks += [wr.H2(s.title), wr.P(s.answers), wr.PanelGrid(runsets=[runs()], panels=s.panels())]
    return wr.Report(entity=entity, project=project, title=title(group),
                     description=f"TriForce sweep dashboard ({scope})", blocks=blocks)


def specification(workspace: ws.Workspace, report: wr.Report) -> dict[str, Any]:
    """The JSON that saving would send (wandb-workspaces' own serialization), built offline.

    One difference: on save a report's run set names its project by the server's internal id,
    which Runset looks up over the network as it serializes; here the run set is serialized
    without it and then names its project by entity and name instead.
    """
    where = [(rs.entity, rs.project) for b in report.blocks if isinstance(b, wr.PanelGrid) for rs in b.runsets]
    offline = copy.deepcopy(report)
    for block in offline.blocks:
        if isinstance(block, wr.PanelGrid):
            for rs in block.runsets:
                rs.entity, rs.project = "", ""  # no lookup
    model = offline._to_model()
    runsets = [rs for b in model.spec.blocks if isinstance(b, internal.PanelGrid) for rs in b.metadata.run_sets]
    for rs, (entity, project) in zip(runsets, where, strict=True):
        rs.project = internal.Project(entity_name=entity, name=project) if project else None
    dump = dict(by_alias=True, exclude_none=True, mode="json")
    return {"workspace": workspace._to_model().model_dump(**dump), "report": model.model_dump(**dump)}
