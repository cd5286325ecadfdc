"""Run the lessons in full mode and write a readable copy of each, with its outputs, to docs/lessons/.

    python lessons/render.py            # every lesson, one after another
    python lessons/render.py 03 7       # only lessons 3 and 7 (numbers, with or without the leading 0)

Each notebook runs top to bottom in a fresh kernel (nbclient), in lessons/ as its working folder, in
FULL mode (TINYSE_LESSONS_QUICK is removed from the kernel's environment), with matplotlib's inline
backend, so that every figure comes back as a PNG, and with the environment variables the notebook's metadata
asks for under "tinyse" / "render_environment" (lesson 9: TINYSE_EMULATE_GPU=1, so that its copy shows the
GPU branch on the emulated GPU). TINYSE_SAVE_FIGURES=1 in your environment also rewrites the committed PNGs
of lessons/figures/ from the same run. What it writes, for lesson NN_<stem>.ipynb:

    docs/lessons/NN_<stem>.md           the markdown cells as they are; each code cell as a ```python block,
                                        its source unchanged (tests/test_lessons.py checks that, so a lesson
                                        changed after its rendering fails CI until it is rendered again);
                                        printed text as ```text blocks (long ones cut in the middle, with a
                                        note); each figure as an image link
    docs/lessons/NN_<stem>/cell-<i>.png the figures of code cell i (cell-<i>-<k>.png when a cell has several)
    docs/lessons/README.md              the index: every rendered lesson, when and how long its run took

Relative links of the markdown cells (figures/..., solutions/..., another lesson's .ipynb) are rewritten
to point from docs/lessons/ to the same files (a lesson's .ipynb to its rendered .md), so the pictures and
links work on GitHub. The notebooks themselves stay stored without outputs. The data is found as the
lessons find it (TINYSE_DATA). A failing cell stops the rendering of that lesson with the cell's error and
leaves its previous rendering in place.
"""
import argparse
import base64
import os
import platform
import re
import sys
import time
from pathlib import Path

LESSONS_DIR = Path(__file__).resolve().parent
ROOT = LESSONS_DIR.parent
DOCS_DIR = ROOT / "docs" / "lessons"

MAX_OUTPUT_LINES = 60  # a longer printed output keeps its first and last lines, with a note between
KEEP_LINES = 25  # lines kept at each end of a cut output
MAX_LINE_CHARS = 400
CELL_TIMEOUT_S = 3600  # per cell: a full lesson 7 trains for a while
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
HEADER = "<!-- rendered by lessons/render.py: do not edit; change the notebook and render it again -->"
RUN_LINE = re.compile(r"^Rendered from .* in (?P<seconds>[0-9.]+) s on (?P<date>\d{4}-\d{2}-\d{2})", re.MULTILINE)


def lesson_paths(numbers=()):
    """The lesson notebooks NN_<stem>.ipynb, in order; only those whose number is in ``numbers`` when given."""
    paths = sorted(LESSONS_DIR.glob("[0-9][0-9]_*.ipynb"))
    if not numbers:
        return paths
    wanted = {int(n) for n in numbers}
    chosen = [p for p in paths if int(p.name[:2]) in wanted]
    missing = wanted - {int(p.name[:2]) for p in chosen}
    if missing:
        raise SystemExit(f"no lesson numbered {sorted(missing)} in {LESSONS_DIR}")
    return chosen


def rendered_path(notebook_path):
    """docs/lessons/NN_<stem>.md for lessons/NN_<stem>.ipynb."""
    return DOCS_DIR / (Path(notebook_path).stem + ".md")


