"""The names real CuPy has, and the errors for names the emulator does not answer to.

The list is ``cupy_14.2.0_names.txt`` beside this file, read from CuPy's source at git tag v14.2.0
by ``extract_names.py``. CuPy 14 is the release that pairs with NumPy 2 (it requires
numpy>=2.0,<2.6 and follows NEP 50's promotion rules), as tinyse's environment does.

    name not in CuPy                       -> AttributeError, as real CuPy raises
    name in CuPy, not emulated (yet)       -> NotImplementedError naming it: extend the emulator,
                                              after checking what CuPy does, rather than the code under test
"""
import pathlib

CUPY_VERSION = "14.2.0"
NAMES_FILE = pathlib.Path(__file__).with_name(f"cupy_{CUPY_VERSION}_names.txt")


def read_names(path=NAMES_FILE):
    """{section: frozenset of names} from the list's ``[section]`` blocks (``#`` starts a comment)."""
    sections, current = {}, None
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = set()
        else:
            sections[current].add(line)
    return {section: frozenset(names) for section, names in sections.items()}


NAMES = read_names()


def has(section, name):
    """True when real CuPy has ``name`` in ``section`` (``"cupy"``, ``"cupy.ndarray"``, ``"cupyx"`` ...)."""
    return name in NAMES[section]


def missing(section, name, kind="module"):
    """The error for a name the emulator lacks; ``kind`` is "module" or "object" (for a class's members)."""
    where = f"module {section!r}" if kind == "module" else f"{section!r} object"
    if has(section, name):
        return NotImplementedError(
            f"{section}.{name} exists in CuPy {CUPY_VERSION} but the emulated CuPy does not implement it: "
            f"add it to tinyse/testing/emulated_cupy/ (mirroring what CuPy does)"
        )
    return AttributeError(f"{where} has no attribute {name!r} (CuPy {CUPY_VERSION} has no such name)")
