"""The lessons: each runs top to bottom, is stored without outputs, says only true things about tinyse,
points to solutions that exist and pass, and has an up-to-date rendered copy in docs/lessons/.

Quick mode (TINYSE_LESSONS_QUICK=1) shrinks data and step counts; a failing cell fails the test with the
cell's error. The lessons find CIFAR-10 through TINYSE_DATA, like the package.

The solutions (lessons/solutions/NN_<stem>.py) may import the student's own modules from lessons/mine/,
which the lessons write with ``%%writefile mine/<module>.py`` cells. So that a solution's test never depends
on which lesson tests ran before it (``-k``, a different order, a fresh checkout), the fixture
``student_library`` writes lessons/mine/ from those cells itself, in lesson order, before the first
solution runs: the same text running the lessons writes.
"""
import ast
import importlib
import importlib.util
import re
import sys
import unicodedata
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from tinyse.testing import emulated_cupy

ROOT = Path(__file__).resolve().parents[1]
LESSONS_DIR = ROOT / "lessons"
RENDERED_DIR = ROOT / "docs" / "lessons"
LESSONS = sorted(LESSONS_DIR.glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((LESSONS_DIR / "solutions").glob("[0-9][0-9]_*.py"))
ALLOWED_CONTROL = {"\n", "\t"}


def read(path):
    return nbformat.read(path, as_version=4)


def cells_of(path, kind):
    return [cell.source for cell in read(path).cells if cell.cell_type == kind]


def exercise_functions(path):
    """The names of the top-level ``exercise_*`` functions of a solution file, read without importing it."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    return [node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("exercise_")]


def run_notebook(path, monkeypatch, **environment):
    monkeypatch.setenv("TINYSE_LESSONS_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    resources = {"metadata": {"path": str(path.parent)}}  # run in lessons/, where the figures are
    client = NotebookClient(read(path), timeout=600, kernel_name="python3", resources=resources)
    client.execute()  # raises CellExecutionError, with the failing cell and its traceback


# --- stored as they should be ------------------------------------------------------------------------------
def test_the_lessons_are_there_in_order():
    numbers = [int(path.name[:2]) for path in LESSONS]
    assert numbers == list(range(1, len(LESSONS) + 1)) and len(LESSONS) >= 1


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_is_stored_without_outputs(path):
    """Outputs stay out of the repository, so a diff of a lesson shows only what changed in it."""
    for cell in read(path).cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: a cell keeps its output"


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_no_cell_holds_a_control_character(path):
    """A control character in a cell is a typing accident: "\\frac" written in a normal string is a form feed
    and "rac"; Jupyter shows nothing where it sits. Only newline and tab belong in a cell."""
    for index, cell in enumerate(read(path).cells):
        for line_number, line in enumerate(cell.source.split("\n"), start=1):
            bad = [ch for ch in line if unicodedata.category(ch) == "Cc" and ch not in ALLOWED_CONTROL]
            assert not bad, (f"{path.name}, cell {index} ({cell.cell_type}), line {line_number}: control character "
                             f"{bad[0]!r} in {line!r}")


TINYSE_NAME = re.compile(r"(?<![\w.])tinyse(?:\.[A-Za-z_]\w*)+")


def resolve(dotted):
    """The object ``tinyse.a.b.c`` names: attribute by attribute, importing submodules where needed."""
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for index in range(1, len(parts)):
        if hasattr(obj, parts[index]):
            obj = getattr(obj, parts[index])
            continue
        module_name = ".".join(parts[: index + 1])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:  # the module exists but fails to import something else
                raise
            raise AttributeError(f"{'.'.join(parts[:index])} has no {parts[index]!r}") from None
    return obj


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_every_tinyse_name_a_lesson_mentions_exists(path):
    """`tinyse.optim.SGD` in a lesson's text or code names a thing the package has (no stale names)."""
    mentioned = sorted({name for source in cells_of(path, "markdown") + cells_of(path, "code")
                        for name in TINYSE_NAME.findall(source)})
    missing = []
    for name in mentioned:
        try:
            resolve(name)
        except AttributeError as error:
            missing.append(f"{name} ({error})")
    assert not missing, f"{path.name} mentions names tinyse does not have: {missing}"


SOLUTION_POINTER = re.compile(r"Solution:\s*\[`?solutions/([\w.]+)`?\]\(solutions/([\w.]+)\),\s*`(exercise_\w+)`")


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_every_lesson_ends_with_exercises_whose_solutions_exist(path):
    """An "## Exercises" section; every "Solution: [solutions/NN_<stem>.py](...), `exercise_k`" names a function
    of the lesson's own solution file, every exercise function there is pointed to, and each has a hint."""
    markdown = cells_of(path, "markdown")
    starts = [i for i, source in enumerate(markdown) if re.search(r"^## Exercises\s*$", source, re.MULTILINE)]
    assert starts, f"{path.name} has no '## Exercises' section"
    exercises = "\n".join(markdown[starts[0]:])
    exercises = exercises[re.search(r"^## Exercises\s*$", exercises, re.MULTILINE).start():]
    pointers = SOLUTION_POINTER.findall(exercises)
    assert pointers, f"{path.name}: no 'Solution: [`solutions/...`](solutions/...), `exercise_k`' line"
    solution_file = LESSONS_DIR / "solutions" / (path.stem + ".py")
    assert solution_file.exists(), f"{path.name}: there is no {solution_file.relative_to(ROOT)}"
    defined = exercise_functions(solution_file)
    for shown, linked, function in pointers:
        assert shown == linked == solution_file.name, f"{path.name}: a solution line points to {shown} / {linked}"
        assert function in defined, f"{path.name} points to {function}, which {solution_file.name} does not define"
    pointed = [function for _, _, function in pointers]
    assert sorted(set(pointed)) == sorted(defined), (f"{path.name}: exercises point to {sorted(set(pointed))}, "
                                                    f"{solution_file.name} defines {defined}")
    hints = exercises.count("<summary>Hint</summary>")
    assert hints >= len(pointers), f"{path.name}: {len(pointers)} solution lines but {hints} hints"


def fenced_code(source):
    """The markdown of a code cell as lessons/render.py writes it (a fence longer than any backtick run)."""
    longest = max((len(run) for run in re.findall(r"`+", source)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}python\n{source}\n{ticks}"


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_the_rendered_copy_is_up_to_date(path):
    """docs/lessons/NN_<stem>.md holds every code cell of the lesson unchanged, and the images it shows exist:
    a lesson changed after its rendering fails here until `python lessons/render.py NN` is run again."""
    rendered = RENDERED_DIR / (path.stem + ".md")
    render_command = f"python lessons/render.py {path.name[:2]}"
    assert rendered.exists(), f"no rendered copy {rendered.relative_to(ROOT)}: run `{render_command}`"
    text = rendered.read_text(encoding="utf-8")
    stale = [index for index, source in enumerate(cells_of(path, "code")) if fenced_code(source) not in text]
    assert not stale, (f"{rendered.relative_to(ROOT)} is stale: code cells {stale} of {path.name} are not in it "
                       f"as they are now; run `{render_command}`")
    for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", text):
        if not re.match(r"^[a-z]+:", target):
            assert (RENDERED_DIR / target).exists(), f"{rendered.relative_to(ROOT)} shows a missing image {target}"


# --- the ready checks of the exercises tell right from wrong --------------------------------------------
@pytest.fixture
def checks(monkeypatch):
    monkeypatch.syspath_prepend(str(LESSONS_DIR))
    return importlib.import_module("checks")


def sigmoid_forward(x):
    y = 1 / (1 + np.exp(-x))
    return y, y


def sigmoid_backward_right(grad_y, y):
    return grad_y * y * (1 - y)


def sigmoid_backward_wrong(grad_y, y):
    return grad_y * y  # forgot the (1 - y)


def test_check_backward_passes_a_right_backward_and_catches_a_wrong_one(checks):
    import torch

    x = np.random.default_rng(3).standard_normal((3, 4))
    errors = checks.check_backward(sigmoid_forward, sigmoid_backward_right, [x], torch_fn=torch.sigmoid)
    assert set(errors) == {"finite differences", "PyTorch"} and max(errors.values()) < checks.TOLERANCE
    with pytest.raises(AssertionError, match="input 0"):
        checks.check_backward(sigmoid_forward, sigmoid_backward_wrong, [x], torch_fn=torch.sigmoid)


def test_check_backward_catches_a_slightly_wrong_gradient_of_the_second_input(checks):
    """A gradient off by 1% in one entry of the second input, with the first right."""
    rng = np.random.default_rng(4)

    def forward(a, b):
        return a @ b, (a, b)

    def backward(grad_y, cache):
        a, b = cache
        grad_b = a.T @ grad_y
        grad_b[0, 0] *= 1.01
        return grad_y @ b.T, grad_b

    with pytest.raises(AssertionError, match="input 1"):
        checks.check_backward(forward, backward, [rng.standard_normal((2, 3)), rng.standard_normal((3, 2))])


def test_check_function_passes_a_right_op_and_catches_a_wrong_one(checks):
    from tinyse import Function

    class Square(Function):
        def forward(self, x):
            self.x = x
            return x * x

        def backward(self, grad_out):
            return 2 * self.x * grad_out

    class WrongSquare(Square):
        def backward(self, grad_out):
            return self.x * grad_out  # the factor 2 forgotten

    x = np.random.default_rng(5).standard_normal((2, 3))
    errors = checks.check_function(Square, [x], torch_fn=lambda t: t * t)
    assert max(errors.values()) < checks.TOLERANCE
    with pytest.raises(AssertionError, match="input 0"):
        checks.check_function(WrongSquare, [x], torch_fn=lambda t: t * t)


# --- the lessons run (before the solutions: they also write lessons/mine/) ------------------------------
@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs_top_to_bottom(path, monkeypatch):
    run_notebook(path, monkeypatch)


GPU_LESSON = [path for path in LESSONS if path.name.startswith("09_")]


@pytest.mark.skipif(not emulated_cupy.compiler_available(), reason="the emulated GPU's kernels need a C++ compiler")
@pytest.mark.parametrize("path", GPU_LESSON, ids=[p.stem for p in GPU_LESSON])
def test_the_gpu_lesson_runs_on_the_emulated_gpu(path, monkeypatch):
    """Lesson 9's GPU branch (the device comparisons, the kernel launches of a step) on tinyse's emulated CuPy."""
    run_notebook(path, monkeypatch, TINYSE_EMULATE_GPU="1")


# --- every solution runs and passes its own checks --------------------------------------------------------
WRITEFILE = re.compile(r"\A%%writefile(?P<append>\s+-a)?\s+(?P<target>mine/\w+\.py)[ \t]*\n")


def student_files():
    """[(path under lessons/, text, append?)] of every %%writefile mine/... cell, in lesson and cell order."""
    files = []
    for path in LESSONS:
        for source in cells_of(path, "code"):
            found = WRITEFILE.match(source)
            if found:
                files.append((found["target"], source[found.end():], bool(found["append"])))
    return files


@pytest.fixture(scope="session")
def student_library():
    """lessons/mine/ as the lessons write it, from their %%writefile cells (what IPython writes: the cell's
    text after the magic line). Written whole once per session, each file replaced atomically."""
    contents = {}
    for target, text, append in student_files():
        contents[target] = contents.get(target, "") + text if append else text
    for target, text in contents.items():
        destination = LESSONS_DIR / target
        destination.parent.mkdir(exist_ok=True)
        if not destination.exists() or destination.read_text(encoding="utf-8") != text:
            temporary = destination.with_suffix(".py.tmp")
            temporary.write_text(text, encoding="utf-8")
            temporary.replace(destination)
    for name in [name for name in sys.modules if name == "mine" or name.startswith("mine.")]:
        del sys.modules[name]  # import them afresh from what was just written
    return sorted(contents)


SOLUTION_CASES = [(path, name) for path in SOLUTIONS for name in exercise_functions(path)]
_solution_modules = {}


def solution_module(path):
    """The solution file imported by path (once per session), as lessons_solution_NN_<stem>."""
    if path not in _solution_modules:
        spec = importlib.util.spec_from_file_location(f"lessons_solution_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _solution_modules[path] = module
    return _solution_modules[path]


def test_every_solution_file_has_exercises():
    for path in SOLUTIONS:
        assert exercise_functions(path), f"{path.relative_to(ROOT)} defines no exercise_* function"


@pytest.mark.parametrize(("path", "name"), SOLUTION_CASES, ids=[f"{p.stem}-{n}" for p, n in SOLUTION_CASES])
def test_solution_runs_and_passes_its_checks(path, name, student_library, monkeypatch):
    """Each exercise_k() runs the worked solution and asserts its result: a wrong solution fails here."""
    monkeypatch.chdir(LESSONS_DIR)  # as the notebooks run: figures/, mine/ and checks.py are found from here
    monkeypatch.syspath_prepend(str(LESSONS_DIR))
    monkeypatch.setenv("TINYSE_LESSONS_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    getattr(solution_module(path), name)()
