"""Write the list of CuPy's public names (``cupy_<version>_names.txt``) from a git checkout of CuPy's source.

    python -m tinyse.testing.emulated_cupy.extract_names /path/to/cupy.git v14.2.0 > cupy_14.2.0_names.txt

The emulator answers only to names on that list, so that code which runs on it would also find
those names in real CuPy. The list is read from CuPy's own source at a tagged version, not
guessed from NumPy: ``git --git-dir=GIT_DIR show TAG:PATH`` for each file below.

    [cupy]                  top-level bindings of cupy/__init__.py (imports, assignments, defs),
                            in every branch of its if/else and try/except blocks
    [cupy.ndarray]          methods and properties of ``ndarray`` and ``_ndarray_base``
                            (cupy/_core/core.pyx) and the readonly fields of core.pxd
    [cupy.ufunc]            methods and readonly fields of ``cupy.ufunc`` (cupy/_core/_kernel.pyx)
    [cupy.ElementwiseKernel] the same for ``cupy.ElementwiseKernel``
    [cupy.linalg], [cupy.random], [cupy.fft], [cupy.cuda], [cupyx]
                            top-level bindings of their __init__.py, plus the names that the module's
                            ``__getattr__`` answers (``key == 'cublas'`` ...)
    [cupy.cuda.runtime]     cpdef/def functions, classes and module-level constants of
                            cupy_backends/cuda/api/runtime.pyx, and the enum constants it copies in
                            from _runtime_enum.pyx
    [cupy.cuda.compiler]    top-level bindings of cupy/cuda/compiler.py
    [cupy.cuda.Device]      methods and properties of ``Device`` (cupy/cuda/device.pyx, .pxd)
    [cupy.cuda.MemoryPool]  methods of ``MemoryPool`` (cupy/cuda/memory.pyx)
    [cupy.cuda.Stream]      methods of ``_BaseStream`` and ``Stream`` (cupy/cuda/stream.pyx)

Names starting with one underscore are private and left out; dunder methods of the classes are kept
(``__array__``, ``__float__`` ...), since the emulator must decide about each of them too.
"""
import ast
import re
import subprocess
import sys

MODULES = {
    "cupy": "cupy/__init__.py",
    "cupy.linalg": "cupy/linalg/__init__.py",
    "cupy.random": "cupy/random/__init__.py",
    "cupy.fft": "cupy/fft/__init__.py",
    "cupy.cuda": "cupy/cuda/__init__.py",
    "cupyx": "cupyx/__init__.py",
}
# section: (file, [class names whose bodies hold the members], .pxd file with the readonly fields or None)
CLASSES = {
    "cupy.ndarray": ("cupy/_core/core.pyx", ["ndarray", "_ndarray_base"], "cupy/_core/core.pxd"),
    "cupy.ufunc": ("cupy/_core/_kernel.pyx", ["ufunc"], None),
    "cupy.ElementwiseKernel": ("cupy/_core/_kernel.pyx", ["ElementwiseKernel"], None),
    "cupy.cuda.Device": ("cupy/cuda/device.pyx", ["Device"], "cupy/cuda/device.pxd"),
    "cupy.cuda.MemoryPool": ("cupy/cuda/memory.pyx", ["MemoryPool"], "cupy/cuda/memory.pxd"),
    "cupy.cuda.Stream": ("cupy/cuda/stream.pyx", ["_BaseStream", "Stream"], None),
}
COMPILER = "cupy/cuda/compiler.py"
RUNTIME = "cupy_backends/cuda/api/runtime.pyx"
RUNTIME_ENUMS = "cupy_backends/cuda/api/_runtime_enum.pyx"  # runtime.pyx copies these onto itself (_export_enum)

# Cython special methods -> the Python names they give the class. CuPy builds with
# ``c_api_binop_methods=True`` (install/cupy_builder/_command.py), so ``__add__(x, y)`` also serves
# ``2 + array``: the reflected ``__radd__`` exists too.
CYTHON_SPECIALS = {
    "__richcmp__": ["__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__"],
    "__nonzero__": ["__bool__"],
    "__getbuffer__": [],  # the buffer protocol: a C slot, no Python name
    "__releasebuffer__": [],
    "__div__": [],  # Python 2 only
    "__idiv__": [],
}
BINARY_OPERATORS = ["add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "divmod", "pow", "lshift", "rshift",
                    "and", "or", "xor"]


