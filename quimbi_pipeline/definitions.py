"""The one Definitions object: everything under defs/, loaded by Dagster's defs-folder loader."""

from pathlib import Path

import dagster as dg


def load_definitions() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)


defs = load_definitions()
