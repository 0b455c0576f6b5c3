"""``python -m tunelab ...``: the same CLI as the ``tunelab`` command (``accelerate launch -m tunelab train ...``)."""

from tunelab.cli.main import main

if __name__ == "__main__":
    main()
