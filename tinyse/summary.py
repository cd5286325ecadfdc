"""A model, layer by layer: each layer's output shape, parameters and multiply-adds.

    tinyse.summary(tinyse.models.create("se_resnet20"), (1, 3, 32, 32))
    python -m tinyse.models se_resnet20 --reduction 8
    python -m tinyse.models --table         # parameters and multiply-adds of the model zoo, plain and SE

How it works: one forward pass on random input runs with a *tracer* installed
(``tinyse.nn.module._tracer``), so every module call goes through ``trace``
below, which sees the module, its input and its output. One row is kept per
*leaf call*: a module call during which no other module was called (Conv2d,
BatchNorm2d, Linear, ... and SEBlock too: it uses its fc1 / fc2 weights through
``F.se_excite`` instead of calling them).

Multiply-adds (one multiplication plus one addition count as one), for a batch of N:
    Conv2d   N * OH * OW * O * (C / groups) * KH * KW
             every one of the N * O * OH * OW outputs is a dot product over a (C / groups) x KH x KW window
    Linear   N * in * out
             every one of the N * out outputs is a dot product of length ``in``
    SEBlock  N * (C * hidden + hidden * C)  +  N * C * H * W
             its two fully connected layers (C -> hidden -> C) on the squeezed (N, C),
             plus one multiply per element of U (N, C, H, W) to rescale it by its channel's gate
Everything else counts as 0: batch norm, ReLU, pooling (SE's squeeze too), padding,
concatenation, the additions of residual units, biases and gates. They are cheap
elementwise work, and leaving them out is the usual convention of papers' tables.
"""
import numpy as np

from tinyse.backend import to_device
from tinyse.nn import module as module_lib
from tinyse.nn.layers import Conv2d, Linear
from tinyse.nn.se import SEBlock
from tinyse.tensor import Tensor, no_grad

ZERO_COST_NOTE = (
    "Multiply-adds count Conv2d, Linear and SEBlock; batch norm, ReLU, pooling, padding and concat count as 0."
)


