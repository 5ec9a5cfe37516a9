"""The pack's nodes, one module per family; each module lists its own nodes in `NODES`."""
from . import hmcfg, predicted_lora, subject
from .model_folder import register_model_folder

register_model_folder()
NODES = [*subject.NODES, *predicted_lora.NODES, *hmcfg.NODES]
