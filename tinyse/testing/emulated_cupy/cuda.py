"""``cupy.cuda``, emulated: one device (id 0), its null stream, the default memory pool, the runtime calls.

What tinyse and its benchmark call, with CuPy 14.2.0's behaviour (cupy/cuda/device.pyx, memory.pyx,
cupy_backends/cuda/api/runtime.pyx):

    cupy.cuda.runtime.getDeviceCount()       1: the emulated GPU
    cupy.cuda.runtime.getDeviceProperties(0) a dict of CUDA's cudaDeviceProp fields; "name" is bytes
    cupy.cuda.Device().synchronize()         a host synchronisation (counted)
    cupy.cuda.Device().id                    0
    cupy.get_default_memory_pool()           a MemoryPool: used_bytes() is what live device arrays hold,
                                             total_bytes() the most it ever held (a real pool keeps
                                             freed blocks until free_all_blocks(); sizes here are not
                                             rounded up to CuPy's 512-byte blocks)
    cupy.cuda.compiler.CompileException      what a kernel that does not compile raises

A device other than 0 is CUDARuntimeError "cudaErrorInvalidDevice", as on a one-GPU machine.
"""
import weakref

from .counters import counters
from .names import missing

DEVICE_NAME = b"tinyse emulated CuPy device (on the CPU)"
TOTAL_MEMORY = 16 * 2**30  # what the emulated device claims to have: 16 GiB


class CUDARuntimeError(RuntimeError):
    """CUDA runtime's errors, as ``cupy.cuda.runtime.CUDARuntimeError``: "cudaErrorName: description"."""

    def __init__(self, name, description):
        super().__init__(f"{name}: {description}")


class CompileException(Exception):
    """A kernel's source did not compile (CuPy: ``cupy.cuda.compiler.CompileException``, from NVRTC)."""

    def __init__(self, message, source, name, options=(), backend="g++ (tinyse emulated CuPy)"):
        super().__init__(message)
        self.source, self.name, self.options, self.backend = source, name, options, backend

    def get_message(self):
        return str(self)


def _check_device_id(device):
    if device != 0:
        raise CUDARuntimeError("cudaErrorInvalidDevice", "invalid device ordinal")


class _Queue:
    """What a Device and a Stream share: waiting for their queue, and being made current (a no-op here)."""

    __module__ = "cupy.cuda"

    def __getattr__(self, name):
        raise missing(f"cupy.cuda.{type(self).__name__}", name, kind="object")

    def synchronize(self):
        """Wait until the queue has finished: a host synchronisation (counted)."""
        counters.sync()

    def use(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *args):
        pass


class Device(_Queue):
    """``cupy.cuda.Device(device=None)``: the emulated GPU is device 0."""

    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)
        _check_device_id(self.id)

    def __int__(self):
        return self.id

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    __hash__ = object.__hash__

    def __repr__(self):
        return f"<CUDA Device {self.id}>"

    @property
    def compute_capability(self):
        return "90"

    @property
    def mem_info(self):
        """(free, total) bytes of the device."""
        return TOTAL_MEMORY - default_memory_pool.total_bytes(), TOTAL_MEMORY


class Stream(_Queue):
    """``cupy.cuda.Stream``: only the null stream, on which everything runs in order."""

    def __init__(self, null=False, non_blocking=False, ptds=False):
        if not null:
            raise missing("cupy.cuda.Stream", "__init__ of a stream other than the null stream")

    def __repr__(self):
        return "<Stream 0 (device 0)>"


Stream.null = Stream(null=True)


def get_current_stream(device_id=-1):
    return Stream.null


class MemoryPool:
    """``cupy.cuda.MemoryPool``: counts the bytes of device arrays (those owning their memory) while they live."""

    __module__ = "cupy.cuda"

    def __init__(self, allocator=None):
        self._used = 0
        self._held = 0  # the most ever used since the last free_all_blocks: the pool keeps freed blocks

    def __getattr__(self, name):
        raise missing("cupy.cuda.MemoryPool", name, kind="object")

    def _allocated(self, array):
        """Called by the emulator for each new device array that owns its memory."""
        nbytes = array.nbytes
        self._used += nbytes
        self._held = max(self._held, self._used)
        weakref.finalize(array, self._freed, nbytes)

    def _freed(self, nbytes):
        self._used -= nbytes

    def used_bytes(self):
        return self._used

    def total_bytes(self):
        return self._held

    def free_bytes(self):
        return self._held - self._used

    def free_all_blocks(self, stream=None):
        self._held = self._used

    def n_free_blocks(self):
        return 0 if self._held == self._used else 1

    def get_limit(self):
        return 0

    def set_limit(self, size=None, fraction=None):
        raise missing("cupy.cuda.MemoryPool", "set_limit")


class PinnedMemoryPool:
    """``cupy.cuda.PinnedMemoryPool``: host memory for fast copies; the emulator never uses it."""

    __module__ = "cupy.cuda"

    def free_all_blocks(self):
        pass

    def n_free_blocks(self):
        return 0


default_memory_pool = MemoryPool()
default_pinned_memory_pool = PinnedMemoryPool()


def is_available():
    return True


# --- cupy.cuda.runtime: the CUDA runtime calls -----------------------------------------------------------------
def getDeviceCount():
    return 1


def getDevice():
    return 0


def setDevice(device):
    _check_device_id(device)


def deviceSynchronize():
    counters.sync()


def runtimeGetVersion():
    return 12080  # CUDA 12.8, as cupy-cuda12x would report it


def driverGetVersion():
    return 12080


def memGetInfo():
    return Device(0).mem_info


def getDeviceProperties(device):
    """Some of CUDA's cudaDeviceProp fields, as CuPy returns them (a dict; ``name`` as bytes)."""
    _check_device_id(device)
    return {
        "name": DEVICE_NAME, "totalGlobalMem": TOTAL_MEMORY, "multiProcessorCount": 1, "warpSize": 32,
        "maxThreadsPerBlock": 1024, "major": 9, "minor": 0, "clockRate": 0, "memoryClockRate": 0,
        "sharedMemPerBlock": 48 * 1024, "regsPerBlock": 65536, "l2CacheSize": 0, "integrated": 0,
    }


# What namespace.py puts in the modules cupy.cuda, cupy.cuda.runtime and cupy.cuda.compiler.
CUDA = {
    "Device": Device, "Stream": Stream, "MemoryPool": MemoryPool, "PinnedMemoryPool": PinnedMemoryPool,
    "get_current_stream": get_current_stream, "is_available": is_available,
}
RUNTIME = {
    "getDeviceCount": getDeviceCount, "getDevice": getDevice, "setDevice": setDevice,
    "deviceSynchronize": deviceSynchronize, "runtimeGetVersion": runtimeGetVersion,
    "driverGetVersion": driverGetVersion, "memGetInfo": memGetInfo, "getDeviceProperties": getDeviceProperties,
    "CUDARuntimeError": CUDARuntimeError, "is_hip": False,
}
COMPILER = {"CompileException": CompileException}