# --- markdown: links that point from lessons/ are made to point from docs/lessons/ ---------------------
MARKDOWN_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)((?:\s+\"[^\"]*\")?\))")
HTML_SOURCE = re.compile(r"""((?:src|href)=["'])([^"']+)(["'])""")


def relink(target):
    """A link target written for lessons/ (e.g. figures/x.png), rewritten for docs/lessons/."""
    if re.match(r"^(?:[a-z][a-z0-9+.-]*:|#|/)", target, re.IGNORECASE):  # http:, mailto:, #anchor, /absolute
        return target
    path, _, anchor = target.partition("#")
    if re.fullmatch(r"\d\d_\w+\.ipynb", path):  # another lesson: its rendered copy, beside this one
        path = path[: -len(".ipynb")] + ".md"
    else:
        path = os.path.relpath(LESSONS_DIR / path, DOCS_DIR).replace(os.sep, "/")
    return path + ("#" + anchor if anchor else "")


def relink_markdown(text):
    text = MARKDOWN_LINK.sub(lambda m: m.group(1) + relink(m.group(2)) + m.group(3), text)
    return HTML_SOURCE.sub(lambda m: m.group(1) + relink(m.group(2)) + m.group(3), text)


# --- outputs ----------------------------------------------------------------------------------------------
def terminal_text(text):
    """Text as a terminal would show it: colour codes dropped, a carriage return overwriting its line."""
    text = ANSI_ESCAPE.sub("", text)
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def shortened(text):
    """At most MAX_OUTPUT_LINES lines of at most MAX_LINE_CHARS characters, cut in the middle with a note."""
    lines = [line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS] + " [...]" for line in text.split("\n")]
    if len(lines) > MAX_OUTPUT_LINES:
        left_out = len(lines) - 2 * KEEP_LINES
        lines = [*lines[:KEEP_LINES], f"[... {left_out} lines left out of this copy ...]", *lines[-KEEP_LINES:]]
    return "\n".join(lines)


def fence(text, language=""):
    """A fenced block whose fence is longer than any run of backticks inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{language}\n{text}\n{ticks}"


def output_blocks(outputs, cell_index, image_dir):
    """The markdown for one code cell's outputs; writes its PNGs into image_dir. Returns a list of blocks."""
    blocks, texts, images = [], [], 0

    def flush_text():
        if texts:
            text = terminal_text("".join(texts)).strip("\n")
            if text:
                blocks.append(fence(shortened(text), "text"))
            texts.clear()

    for output in outputs:
        kind = output.get("output_type")
        if kind == "stream":
            texts.append(output.get("text", ""))
            continue
        if kind == "error":  # not expected: a failing cell stops the run
            texts.append("\n".join(output.get("traceback", [])) + "\n")
            continue
        data = output.get("data", {})
        if "image/png" in data:
            flush_text()
            images += 1
            name = f"cell-{cell_index}.png" if images == 1 else f"cell-{cell_index}-{images}.png"
            image_dir.mkdir(parents=True, exist_ok=True)
            (image_dir / name).write_bytes(base64.b64decode(data["image/png"]))
            blocks.append(f"![output of code cell {cell_index}]({image_dir.name}/{name})")
        elif "text/markdown" in data:
            flush_text()
            blocks.append(data["text/markdown"])
        elif "text/plain" in data:
            texts.append(data["text/plain"] + "\n")
    flush_text()
    # A PNG that comes after a text/plain of the same figure ("<Figure size ...>") is what readers want.
    return [block for block in blocks if not re.fullmatch(r"```+text\n<Figure size [^\n]*>\n```+", block)]


def to_markdown(notebook, notebook_path, seconds):
    """The rendered copy of an executed notebook, as one markdown string."""
    stem = Path(notebook_path).stem
    image_dir = DOCS_DIR / stem
    parts = [
        HEADER,
        f"Rendered from [`lessons/{stem}.ipynb`](../../lessons/{stem}.ipynb) in {seconds:.0f} s on "
        f"{time.strftime('%Y-%m-%d')} (full mode, {machine()}) by `python lessons/render.py`. "
        f"The notebook is the source; this copy shows what running it prints and draws.",
    ]
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "markdown":
            parts.append(relink_markdown(cell.source))
        elif cell.cell_type == "code":
            parts.append(fence(cell.source, "python"))
            parts.extend(output_blocks(cell.get("outputs", []), index, image_dir))
    return "\n\n".join(parts) + "\n"


