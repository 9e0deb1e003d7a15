"""``python -m img2pose_core.synthetic KIND OUT ...`` (see :func:`.command.main`)."""

from .command import main

if __name__ == "__main__":
    raise SystemExit(main())
