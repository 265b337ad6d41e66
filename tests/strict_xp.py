"""A stand-in for CuPy that runs on the CPU: NumPy behind a device boundary.

The most common bug in NumPy/CuPy code is a stray `numpy.` call (or a NumPy
array) on the device path. NumPy does not notice it; CuPy does, but only on a
machine with a GPU. This module reproduces CuPy's behaviour at the host/device
boundary, so the bug shows on any machine:

- `StrictArray` wraps a NumPy array ("on the device"). It refuses implicit
  conversion to NumPy: `numpy.asarray(a)` and `numpy.exp(a)` raise TypeError,
  as CuPy's `__array__` does (`numpy.sum(a)` works, since NumPy then calls
  `a.sum()`, for a CuPy array too). It refuses NumPy arrays as operands, indices
  or assigned values (CuPy raises TypeError for those too). Python and NumPy
  scalars are accepted, as CuPy accepts them.
- Reductions return 0-d device arrays (CuPy does, NumPy returns scalars);
  `float()`, `int()`, `bool()` and `.item()` read them back, as in CuPy.
- The module object `xp` mirrors the `cupy` namespace: its functions take device
  arrays (and host data only in `asarray`/`array`, the explicit upload) and
  return device arrays; `xp.asnumpy(a)` and `a.get()` are the only ways back.
  dtypes, `finfo` and constants are NumPy's own, as in CuPy.

It is a test tool, not a CuPy emulator: it checks where data lives, not CUDA
semantics (streams, kernels, memory pools).
"""
import numpy


class BoundaryError(TypeError):
    """Host data met device data without an explicit transfer."""


def _refuse(what):
    raise BoundaryError(f"{what}: a NumPy array met a device array; "
                        "move it with xp.asarray(...) or xp.asnumpy(...) explicitly")


def _in(x, what):
    """Unwrap a device argument (recursively through tuples, lists and dicts); refuse host arrays."""
    if isinstance(x, StrictArray):
        return x._a
    if isinstance(x, numpy.ndarray):
        _refuse(what)
    if isinstance(x, tuple):
        return tuple(_in(v, what) for v in x)
    if isinstance(x, list):
        return [_in(v, what) for v in x]
    if isinstance(x, dict):
        return {k: _in(v, what) for k, v in x.items()}
    return x


def _out(x):
    """Wrap NumPy results as device arrays (scalars from reductions become 0-d arrays)."""
    if isinstance(x, numpy.ndarray):
        return StrictArray(x)
    if isinstance(x, numpy.generic) and not isinstance(x, (numpy.str_, numpy.bytes_)):
        return StrictArray(numpy.asarray(x))
    if isinstance(x, tuple):
        return tuple(_out(v) for v in x)
    if isinstance(x, list):
        return [_out(v) for v in x]
    return x


def _device_call(fn, what):
    def call(*args, **kwargs):
        return _out(fn(*_in(args, what), **_in(kwargs, what)))
    call.__name__ = getattr(fn, "__name__", what)
    return call


def _binary(name):
    op = getattr(numpy.ndarray, name)

    def method(self, other):
        return _out(op(self._a, _in(other, f"StrictArray.{name}")))
    method.__name__ = name
    return method


def _inplace(name):
    op = getattr(numpy.ndarray, name)

    def method(self, other):
        op(self._a, _in(other, f"StrictArray.{name}"))
        return self
    method.__name__ = name
    return method


class StrictArray:
    """A NumPy array that behaves like a CuPy array at the host/device boundary."""
    __array_ufunc__ = None        # numpy.exp(a), numpy_array + a: NumPy defers, then we refuse
    __slots__ = ("_a",)

    def __init__(self, a):
        self._a = a

    def __array__(self, dtype=None, copy=None):
        raise BoundaryError("implicit conversion of a device array to NumPy is not allowed; "
                            "use xp.asnumpy(a) or a.get()")

    # explicit transfers, as in CuPy
    def get(self):
        return self._a.copy()

    def tolist(self):
        return self._a.tolist()

    # attributes and methods forward to NumPy, on device arrays only
    def __getattr__(self, name):
        if name.startswith("__"):          # no __array_interface__, __array_struct__, buffer...
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if callable(attr):
            return _device_call(attr, f"StrictArray.{name}")
        return _out(attr)

    @property
    def T(self):
        return StrictArray(self._a.T)

    def __getitem__(self, key):
        return _out(self._a[_in(key, "indexing a device array")])

    def __setitem__(self, key, value):
        self._a[_in(key, "indexing a device array")] = _in(value, "assigning to a device array")

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_out(v) for v in self._a)

    # reading a single value back is allowed (CuPy synchronizes and copies it)
    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __bool__(self):
        return bool(self._a)

    def __complex__(self):
        return complex(self._a)

    def __repr__(self):
        return f"StrictArray({self._a!r})"

    def __neg__(self):
        return StrictArray(-self._a)

    def __pos__(self):
        return StrictArray(+self._a)

    def __abs__(self):
        return StrictArray(abs(self._a))

    def __invert__(self):
        return StrictArray(~self._a)


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul",
              "and", "or", "xor", "lshift", "rshift"):
    setattr(StrictArray, f"__{_name}__", _binary(f"__{_name}__"))
    setattr(StrictArray, f"__r{_name}__", _binary(f"__r{_name}__"))
    setattr(StrictArray, f"__i{_name}__", _inplace(f"__i{_name}__"))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(StrictArray, f"__{_name}__", _binary(f"__{_name}__"))
StrictArray.__hash__ = None


class _Namespace:
    """`xp`, `xp.fft`, `xp.linalg`: NumPy's functions behind the boundary."""
    _passthrough = {"dtype", "finfo", "iinfo", "result_type", "promote_types", "can_cast",
                    "issubdtype", "newaxis", "pi", "e", "inf", "nan", "euler_gamma"}

    def __init__(self, module, name):
        self._module, self._name = module, name

    def __getattr__(self, name):
        attr = getattr(self._module, name)
        if name in self._passthrough or isinstance(attr, type) or not callable(attr):
            if isinstance(attr, type(numpy)):
                return _Namespace(attr, f"{self._name}.{name}")
            return attr
        return _device_call(attr, f"{self._name}.{name}")


class _Xp(_Namespace):
    ndarray = StrictArray

    def __init__(self):
        super().__init__(numpy, "xp")

    @staticmethod
    def asarray(a, dtype=None):
        """The explicit upload: host data (or a device array) -> a device array (a copy)."""
        if isinstance(a, StrictArray):
            return a if dtype is None or a._a.dtype == dtype else StrictArray(a._a.astype(dtype))
        return StrictArray(numpy.array(a, dtype=dtype))

    array = asarray

    @staticmethod
    def asnumpy(a):
        """The explicit download: a device array -> a NumPy array."""
        return a.get() if isinstance(a, StrictArray) else numpy.asarray(a)

    @staticmethod
    def get_array_module(*args):
        return xp


xp = _Xp()
