"""`python -m cli` runs the `tagway` command (the tests use it to run the source tree)."""

from cli.app import main

main()
