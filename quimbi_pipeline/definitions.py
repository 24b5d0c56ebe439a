"""The one Definitions object: everything under defs/, loaded by Dagster's defs-folder loader."""

import warnings
from pathlib import Path

import dagster as dg

# Dagster's notices about its own APIs (its sensor decorator passes a beta parameter) are not for operators.
warnings.filterwarnings("ignore", category=dg.BetaWarning)


def load_definitions() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)


defs = load_definitions()
