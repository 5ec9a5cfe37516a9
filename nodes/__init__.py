"""The pack's nodes, one module per family; each module lists its own nodes in `NODES`."""
NODES = []
