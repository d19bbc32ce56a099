"""`python -m keyserver` = the `keyserver` console script."""

from keyserver.cli import main

main(prog_name="keyserver")
