"""Networks: the paper's zoo, reproducible training, safe save/load, any user model
(:mod:`~boxhack.models.loaders`), its input domain (:mod:`~boxhack.models.domain`), layer taps."""

from boxhack.models.domain import InputDomain, input_bounds
from boxhack.models.layers import collect, forward_with_layers, get_layer, list_layers, tap
from boxhack.models.loaders import load_any_model
from boxhack.models.zoo import NETWORKS, build_model, net_spec

__all__ = [
    "NETWORKS",
    "InputDomain",
    "build_model",
    "collect",
    "forward_with_layers",
    "get_layer",
    "input_bounds",
    "list_layers",
    "load_any_model",
    "net_spec",
    "tap",
]
