"""Allowed names for every categorical option, importable without torch.

The study-file validator checks names against these before anything heavy is imported
(`tunetrack validate` stays instant); the registries in `nets`, `init_schemes`, `data` and
`train` hold the same keys, which a test asserts.
"""

DATASETS = ("digits", "imagefolder", "torchvision", "synthetic")
FAMILIES = ("mlp", "cnn", "resnet")
ACTIVATIONS = ("relu", "gelu", "leaky_relu", "tanh", "elu", "silu", "sigmoid")
INIT_SCHEMES = ("default", "xavier_uniform", "xavier_normal", "kaiming_uniform",
                "kaiming_normal", "orthogonal")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULERS = ("none", "step", "exponential", "cosine", "onecycle", "plateau")
MONITORS = ("val_loss", "val_accuracy")
POOLS = ("max", "avg", "none")

# study-file field -> allowed names
FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    "dataset.name": DATASETS,
    "model.family": FAMILIES,
    "model.activation": ACTIVATIONS,
    "model.init": INIT_SCHEMES,
    "model.pool": POOLS,
    "train.optimizer": OPTIMIZERS,
    "train.scheduler": SCHEDULERS,
    "train.early_stopping.monitor": MONITORS,
}
