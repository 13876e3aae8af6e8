"""``python -m bushub``: the same as the ``bushub`` command."""

from bushub.cli import main

# Guarded: a worker process (bushub.supervisor) must not run the command again.
if __name__ == "__main__":
    main()
