"""``python -m klnotes``: the ``klnotes`` command (see :mod:`klnotes.cli`)."""

from klnotes.cli import console_main

if __name__ == "__main__":
    console_main()
