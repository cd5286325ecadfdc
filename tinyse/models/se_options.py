"""How models take their SE settings: ``se=None`` for the plain network, or a dict of options.

    se = {"reduction": 16, "squeeze": "avg", "excitation": "sigmoid",
          "integration": "standard", "stages": (1, 2, 3)}

Missing keys take these defaults. ``integration`` places the block in a
residual unit (the paper's Fig. 5); ``stages`` lists the stages that get SE
(the paper's ablation of SE in one stage at a time).
"""
from tinyse.nn import SEBlock

INTEGRATIONS = ("standard", "pre", "post", "identity")
DEFAULTS = {"reduction": 16, "squeeze": "avg", "excitation": "sigmoid", "integration": "standard", "stages": (1, 2, 3)}


def resolve(se, **keywords):
    """The full SE option dict (or None for no SE) from ``se`` and flat keywords such as ``reduction=8``."""
    given = {k: v for k, v in keywords.items() if v is not None}
    if se is None or se is False:
        if given:
            raise ValueError(f"SE options {given} given to a model without SE: pass se={{...}} or use an se_ model")
        return None
    options = dict(DEFAULTS, **({} if se is True else se), **given)
    unknown = options.keys() - DEFAULTS.keys()
    if unknown:
        raise ValueError(f"unknown SE options {sorted(unknown)}: choose from {sorted(DEFAULTS)}")
    if options["integration"] not in INTEGRATIONS:
        raise ValueError(f"unknown SE integration {options['integration']!r}: choose one of {INTEGRATIONS}")
    options["stages"] = tuple(options["stages"])
    return options


def make_block(channels, se, stage=None):
    """An SEBlock for ``channels`` from resolved options, or None when SE is off (or off in this stage)."""
    if se is None or (stage is not None and stage not in se["stages"]):
        return None
    return SEBlock(channels, se["reduction"], se["squeeze"], se["excitation"])
