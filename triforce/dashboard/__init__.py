"""W&B dashboards as code: `python -m triforce.dashboard` (or `triforce-dashboard`) builds a
workspace and a report of a project's runs (optionally one sweep) with wandb-workspaces.

spec.py    the sections and panels, as Workspace and Report objects
names.py   the names those panels refer to, and the check that runs log them
logged.py  the names a run logged, read from its local `.wandb` file
cli.py     the command: save, or --dry-run to print the specification offline
"""
