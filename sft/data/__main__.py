"""`python -m sft.data data=<...> model=<...>`: preview rendered examples and data statistics."""

from .preview import cli

cli()
