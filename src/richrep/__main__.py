"""``python -m richrep`` runs the command line."""

from richrep.cli import main

main()
