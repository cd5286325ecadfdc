"""The emulated CuPy (tinyse/testing/emulated_cupy) catches each slip it exists to catch, and computes right.

Each kind of slip is seeded once: a NumPy call CuPy refuses, a name CuPy lacks, a kernel that does
not compile, a raw index out of range, a hidden host read, two dtypes on one type placeholder. The
tests use the emulated module directly (``modules()["cupy"]``), so they run in the normal suite,
without TINYSE_EMULATE_GPU; the ones that compile kernels skip where there is no C++ compiler.
"""
import subprocess
import sys

import numpy as np
import pytest

from tinyse.testing import emulated_cupy
from tinyse.testing.emulated_cupy import counting, names

needs_compiler = pytest.mark.skipif(
    not emulated_cupy.compiler_available(), reason="the emulated kernels need a C++ compiler (g++), and none is found"
)


@pytest.fixture
def cp():
    """The emulated cupy module (not installed in sys.modules: these tests do not need that)."""
    return emulated_cupy.modules()["cupy"]


def on_device(cp, values, dtype=np.float64):
    return cp.asarray(np.asarray(values, dtype=dtype))


# --- the slips it catches ------------------------------------------------------------------------------------
def test_numpy_cannot_read_a_device_array_implicitly(cp):
    x = on_device(cp, [1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(x)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.array(x)
    with pytest.raises(TypeError, match=r"Unsupported type <class 'numpy.ndarray'>"):
        x + np.ones(3)  # a host array in a device expression
    with pytest.raises(TypeError, match=r"Unsupported type <class 'numpy.ndarray'>"):
        np.ones(3) * x
    with pytest.raises(TypeError, match="Unsupported type"):
        cp.matmul(x, np.ones(3))


def test_a_name_cupy_lacks_is_an_attribute_error_and_an_unemulated_one_names_itself(cp):
    x = on_device(cp, [1.0, 2.0])
    with pytest.raises(AttributeError, match="float128"):
        _ = cp.float128  # NumPy has it, CuPy does not
    with pytest.raises(AttributeError, match="ctypes"):
        _ = x.ctypes  # a NumPy array attribute that cupy.ndarray lacks
    with pytest.raises(AttributeError):
        x.foo = 1  # no new attributes on an array, as in CuPy
    with pytest.raises(NotImplementedError, match=r"cupy\.fuse exists in CuPy 14\.2\.0"):
        _ = cp.fuse
    with pytest.raises(NotImplementedError, match=r"cupy\.ndarray\.toDlpack"):
        x.toDlpack()
    with pytest.raises(TypeError, match="sum"):
        x.sum(initial=0.0)  # NumPy's argument, not CuPy's


@needs_compiler
def test_a_kernel_body_that_does_not_compile_raises_compile_exception(cp):
    kernel = cp.ElementwiseKernel("T x", "T y", "y = x * undefined_name", "broken")
    with pytest.raises(cp.cuda.compiler.CompileException, match=r"(?s)'broken' does not compile.*undefined_name"):
        kernel(on_device(cp, [1.0]))


@needs_compiler
def test_a_kernel_cannot_write_to_an_input_as_in_cupy(cp):
    kernel = cp.ElementwiseKernel("raw T x", "T y", "x[i] = 0; y = 1", "writes_input")
    with pytest.raises(cp.cuda.compiler.CompileException, match="writes_input"):
        kernel(on_device(cp, [1.0, 2.0]), cp.empty(2))


@needs_compiler
def test_an_out_of_range_raw_index_stops_the_kernel_with_an_index_error(cp):
    shift = cp.ElementwiseKernel("raw T x, int32 offset", "T y", "y = x[i + offset]", "shift")
    x, out = on_device(cp, [0.0, 1.0, 2.0, 3.0]), cp.empty(4)
    expected = r"'shift': raw parameter 'x' indexed at 4, outside its 4 elements \(element i = 3"
    with pytest.raises(IndexError, match=expected):
        shift(x, 1, out)
    assert shift(x, 0, out).get().tolist() == [0.0, 1.0, 2.0, 3.0]  # in range, the same kernel is fine


@needs_compiler
def test_a_float32_and_a_float64_array_on_one_type_placeholder_is_a_type_error(cp):
    add = cp.ElementwiseKernel("T a, T b", "T c", "c = a + b", "add_same_type")
    with pytest.raises(TypeError, match=r"Type is mismatched\. b float32 float64 T"):
        add(on_device(cp, [1.0]), on_device(cp, [1.0], np.float32))
    typed = cp.ElementwiseKernel("float32 a", "float32 c", "c = a", "typed_copy")
    with pytest.raises(TypeError, match=r"Type is mismatched\. a"):
        typed(on_device(cp, [1.0]))
    with pytest.raises(TypeError, match=r"Unsupported type <class 'numpy\.ndarray'>"):
        add(on_device(cp, [1.0]), np.ones(1))


def test_an_implicit_host_read_is_a_counted_synchronisation(cp):
    loss = on_device(cp, [0.5, 1.5]).mean()
    for read in (float, bool, lambda v: v.item(), repr):
        with counting() as counts:
            read(loss)
        assert counts["host_syncs"] == 1 and counts["value_reads"] == 1 and counts["device_to_host"] == 1
    with counting() as counts:
        on_device(cp, [1.0, 0.0])[on_device(cp, [True, False], bool)]  # a mask: CuPy reads its count
    assert counts["host_syncs"] == 1
    target = on_device(cp, [1.0, 0.0])
    with counting() as counts:
        target[on_device(cp, [True, False], bool)] = 3.0  # assigning through a mask reads its count too
    assert counts["host_syncs"] == 1 and counts["launches_by_name"]["scan"] == 1 and target.get()[0] == 3.0


def test_allow_synchronize_false_turns_a_synchronisation_into_an_error(cp):
    cupyx = emulated_cupy.modules()["cupyx"]
    x = on_device(cp, [1.0, 2.0])
    with pytest.warns(UserWarning, match="will be removed"), cupyx.allow_synchronize(False):  # CuPy's warning
        y = x * 2  # launching kernels never waits
        with pytest.raises(cupyx.DeviceSynchronized):
            float(y.sum())
    assert float(y.sum()) == 6.0  # allowed again after the block


# --- what it does right --------------------------------------------------------------------------------------
@needs_compiler
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_an_elementwise_kernel_equals_numpy_with_broadcasting(cp, dtype):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 3, 4)).astype(dtype), rng.standard_normal((3, 1)).astype(dtype)
    kernel = cp.ElementwiseKernel(
        "T x, T y, T scale", "T z", "T v = x * scale + y; z = v > 0 ? v : (T)0", "scale_add_relu_test"
    )
    z = kernel(cp.asarray(x), cp.asarray(y), 0.5)
    assert z.shape == (2, 3, 4) and z.dtype == dtype
    np.testing.assert_allclose(z.get(), np.maximum(x * dtype(0.5) + y, 0), rtol=1e-6)


