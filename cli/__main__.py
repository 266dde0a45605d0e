"""``python -m paratune.cli ...``: the ``paratune`` command without its console script."""

from . import main

main()
