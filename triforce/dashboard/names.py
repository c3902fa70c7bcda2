"""The names a dashboard refers to, read from its wandb-workspaces objects, and the check that
runs really log each of them.

A panel naming a metric no run logs is not an error anywhere in W&B: it is an empty chart.
So the dashboard's own objects are walked (not a second list that could drift from them), every
name is classified the way W&B resolves it, and `unlogged` compares them with what real runs
logged (`logged.py`). A panel type this walker does not know is an error, not a silent pass.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Iterator

import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws
from wandb_workspaces import expr

from triforce.dashboard.logged import LoggedNames

# Run attributes (Group, Step, State, ...) exist for every run: nothing to check.
RUN_ATTRIBUTES = set(expr.FE_METRIC_NAME_MAP) | set(expr.FE_METRIC_NAME_MAP.values())


@dataclasses.dataclass(frozen=True)
class Ref:
    kind: str  # config | summary | history | table
    name: str
    where: str  # "report / Latency / latency per phase (s per prompt)"

    def __str__(self) -> str:
        return f"{self.where}: {self.kind} {self.name!r}"


def _metric(value: Any, where: str, plain: str) -> Iterator[Ref]:
    """A panel's metric argument. `plain`: what a bare string means for this panel type (a
    history key in line and bar plots, a summary key in scatter and parallel-coordinates plots)."""
    if value is None:
        return
    if isinstance(value, (wr.Config, expr.Config)):
        yield Ref("config", value.name, where)
    elif isinstance(value, (wr.SummaryMetric, expr.Summary)):
        yield Ref("summary", value.name, where)
    elif isinstance(value, (wr.Metric, expr.Metric, str)):
        name = value if isinstance(value, str) else value.name
        if name not in RUN_ATTRIBUTES:
            yield Ref(plain if isinstance(value, str) else "history", name, where)
    else:
        raise TypeError(f"{where}: unknown metric type {type(value).__name__}")


def _groupby(value: Any, where: str) -> Iterator[Ref]:
    """A panel's groupby: a bare string is a run attribute if it names one, else a config key."""
    if value is None or value == "None":
        return
    if isinstance(value, str) and value not in RUN_ATTRIBUTES:
        value = wr.Config(value.removeprefix("config."))
    yield from _metric(value, where, "config")


def panel_refs(panel: Any, where: str) -> Iterator[Ref]:
    where = f"{where} / {getattr(panel, 'title', None) or getattr(panel, 'table_name', None) or type(panel).__name__}"
    if isinstance(panel, wr.LinePlot):
        yield from _metric(panel.x, where, "history")
        for y in panel.y:
            yield from _metric(y, where, "history")
        yield from _groupby(panel.groupby, where)
    elif isinstance(panel, wr.BarPlot):
        for m in panel.metrics:
            yield from _metric(m, where, "history")
        yield from _groupby(panel.groupby, where)
    elif isinstance(panel, wr.ScatterPlot):
        for axis in (panel.x, panel.y, panel.z):
            yield from _metric(axis, where, "summary")
    elif isinstance(panel, wr.ParallelCoordinatesPlot):
        for column in panel.columns:
            yield from _metric(column.metric, where, "summary")
    elif isinstance(panel, wr.WeavePanelSummaryTable):
        yield Ref("table", panel.table_name, where)  # runs.summary[table_name]
    elif isinstance(panel, wr.MarkdownPanel):
        return
    else:
        raise TypeError(f"{where}: the name check does not know {type(panel).__name__} panels; "
                        "teach triforce/dashboard/names.py which names it refers to")


def _key(key: expr.Key, where: str) -> Iterator[Ref]:
    """A runset key as the backend stores it: config keys carry a `.value` segment
    (method.value.name), run attributes their backend name (group)."""
    if key.section == "config":
        yield Ref("config", ".".join(p for p in key.name.split(".") if p != "value"), where)
    elif key.section == "summary":
        yield Ref("summary", key.name, where)
    elif key.section == "run":
        if key.name not in RUN_ATTRIBUTES:
            yield Ref("history", key.name, where)
    else:
        raise TypeError(f"{where}: unknown key section {key.section!r}")


def _filter_refs(filters: str, where: str) -> Iterator[Ref]:
    stack = [expr.expr_to_filters(filters)] if filters else []
    while stack:
        node = stack.pop()
        stack.extend(node.filters or [])
        if node.key is not None:
            yield from _key(node.key, f"{where} filter")


def workspace_refs(workspace: ws.Workspace) -> list[Ref]:
    refs: list[Ref] = []
    for section in workspace.sections:
        for panel in section.panels:
            refs += panel_refs(panel, f"workspace / {section.name}")
    settings = workspace.runset_settings
    for group in settings.groupby:
        refs += _metric(group, "workspace / runs grouped by", "config")
    refs += _filter_refs(settings.filters, "workspace / runs")
    return refs


def report_refs(report: wr.Report) -> list[Ref]:
    refs: list[Ref] = []
    section = "report"
    for block in report.blocks:
        if isinstance(block, wr.H2):
            section = f"report / {block.text}"
        elif isinstance(block, wr.PanelGrid):
            for panel in block.panels:
                refs += panel_refs(panel, section)
            for rs in block.runsets:
                for group in rs.groupby:
                    refs += _key(expr.groupby_str_to_key(group), f"{section} / runs grouped by")
                refs += _filter_refs(rs.filters, f"{section} / runs")
    return refs


def unlogged(refs: Iterable[Ref], logged: LoggedNames) -> list[Ref]:
    """The references no run logged: config columns, summary keys, history keys, tables."""
    pools = {"config": logged.config, "summary": logged.summary, "history": logged.history, "table": logged.tables}
    return [r for r in refs if r.name not in pools[r.kind]]