def machine():
    """A short description of this computer: CPU model and cores, Python, NumPy."""
    import numpy as np

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, NumPy {np.__version__}"


def run(notebook_path):
    """Execute one notebook in full mode in lessons/; returns (executed notebook, seconds)."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(notebook_path, as_version=4)
    # A lesson may ask for settings of its own (lesson 9: the emulated GPU), in its metadata "tinyse".
    extra = dict(notebook.metadata.get("tinyse", {}).get("render_environment", {}))
    saved = {name: os.environ.get(name) for name in ("TINYSE_LESSONS_QUICK", "MPLBACKEND", *extra)}
    os.environ.pop("TINYSE_LESSONS_QUICK", None)  # full mode
    os.environ["MPLBACKEND"] = INLINE_BACKEND  # figures come back as PNG outputs
    os.environ.update({name: str(value) for name, value in extra.items()})
    try:
        client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                resources={"metadata": {"path": str(LESSONS_DIR)}})
        started = time.perf_counter()
        client.execute()
        return notebook, time.perf_counter() - started
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def render(notebook_path):
    """Run one lesson and write its rendered copy and figures; returns the seconds the run took."""
    notebook, seconds = run(notebook_path)
    image_dir = DOCS_DIR / Path(notebook_path).stem
    if image_dir.is_dir():  # the figures of the previous rendering
        for old in image_dir.glob("cell-*.png"):
            old.unlink()
    DOCS_DIR.mkdir(parents=True, exist_ok=True)
    rendered_path(notebook_path).write_text(to_markdown(notebook, notebook_path, seconds), encoding="utf-8")
    return seconds


def title_of(notebook_path):
    """The first heading of a lesson, without its '#'."""
    import nbformat

    for cell in nbformat.read(notebook_path, as_version=4).cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return Path(notebook_path).stem


def write_index():
    """docs/lessons/README.md: a table of every lesson, linking its rendered copy where there is one."""
    rows = []
    for path in lesson_paths():
        copy = rendered_path(path)
        if copy.exists():
            found = RUN_LINE.search(copy.read_text(encoding="utf-8"))
            seconds = float(found["seconds"]) if found else None
            took = f"{seconds:.0f} s" if seconds is not None and seconds < 90 else f"{(seconds or 0) / 60:.1f} min"
            when = f"{found['date']}, {took}" if found else "?"
            rows.append(f"| {int(path.name[:2])} | [{title_of(path)}]({copy.name}) | {when} |")
        else:
            rows.append(f"| {int(path.name[:2])} | {title_of(path)} (not rendered yet) | |")
    text = "\n".join([
        HEADER,
        "# The lessons, with their outputs",
        "",
        "Each page is a lesson of [`lessons/`](../../lessons/) run top to bottom in full mode, with what it",
        "printed and drew, so you can read it without running anything. The notebooks are the source; these",
        "copies are regenerated with",
        "",
        "```bash",
        "python lessons/render.py          # all lessons (or: python lessons/render.py 03 07 for some)",
        "```",
        "",
        "and a test (`tests/test_lessons.py`) fails when a lesson's code no longer matches its copy here.",
        "",
        "| # | lesson | rendered on, run time |",
        "|---|---|---|",
        *rows,
        "",
    ])
    DOCS_DIR.mkdir(parents=True, exist_ok=True)
    (DOCS_DIR / "README.md").write_text(text, encoding="utf-8")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lessons", nargs="*", help="lesson numbers (default: all)")
    args = parser.parse_args(argv)
    failed = []
    for path in lesson_paths(args.lessons):
        print(f"rendering {path.name} (full mode) ...", flush=True)
        try:
            seconds = render(path)
        except Exception as error:  # CellExecutionError and friends: report, keep the old copy, go on
            print(f"  FAILED: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            failed.append(path.name)
            continue
        print(f"  {seconds:.0f} s -> {rendered_path(path).relative_to(ROOT)}", flush=True)
    write_index()
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
