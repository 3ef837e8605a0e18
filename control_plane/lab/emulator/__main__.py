"""`python -m control_plane.lab.emulator` (see cli.py)."""

from .cli import main

if __name__ == "__main__":
    main()
