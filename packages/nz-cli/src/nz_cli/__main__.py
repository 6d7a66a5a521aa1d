"""``python -m nz_cli``: the same as the ``neuronetz-gateway`` command."""

from nz_cli.main import main

main()
