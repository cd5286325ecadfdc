"""The report as printed: the header, the table, the SE overhead, the kernel launches and the peak memory."""
from tinyse.bench.rows import format_shape

MODEL_TITLES = {"se_resnet20": "SE-ResNet-20", "resnet20": "ResNet-20"}


def mib(count):
    return f"{count / 2**20:.1f} MiB"


def format_report(report):
    """The header, the table, the derived lines and the memory, as printed."""
    info, settings = report["header"], report["settings"]
    blas_threads_text = info["blas_threads"] if info["blas_threads"] is not None else "?"
    gpu = f" ({info['gpu']['tinyse']})" if info["gpu"] else ""
    warmup, repeats = settings["warmup"], settings["repeats"]
    with_torch = "torch" in info.get("libraries", ("tinyse", "torch"))
    torch_text = "" if with_torch else ": no CUDA here, tinyse's column only"
    lines = [
        f"tinyse vs PyTorch  {info['date']}",
        f"machine   {info['machine']}, {info['cores']} cores ({info['platform']})",
        f"numpy     {info['numpy']}, BLAS {info['blas']}, {blas_threads_text} threads ({info['blas_threads_source']})",
        f"kernels   OpenBLAS {info['blas_kernels'] or '?'} ({info['blas_kernels_source']})",
        f"torch     {info['torch']}, {info['torch_threads']} threads (eager, NCHW){torch_text}",
        f"device    {info['device']}{gpu}, float32, --threads {info['threads']}",
        f"timing    median of {repeats['op']} (ops) / {repeats['model']} (models) alternating runs, "
        + f"after {warmup['op']} / {warmup['model']} warm-up",
        "",
    ]
    columns = (f"{'row':<24}{'input':>15}{'tinyse ms':>12}{'torch ms':>11}{'ratio':>8}"
               f"{'tinyse img/s':>14}{'torch img/s':>13}")
    lines += [columns, "-" * len(columns)]
    for row in report["rows"]:
        ours, theirs = row["tinyse"], row.get("torch")  # no "torch" where it has no CUDA
        torch_ms = ratio = torch_rate = "-"
        if theirs:
            torch_ms, ratio = f"{theirs['median_s'] * 1e3:.2f}", f"{row['ratio']:.2f}"
            torch_rate = f"{theirs['images_per_s']:,.0f}"
        lines.append(
            f"{row['name']:<24}{format_shape(row['shape']):>15}{ours['median_s'] * 1e3:>12.2f}{torch_ms:>11}"
            f"{ratio:>8}{ours['images_per_s']:>14,.0f}{torch_rate:>13}"
        )
    for suffix, overhead in report["se_overhead"].items():
        each = ", ".join(f"{library} {ratio:.3f}x" for library, ratio in overhead.items())
        lines.append(f"SE overhead, se_resnet20 / resnet20 {suffix} (median of the rounds' ratios): {each}")
    lines += format_launches(report.get("launches"))
    if report["memory"]:
        first = report["memory"]["tinyse"]
        title = f"peak memory of a {first['model']} training step, batch {first['batch']}"
        lines += ["", f"{title} ({first['steps']} steps, each library in a fresh process):"]
        for library, memory in report["memory"].items():
            text = f"  {library:<7}{memory['measure']} {mib(memory['peak_bytes'])}"
            if "peak_reserved_bytes" in memory:
                text += f" (reserved {mib(memory['peak_reserved_bytes'])})"
            if memory["device"] == "cpu":
                text += f", {mib(memory['above_baseline_bytes'])} above the {mib(memory['baseline_bytes'])}"
                text += " after imports and model building"
            else:
                text += f", {mib(memory['above_baseline_bytes'])} above the model and data"
            lines.append(text)
    return "\n".join(lines)


def format_launches(launches):
    """The lines under the table that count kernel launches and host synchronisations (none on the CPU)."""
    if not launches:
        return []
    if not launches["counted"]:
        return ["kernel launches: not counted (CuPy has no counter; `python -m tinyse.testing.emulated_cupy "
                "tinyse.bench --device gpu` counts them on the emulated GPU)"]
    lines = []
    for kind, what in (("train step", "training step"), ("eval fwd", "eval forward")):
        counts = launches[kind]
        lines.append(f"per {MODEL_TITLES.get(counts['model'], counts['model'])} {what}: "
                     f"{counts['kernel_launches']} kernel launches, {counts['host_syncs']} host synchronisations "
                     f"(counted on the emulated CuPy at batch {counts['batch']}: the counts do not depend on the "
                     "batch; real CuPy has no such counter)")
    return lines
