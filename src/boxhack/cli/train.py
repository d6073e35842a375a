"""``boxhack train``: train one of the paper's networks reproducibly.

The library is imported inside the handler: that keeps ``boxhack --help`` from importing torch.
"""

from __future__ import annotations

import sys

from boxhack.cli.common import (
    add_device_arg,
    add_quiet_arg,
    nonneg_int,
    positive_float,
    positive_int,
)

# the zoo's networks (boxhack.models.zoo.NETWORKS), here so that building the parser does not
# import torch; tests/test_cli.py checks they agree
NETWORKS = {
    "xor-mlp": "XOR-like circuit: 2-16-8-2 ReLU MLP",
    "tanh-mlp": "tanh circuit: 2-8-4-2 MLP with tanh activations",
    "mnist-mlp": "MNIST MLP 784-64-32-K, ReLU",
    "mnist-cnn": "MNIST CNN: conv16-pool-conv32-pool-fc64-K, ReLU",
}


def register(sub) -> None:
    nets = "; ".join(f"{name}: {description}" for name, description in NETWORKS.items())
    p = sub.add_parser(
        "train",
        help="train a network and save model.pt + model.json",
        description=f"Train a network reproducibly (same seed -> same weights). Networks: {nets}.",
    )
    p.add_argument("--net", required=True, choices=list(NETWORKS), help="network architecture")
    p.add_argument("--data", default=None,
                   help="data set (default: the network's own: mnist, xor or tanh)")
    p.add_argument("--classes", default=None,
                   help="class subset, e.g. 0-9, 0-4, 0,1 (default: all)")
    p.add_argument("--data-dir", default=None,
                   help="folder with IDX files (full MNIST / Fashion-MNIST)")
    p.add_argument("--split-seed", type=nonneg_int, default=0,
                   help="seed of the train/test split (default 0)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="training epochs (default per network)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=positive_float, default=None,
                   help="Adam learning rate (default per network)")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seed of initialisation and shuffling")
    add_device_arg(p)
    p.add_argument("--out", required=True, help="output directory for model.pt and model.json")
    add_quiet_arg(p)
    p.set_defaults(handler=_train)


def _train(args) -> int:
    from boxhack.infra.files import check_output_dir
    from boxhack.models.io import save_model
    from boxhack.models.train import train_model
    from boxhack.models.zoo import net_spec
    from boxhack.workflow.target import load_data, resolve_device

    spec = net_spec(args.net)
    resolve_device(args.device)
    check_output_dir(args.out, "--out")
    ds = load_data(args.data or spec.dataset, args.classes, data_dir=args.data_dir,
                   split_seed=args.split_seed)  # fmt: skip
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    model, info = train_model(args.net, ds, epochs=args.epochs, batch_size=args.batch_size,
                              lr=args.lr, seed=args.seed, device=args.device, log=log)  # fmt: skip
    out = save_model(model, args.out, info)
    print(f"{args.net} on {ds.name} classes {','.join(map(str, ds.classes))}: test accuracy "
          f"{info['test_accuracy']:.4f} (train {info['train_accuracy']:.4f}, "
          f"{info['train']['seconds']:.1f} s) -> {out}")  # fmt: skip
    return 0
