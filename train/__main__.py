"""`python -m train --config FILE.toml [--key value …]` (also under torchrun)."""
from .trainer import main

main()
