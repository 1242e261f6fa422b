"""``python -m lowres`` (and ``torchrun -m lowres``) run the CLI."""

from lowres.cli import main

main()
