"""python -m experiments SUBCOMMAND: see the package docstring (python -m experiments --help)."""
import sys

from . import MODULES, common

sys.exit(common.main(MODULES))
