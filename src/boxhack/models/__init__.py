"""Networks: the paper's zoo, reproducible training, safe save/load, layer taps."""

from boxhack.models.layers import collect, forward_with_layers, get_layer, list_layers, tap
from boxhack.models.zoo import NETWORKS, build_model, net_spec

__all__ = [
    "NETWORKS",
    "build_model",
    "collect",
    "forward_with_layers",
    "get_layer",
    "list_layers",
    "net_spec",
    "tap",
]
