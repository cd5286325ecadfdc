"""The model zoo from the command line.

    python -m tinyse.models                          # the names of the models
    python -m tinyse.models se_resnet20 --reduction 8  # one model, layer by layer
    python -m tinyse.models --table                  # parameters and multiply-adds, plain and SE (the README's table)
"""
import argparse

from tinyse import models
from tinyse.models import se_options
from tinyse.nn.se import SQUEEZES
from tinyse.ops.se import GATES
from tinyse.summary import INPUT_SHAPE, comparison_table, summary


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m tinyse.models",
        description="List the models, or print a model's layers, output shapes, parameters and multiply-adds "
        "at input (1, 3, 32, 32).",
    )
    parser.add_argument("model", nargs="?", help="a model name: " + ", ".join(models.list()))
    parser.add_argument("--reduction", type=int, help="SE reduction ratio r (se_ models)")
    parser.add_argument("--squeeze", choices=SQUEEZES)
    parser.add_argument("--excitation", choices=GATES)
    parser.add_argument("--integration", choices=se_options.INTEGRATIONS)
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--table", action="store_true",
                        help="print Markdown tables of parameters and multiply-adds of the model zoo, plain and SE")
    args = parser.parse_args(argv)
    if args.table:
        print(comparison_table())
        return
    if args.model is None:
        print("models:", ", ".join(models.list()))
        return
    options = {k: getattr(args, k) for k in ("reduction", "squeeze", "excitation", "integration")}
    try:
        model = models.create(args.model, **options).to(args.device)
    except (ValueError, RuntimeError) as error:
        parser.error(str(error))
    return summary(model, INPUT_SHAPE, args.device)


if __name__ == "__main__":
    main()
