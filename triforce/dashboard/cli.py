"""`python -m triforce.dashboard`: a W&B workspace and report for a project's runs, or one sweep's.

    triforce -m method.budget=256,512,1024 method.gamma=4,6,8           # a sweep, logged to W&B
    python -m triforce.dashboard --sweep outputs/multirun/DATE/TIME --dry-run   # print, no network
    python -m triforce.dashboard --sweep outputs/multirun/DATE/TIME             # save to W&B

--dry-run builds the same wandb-workspaces objects and prints the specification saving would
send: JSON on stdout, an outline on stderr. Saving needs a W&B account; a missing account or an
unreachable server is one `error: ...` line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from triforce.dashboard import spec
from triforce.dashboard.logged import logged_under, run_files

USAGE_ERROR = 2


class DashboardError(Exception):
    """A problem the user fixes (an option, an account, the network): one line, exit code 2."""


def default_project() -> str:
    """The project runs log to unless logger.project says otherwise (conf/logger/wandb.yaml)."""
    from omegaconf import OmegaConf

    import triforce.conf

    return str(OmegaConf.load(Path(triforce.conf.__file__).parent / "logger" / "wandb.yaml").project)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    intro, examples, *_ = __doc__.split("\n\n")
    p = argparse.ArgumentParser(prog="python -m triforce.dashboard", description=intro.split(": ", 1)[1],
                                epilog="examples:\n" + examples, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project", default=None, help="W&B project (default: the app's logger.project, triforce)")
    p.add_argument("--entity", default=os.environ.get("WANDB_ENTITY"),
                   help="W&B entity (default: $WANDB_ENTITY, else your account's default entity on save)")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--group", help="only the runs of this W&B group (a sweep's runs share one: sweep-<date>_<time>)")
    scope.add_argument("--sweep", type=Path, metavar="DIR",
                       help="only the runs of this multirun folder (its group is read from its W&B run logs)")
    p.add_argument("--dry-run", action="store_true", help="build and print the specification; no network")
    return p.parse_args(argv)


def sweep_group(sweep_dir: Path) -> str:
    """The W&B group the runs under a multirun folder logged (the app names it after the folder,
    or logger.group): read from their local run logs, so it is the group they really carry."""
    if not sweep_dir.is_dir():
        raise DashboardError(f"--sweep {sweep_dir}: no such folder (a multirun folder: outputs/multirun/<date>/<time>)")
    if not run_files([sweep_dir]):
        raise DashboardError(f"--sweep {sweep_dir}: no W&B runs under it (was the sweep run with logger=none?)")
    groups = logged_under([sweep_dir]).groups
    if len(groups) != 1:
        found = ", ".join(sorted(groups)) or "none"
        raise DashboardError(f"--sweep {sweep_dir}: its runs carry {len(groups)} W&B groups ({found}); "
                             "name one with --group")
    return groups.pop()


def outline(args: argparse.Namespace, group: str | None) -> str:
    lines = [f"{spec.title(group)}: a workspace and a report in "
             f"{args.entity or '<your default entity>'}/{args.project}"
             + (f", runs of group {group}" if group else ", all runs")]
    for s in spec.SECTIONS:
        lines.append(f"  {s.title}")
        for panel in s.panels():
            lines.append(f"    - {getattr(panel, 'title', None) or f'table {panel.table_name}'}")
    return "\n".join(lines)


def save(args: argparse.Namespace, group: str | None) -> tuple[str, str]:
    from triforce.app.tracking import has_credentials

    if not has_credentials(os.environ):
        raise DashboardError("no W&B account is configured: set WANDB_API_KEY (or run `wandb login`), "
                             "or use --dry-run to print the dashboard without saving")
    try:
        import wandb

        entity = args.entity or wandb.Api().default_entity
        if not entity:
            raise DashboardError("W&B did not say which entity to save to: pass --entity")
        workspace, report = spec.workspace(entity, args.project, group), spec.report(entity, args.project, group)
        workspace.save()
        report.save()
        return workspace.url, report.url
    except DashboardError:
        raise
    except Exception as e:  # noqa: BLE001 - the network, the account, the project: all one clear line
        reason = (str(e).strip().splitlines() or [""])[0]
        raise DashboardError(f"could not save the dashboard to W&B ({type(e).__name__}: {reason}); check "
                             "WANDB_API_KEY and that the W&B server is reachable, or use --dry-run") from None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.project = args.project or default_project()
    try:
        group = sweep_group(args.sweep) if args.sweep is not None else args.group
        if args.dry_run:
            entity = args.entity or ""  # saving resolves the account's default entity
            built = spec.specification(spec.workspace(entity, args.project, group),
                                       spec.report(entity, args.project, group))
            print(outline(args, group), file=sys.stderr)
            print("dry run: nothing saved; the specification follows on stdout", file=sys.stderr)
            print(json.dumps(built, indent=1))
            return
        workspace_url, report_url = save(args, group)
    except DashboardError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(USAGE_ERROR)
    print(f"workspace: {workspace_url}")
    print(f"report: {report_url}")


if __name__ == "__main__":
    main()