def multiply_adds(module, x, out):
    """Multiply-adds of one call of ``module`` on input array ``x`` giving output array ``out`` (rules above)."""
    if isinstance(module, Conv2d):
        n, _, oh, ow = out.shape
        k = module.kernel_size
        return n * oh * ow * module.out_channels * (module.in_channels // module.groups) * k * k
    if isinstance(module, Linear):
        rows = x.size // module.in_features  # N for an (N, in) input
        return rows * module.in_features * module.out_features
    if isinstance(module, SEBlock):
        n, c, h, w = x.shape
        return n * (c * module.hidden + module.hidden * c) + n * c * h * w
    return 0


def summary(model, input_shape, device="cpu", show=True):
    """Run ``model`` once on random input of ``input_shape`` and print its table (if ``show``); return the numbers.

    The model must already be on ``device``; the input takes the dtype of its parameters.
    The pass runs in eval mode (batch norm's running statistics stay untouched) and
    under ``no_grad``; each module's training flag is restored afterwards.

    Returns a dict:
        rows          one dict per leaf call: name, type, output_shape, params, macs
                      (params: every parameter of that module, its submodules' included)
        other_params  parameters in no row (owned directly by a non-leaf module, or never called)
        total_params  every parameter once: equals model.num_parameters()
        total_macs    the sum of the rows' multiply-adds, for the whole input batch
        input_shape
    """
    names = {id(m): name for name, m in model.named_modules()}
    rows, stack = [], []  # stack: one flag per module call in progress, "has it called another module?"

    def trace(module, args):
        if stack:
            stack[-1] = True
        stack.append(False)
        try:
            out = module.forward(*args)
        finally:
            called_another = stack.pop()
        if not called_another:
            x = args[0].data if isinstance(args[0], Tensor) else args[0]
            y = out.data if isinstance(out, Tensor) else out
            rows.append({
                "name": names.get(id(module), "?"),
                "type": type(module).__name__,
                "output_shape": tuple(y.shape),
                "params": module.num_parameters(),
                "macs": multiply_adds(module, x, y),
                "module": module,
            })
        return out

    parameters = model.parameters()
    dtype = parameters[0].dtype if parameters else np.float32
    x = Tensor(to_device(np.random.default_rng(0).standard_normal(input_shape).astype(dtype), device))
    modes = {module: module.training for module in model.modules()}
    previous_tracer, module_lib._tracer = module_lib._tracer, trace
    try:
        model.eval()
        with no_grad():
            model(x)
    finally:
        module_lib._tracer = previous_tracer
        for module, training in modes.items():
            module.training = training

    in_rows = {id(p) for row in rows for p in row.pop("module").parameters()}
    other = sum(p.size for p in parameters if id(p) not in in_rows)
    result = {
        "rows": rows,
        "other_params": other,
        "total_params": other + sum(p.size for p in parameters if id(p) in in_rows),
        "total_macs": sum(row["macs"] for row in rows),
        "input_shape": tuple(input_shape),
    }
    if show:
        print(format_table(result))
    return result


def format_table(result):
    """The text table of a ``summary`` result: one line per row, then the totals and what MACs leave out."""
    header = ("Layer", "Type", "Output shape", "Params", "Mult-adds")
    lines = [
        (row["name"] or "(model)", row["type"], str(row["output_shape"]), f"{row['params']:,}", f"{row['macs']:,}")
        for row in result["rows"]
    ]
    if result["other_params"]:
        lines.append(("(parameters of non-leaf modules)", "", "", f"{result['other_params']:,}", "0"))
    total = ("Total", "", "", f"{result['total_params']:,}", f"{result['total_macs']:,}")
    widths = [max(len(line[i]) for line in [header, *lines, total]) for i in range(5)]

    def fmt(line):
        left = [cell.ljust(width) for cell, width in zip(line[:3], widths)]
        right = [cell.rjust(width) for cell, width in zip(line[3:], widths[3:])]
        return "  ".join(left + right).rstrip()

    rule = "-" * len(fmt(tuple("x" * w for w in widths)))
    params, macs = result["total_params"] / 1e6, result["total_macs"] / 1e6
    return "\n".join([
        fmt(header), rule, *map(fmt, lines), rule, fmt(total),
        f"{params:.3f} M parameters, {macs:.2f} M multiply-adds for input {result['input_shape']}",
        ZERO_COST_NOTE,
    ])


# --- the model zoo's table (python -m tinyse.models --table) ---------------------------
TABLE_MODELS = ("resnet20", "resnet32", "resnet56", "resnet110", "resnet164", "resnext29_4x8d", "inception")
TABLE_REDUCTIONS = (4, 8, 16, 32)
INPUT_SHAPE = (1, 3, 32, 32)


def comparison_table(names=TABLE_MODELS, reductions=TABLE_REDUCTIONS):
    """Markdown tables: parameters and multiply-adds (millions, one 32x32 image) of each model, plain and SE-r."""
    from tinyse import models

    counts = {}  # (name, r or None) -> (params, macs)
    for name in names:
        for r in (None, *reductions):
            model = models.create(name) if r is None else models.create(f"se_{name}", reduction=r)
            result = summary(model, INPUT_SHAPE, show=False)
            counts[name, r] = result["total_params"], result["total_macs"]

    def table(title, index):
        lines = [
            f"{title} (millions; in brackets, SE's increase over the plain model)",
            "",
            "| model | plain | " + " | ".join(f"SE r={r}" for r in reductions) + " |",
            "|---|---:|" + "---:|" * len(reductions),
        ]
        for name in names:
            plain = counts[name, None][index]
            cells = [f"{counts[name, r][index] / 1e6:.3f} (+{100 * (counts[name, r][index] / plain - 1):.2f}%)"
                     for r in reductions]
            lines.append(f"| {name} | {plain / 1e6:.3f} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    return "\n\n".join([table("Parameters", 0), table("Multiply-adds per 32x32 image", 1), ZERO_COST_NOTE])
