"""`python -m sluice.sdk.cli` runs the `sluice` command."""

from sluice.sdk.cli import main

main()
