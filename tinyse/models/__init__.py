"""The model zoo: ``create(name, num_classes=10, **options)`` and ``list()``.

Every model takes ``se=None`` (plain) or SE options (see ``se_options``); the
``se_`` names are the same networks with SE switched on, so
``create("se_resnet20", reduction=8)`` equals ``create("resnet20", se={"reduction": 8})``.
"""
import functools

from tinyse.models import inception, resnet

_FACTORIES = {}


def register(name, factory, **defaults):
    """Add ``name`` -> factory(num_classes=..., **options), with ``defaults`` fixed in."""
    _FACTORIES[name] = functools.partial(factory, **defaults)


def create(name, num_classes=10, seed=None, **options):
    """Build model ``name``; ``seed`` (if given) seeds its initial weights."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list())}")
    if seed is not None:
        from tinyse.nn import manual_seed

        manual_seed(seed)
    factory = _FACTORIES[name]
    if name.startswith("se_") and "se" not in options:
        options["se"] = True
    return factory(num_classes=num_classes, **options)


def list():  # the registry's public name, models.list(); it hides the builtin list inside this module only
    """Names of every registered model, sorted."""
    return sorted(_FACTORIES)


for _depth in (20, 32, 44, 56, 110):
    register(f"resnet{_depth}", resnet.resnet_basic, depth=_depth)
    register(f"se_resnet{_depth}", resnet.resnet_basic, depth=_depth)
register("resnet164", resnet.resnet_bottleneck, depth=164)
register("se_resnet164", resnet.resnet_bottleneck, depth=164)
# A small CIFAR ResNeXt-29: 3 bottlenecks per stage, cardinality 4, 8 channels per group at stage 1.
register("resnext29_4x8d", resnet.resnet_bottleneck, depth=29, cardinality=4, group_width=8)
register("se_resnext29_4x8d", resnet.resnet_bottleneck, depth=29, cardinality=4, group_width=8)
register("inception", inception.CifarInception)
register("se_inception", inception.CifarInception)
