"""``python -m bushub``: the same as the ``bushub`` command."""

from bushub.cli import main

main()
