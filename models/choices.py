"""Allowed names for every categorical option, importable without torch.

The study-file validator checks names against these before anything heavy is imported
(`tunetrack validate` stays instant); the registries in `nets`, `init_schemes`, `data`,
`train` and `transfer` hold the same keys, which a test asserts.
"""

DATASETS = ("digits", "imagefolder", "torchvision", "synthetic")
FAMILIES = ("mlp", "cnn", "resnet", "torchvision")
ACTIVATIONS = ("relu", "gelu", "leaky_relu", "tanh", "elu", "silu", "sigmoid")
INIT_SCHEMES = ("default", "xavier_uniform", "xavier_normal", "kaiming_uniform",
                "kaiming_normal", "orthogonal")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULERS = ("none", "step", "exponential", "cosine", "onecycle", "plateau")
MONITORS = ("val_loss", "val_accuracy")
POOLS = ("max", "avg", "none")
# family torchvision (models/transfer.py): pretrained backbones and their input statistics
BACKBONES = ("resnet18", "resnet34", "resnet50", "vgg11_bn", "vgg16_bn", "efficientnet_b0",
             "mobilenet_v3_small", "convnext_tiny")
PREPROCESSING = ("auto", "imagenet", "dataset")

# study-file field -> allowed names
FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    "dataset.name": DATASETS,
    "model.family": FAMILIES,
    "model.activation": ACTIVATIONS,
    "model.init": INIT_SCHEMES,
    "model.pool": POOLS,
    "model.backbone": BACKBONES,
    "model.preprocess": PREPROCESSING,
    "train.optimizer": OPTIMIZERS,
    "train.scheduler": SCHEDULERS,
    "train.early_stopping.monitor": MONITORS,
}