@needs_compiler
def test_kernel_index_loop_size_scalars_and_outputs_follow_cupy(cp):
    """``i`` and ``_ind.size()``, ``int32`` scalars, raw inputs that need an output or size=, output shapes."""
    reverse = cp.ElementwiseKernel("raw T x, int32 n", "T y", "y = x[_ind.size() - 1 - i] * n", "reverse_scaled")
    x = on_device(cp, [1.0, 2.0, 3.0])
    assert reverse(x, 2, cp.empty(3)).get().tolist() == [6.0, 4.0, 2.0]
    with pytest.raises(ValueError, match="Loop size is undecided"):
        reverse(x, 2)  # only raw inputs: CuPy cannot tell the size
    fill = cp.ElementwiseKernel("", "raw T y", "y[i] = i", "fill_index")
    assert fill(cp.zeros(3), size=3).get().tolist() == [0.0, 1.0, 2.0]
    copy = cp.ElementwiseKernel("T x", "T y", "y = x", "copy_test")
    with pytest.raises(ValueError, match="Out shape is mismatched"):
        copy(cp.zeros((2, 3)), cp.empty((1, 3)))  # the output takes part in broadcasting, but must have its shape
    with pytest.raises(OverflowError):
        reverse(x, 2**40, cp.empty(3))  # does not fit int32
    transposed = cp.empty((2, 3)).T  # a non-contiguous output is written through
    copy(cp.asarray(np.arange(6.0).reshape(3, 2)), transposed)
    assert transposed.get().tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]


def test_numpy_ufuncs_and_functions_dispatch_to_cupy_and_return_device_arrays(cp):
    x = on_device(cp, [[1.0, -2.0], [3.0, 4.0]])
    for result in (np.exp(x), np.maximum(x, 0), np.sum(x), np.concatenate([x, x]), np.transpose(x), x @ x):
        assert isinstance(result, cp.ndarray)
    assert np.sum(x).shape == () and x.sum(axis=0).get().tolist() == [4.0, 2.0]
    assert x[0, 1].shape == ()  # an element is a 0-d device array, as in CuPy
    assert not names.has("cupy", "block")
    with pytest.raises(TypeError, match="no implementation found"):
        np.block([x, x])  # NumPy has it, CuPy does not: __array_function__ declines


