"""`python -m malm ...` is `malm ...`; torchrun starts training this way: `torchrun ... -m malm train ...`."""

from malm.cli import main

main()
