"""`python -m course_lib.evaluation ...` (see evaluation/cli.py)."""
from .cli import main

main()