def test_ufunc_methods_and_keywords_are_cupys(cp):
    a = cp.zeros(3)
    np.add.at(a, on_device(cp, [0, 0, 2], np.int64), 1.0)  # cupy.add.at: CuPy's scatter-add
    assert a.get().tolist() == [2.0, 0.0, 1.0]
    with pytest.raises(NotImplementedError, match=r"cupy_multiply\.at"):
        np.multiply.at(a, on_device(cp, [0], np.int64), 2.0)
    with pytest.raises(NotImplementedError, match=r"cupy_maximum\.reduce"):
        np.maximum.reduce(a)
    assert float(np.add.reduce(a)) == 3.0
    with pytest.raises(TypeError, match="Wrong arguments"):
        cp.exp(a, where=a > 0)


def test_assignment_fills_from_device_arrays_and_scalars_not_host_arrays(cp):
    x = cp.zeros((2, 3))
    x[0] = on_device(cp, [1.0, 2.0, 3.0])
    x[1, 2] = 7
    with pytest.raises(ValueError, match=r"non-scalar numpy\.ndarray cannot be used for fill"):
        x[1] = np.ones(3)
    with counting() as counts:
        x[[1, 1], [0, 1]] = np.array([5.0, 6.0])  # advanced indexing: CuPy copies index and values over
    assert counts["host_to_device"] == 3
    assert x.get().tolist() == [[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]]


def test_counters_count_launches_transfers_and_bytes(cp):
    host = np.arange(12.0).reshape(3, 4)
    with counting() as counts:
        x = cp.asarray(host)  # host to device: 96 bytes, no kernel
        empty = cp.empty((3, 4))  # allocation only
        zeros = cp.zeros((3, 4))  # a memset
        view = x.reshape(4, 3).T  # views: no kernel
        y = x + zeros  # one kernel
        copied = view.copy()  # one kernel
        back = y.get()  # device to host: 96 bytes, a wait
    assert counts["host_to_device"] == 1 and counts["host_to_device_bytes"] == 96
    assert counts["kernel_launches"] == 3, counts["launches_by_name"]
    assert counts["device_to_host"] == 1 and counts["device_to_host_bytes"] == 96 and counts["host_syncs"] == 1
    assert counts["value_reads"] == 0 and empty.shape == copied.shape
    np.testing.assert_array_equal(back, host)
    emulated_cupy.counters.reset()
    assert emulated_cupy.counters.snapshot()["kernel_launches"] == 0


def test_every_name_the_emulator_offers_is_one_of_cupys(cp):
    for name, module in emulated_cupy.modules().items():
        offered = {k for k in vars(module) if not k.startswith("_")}
        assert offered <= names.NAMES[name], f"{name}: {sorted(offered - names.NAMES[name])}"
    attributes = {a for a in dir(cp.ndarray) if not a.startswith("_")}
    assert attributes <= names.NAMES["cupy.ndarray"], sorted(attributes - names.NAMES["cupy.ndarray"])
    assert "14.2.0" in names.NAMES_FILE.read_text().splitlines()[0]