def is_public(name):
    return not name.startswith("_") or (name.startswith("__") and name.endswith("__"))


def show(git_dir, tag, path):
    return subprocess.run(
        ["git", f"--git-dir={git_dir}", "show", f"{tag}:{path}"], check=True, capture_output=True, text=True
    ).stdout


def module_names(source):
    """Names bound at the top level of a Python module, in all branches of if/try blocks."""
    names = set()

    def visit(statements):
        for node in statements:
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                names.update(a.asname or a.name for a in node.names if a.name != "*")
            elif isinstance(node, ast.Import):  # `import cupyx as _cupyx`; not the standard library's modules
                names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("cupy"))
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(t.id for t in targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.If):
                visit(node.body), visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body), visit(node.orelse), visit(node.finalbody)
                for handler in node.handlers:
                    visit(handler.body)
        return names

    tree = ast.parse(source)
    visit(tree.body)
    for node in tree.body:  # what a module-level __getattr__ answers: `if key == 'cublas':`
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            names.update(re.findall(r"(?:key|name) == '(\w+)'", ast.unparse(node)))
    names.discard("__getattr__")
    return {n for n in names if not n.startswith("_")}


def class_names(source, class_name, pxd=None):
    """Members of a (Cython) class: def/cpdef methods, properties, class attributes, readonly/public fields."""
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"(cdef )?class {class_name}\b", line))
    names = set()
    for line in lines[start + 1 :]:
        if line and not line[0].isspace() and not line.startswith("#"):
            break  # the class body ended
        member = re.match(r"    (?:def|cpdef\s+(?:[\w.]+\s+)*?|property)\s*(\w+)\s*[(:]", line)
        attribute = re.match(r"    (\w+) = ", line)
        for match in (member, attribute):
            if match and is_public(match.group(1)):
                names.add(match.group(1))
    if pxd is not None:
        body = re.search(rf"cdef class {class_name}\b.*?(?=\ncdef class |\Z)", pxd, re.S)
        if body:
            names.update(re.findall(r"(?:readonly|public)\s+(?:[\w.]+\s+)*?(\w+)\s*$", body.group(0), re.M))
    python_names = set()
    for name in names:
        python_names.update(CYTHON_SPECIALS.get(name, [name]))
        if name.strip("_") in BINARY_OPERATORS:
            python_names.add(f"__r{name.strip('_')}__")
    return {n for n in python_names if is_public(n)}


def runtime_names(source, enums):
    functions = re.findall(r"^(?:cpdef|def)\s+(?:[\w.]+\s+)*?(\w+)\s*\(", source, re.M)
    classes = re.findall(r"^(?:cdef )?class\s+(\w+)", source, re.M)
    constants = re.findall(r"^(\w+)\s*=", source, re.M) + re.findall(r"^    (\w+) = ", enums, re.M)
    return {n for n in functions + classes + constants if not n.startswith("_")}


def main(argv=None):
    git_dir, tag = (argv or sys.argv[1:])[:2]
    sections = {name: module_names(show(git_dir, tag, path)) for name, path in MODULES.items()}
    for section, (path, classes, pxd_path) in CLASSES.items():
        source, pxd = show(git_dir, tag, path), show(git_dir, tag, pxd_path) if pxd_path else None
        sections[section] = set().union(*(class_names(source, c, pxd) for c in classes))
    sections["cupy.cuda.runtime"] = runtime_names(show(git_dir, tag, RUNTIME), show(git_dir, tag, RUNTIME_ENUMS))
    sections["cupy.cuda.compiler"] = module_names(show(git_dir, tag, COMPILER))
    print(f"# CuPy {tag.lstrip('v')} public names, read from CuPy's source at git tag {tag} (github.com/cupy/cupy)")
    print("# by tinyse/testing/emulated_cupy/extract_names.py; regenerate with")
    version = tag.lstrip("v")
    print(f"#     python -m tinyse.testing.emulated_cupy.extract_names CUPY_GIT_DIR {tag} > cupy_{version}_names.txt")
    print("# One name per line under a [section]. The emulator raises AttributeError for a name not listed here,")
    print("# and NotImplementedError for a listed name it does not implement.")
    for section in sorted(sections):
        print(f"\n[{section}]")
        print("\n".join(sorted(sections[section])))


if __name__ == "__main__":
    main()