def test_install_puts_it_in_place_of_cupy_for_tinyse_and_for_a_command_line():
    script = (
        "import numpy as np\n"
        "from tinyse.testing import emulated_cupy\n"
        "emulated_cupy.install()\n"
        "import cupy, tinyse.backend as backend\n"
        "assert backend.cupy is cupy and backend.gpu_available()\n"
        "x = backend.to_device(np.ones(3), 'gpu')\n"
        "assert backend.get_array_module(x) is cupy and backend.device_of(x) == 'gpu'\n"
        "print(backend.to_device(x * 2, 'cpu').tolist())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[2.0, 2.0, 2.0]"
    usage = subprocess.run([sys.executable, "-m", "tinyse.testing.emulated_cupy"], capture_output=True, text=True)
    assert usage.returncode == 2 and "MODULE" in usage.stdout


# --- ReductionKernel ------------------------------------------------------------------------------------------
@needs_compiler
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_reduction_kernel_maps_reduces_and_post_maps_over_the_axes_of_its_broadcast_inputs(cp, dtype):
    """Sum of squares about a per-channel mean, over (N, H*W), with a scalar: a batch norm's variance."""
    x = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(dtype)
    mean = x.mean(axis=(0, 2))
    variance = cp.ReductionKernel(
        "T x, T mean, T count", "T var", "(x - mean) * (x - mean)", "a + b", "var = a / count", "0", "variance")
    with counting() as counts:
        got = variance(cp.asarray(x), cp.asarray(mean[:, None]), x.size / 4, axis=(0, 2))
    assert counts["kernel_launches"] == 1 and counts["launches_by_name"]["variance"] == 1
    assert got.shape == (4,) and got.dtype == dtype
    np.testing.assert_allclose(got.get(), x.var(axis=(0, 2)), rtol=1e-5)
    kept = variance(cp.asarray(x), cp.asarray(mean[:, None]), x.size / 4, axis=(0, 2), keepdims=True)
    assert kept.shape == (1, 4, 1)
    everything = cp.ReductionKernel("T x", "T y", "x", "a + b", "y = a / (_in_ind.size() / _out_ind.size())", "0",
                                    "mean_all")(cp.asarray(x))
    assert everything.shape == () and np.isclose(everything.get(), x.mean(), rtol=1e-5)
    out = cp.empty(5, dtype=dtype)
    assert cp.ReductionKernel("T x", "T y", "x", "max(a, b)", "y = a", "-1e30", "largest")(
        cp.asarray(x), axis=(0, 1), out=out) is out
    np.testing.assert_array_equal(out.get(), x.max(axis=(0, 1)))


@needs_compiler
def test_a_reduction_kernel_catches_what_cupy_refuses(cp):
    x32, x64 = cp.asarray(np.ones((2, 3), np.float32)), cp.asarray(np.ones((2, 3)))
    two_inputs = cp.ReductionKernel("T x, T y", "T z", "x * y", "a + b", "z = a", "0", "dot")
    with pytest.raises(TypeError, match="Type is mismatched"):
        two_inputs(x32, x64, axis=1)  # one placeholder, two dtypes: CuPy does not promote
    with pytest.raises(TypeError, match="Unsupported type"):
        two_inputs(x32, np.ones((2, 3), np.float32))  # a host array
    with pytest.raises(ValueError, match="Out shape is mismatched"):
        two_inputs(x32, x32, cp.empty(3, dtype=np.float32), axis=1)
    with pytest.raises(cp.cuda.compiler.CompileException, match=r"(?s)ReductionKernel 'typo' does not compile.*yy"):
        cp.ReductionKernel("T x", "T y", "x * yy", "a + b", "y = a", "0", "typo")(x32)


@needs_compiler
def test_a_reduction_kernel_may_reduce_a_struct_from_its_preamble_into_two_outputs(cp):
    """CuPy defines the preamble before ``typedef reduce_type _type_reduce``, so the values reduced may be a
    struct the preamble declares, and POST_MAP may write several outputs: a mean and variance in one pass."""
    x = np.random.default_rng(1).standard_normal((6, 3, 7)) + 5.0
    preamble = """
    struct pair { double sum, squares; __device__ pair(double s = 0, double q = 0) : sum(s), squares(q) {} };
    __device__ pair operator+(const pair& a, const pair& b) { return pair(a.sum + b.sum, a.squares + b.squares); }
    """
    moments = cp.ReductionKernel("T x", "T mean, T var", "pair(x, x * x)", "a + b",
                                 "mean = a.sum / 42, var = a.squares / 42 - (a.sum / 42) * (a.sum / 42)", "0",
                                 "moments", reduce_type="pair", preamble=preamble)
    with counting() as counts:
        mean, var = moments(cp.asarray(x), axis=(0, 2))
    assert counts["kernel_launches"] == 1
    np.testing.assert_allclose(mean.get(), x.mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(var.get(), x.var(axis=(0, 2)), rtol=1e-9)


# --- launches and layouts of CuPy's routines --------------------------------------------------------------------
def test_concatenate_copies_more_than_8_arrays_in_one_kernel_after_copying_their_addresses(cp):
    """CuPy's _concatenate: more than 8 small arrays of one dtype, one kernel (reading a table of their
    addresses, plus tables of offsets and strides unless all are alike); otherwise a copy per array."""
    alike = [on_device(cp, np.full(3, k)) for k in range(9)]
    unlike = [on_device(cp, np.arange(k + 1)) for k in range(9)]
    with counting() as same_size:
        joined = cp.concatenate(alike)
    with counting() as sizes_differ:
        cp.concatenate(unlike)
    with counting() as few:
        cp.concatenate(alike[:8])
    assert (same_size["kernel_launches"], same_size["host_to_device"]) == (1, 1)
    assert (sizes_differ["kernel_launches"], sizes_differ["host_to_device"]) == (1, 3)
    assert (few["kernel_launches"], few["host_to_device"]) == (8, 0)
    assert same_size["host_syncs"] == sizes_differ["host_syncs"] == 0
    np.testing.assert_array_equal(joined.get(), np.repeat(np.arange(9.0), 3))


def test_empty_like_keeps_the_memory_layout_of_a_transposed_array(cp):
    """order="K", CuPy's default: the new array is laid out as its prototype is."""
    transposed = cp.empty((4, 2, 3)).transpose(1, 0, 2)  # shape (2, 4, 3), memory in (4, 2, 3) order
    like = cp.empty_like(transposed)
    assert like.shape == (2, 4, 3) and like.strides == transposed.strides
    assert not like.flags.c_contiguous and cp.empty_like(transposed, order="C").flags.c_contiguous
