"""safetensors, by hand: the weight-file format of Hugging Face, PEFT, vLLM and most other tools.

A .safetensors file is three parts, nothing else:

    8 bytes      N, the header's length, an unsigned little-endian integer
    N bytes      a JSON object: {name: {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
                 and optionally "__metadata__": {str: str} (Hugging Face writes {"format": "pt"})
    the rest     the tensors' raw bytes, little-endian, row-major; tensor `name` is data[begin:end],
                 offsets counted from the end of the header

Unlike a torch.save file (a pickle), it holds no code, so opening a file from a stranger runs
nothing; and because every tensor's bytes sit at a known offset, a reader can memory-map the file
and let the operating system bring in only the pages it touches. That is what `load_file` does.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "t.safetensors")
    >>> save_file({"w": torch.arange(6, dtype=torch.float16).reshape(2, 3)}, path)
    >>> tensors, metadata = load_file(path)
    >>> tensors["w"], metadata
    (tensor([[0., 1., 2.],
            [3., 4., 5.]], dtype=torch.float16), {'format': 'pt'})
    >>> open(path, "rb").read()[8:96]   # the header (padded with spaces to a multiple of 8 bytes)
    b'{"__metadata__":{"format":"pt"},"w":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]}}'
    >>> os.path.getsize(path)           # 8-byte length + 88-byte header + 6 float16 numbers
    108

Standard library + torch only. A file whose header lies (sizes that do not match the shape, offsets
past the end, tensors overlapping) or that was cut short is refused with one SafetensorsError line,
before any tensor is built.
"""
import json
import math
import mmap
import struct
import sys

import torch

from plumbing.atomic import atomic_write
from plumbing.errors import UserError
from plumbing.untrusted_json import loads

# safetensors' dtype names -> torch dtypes, in the order the reference writer lays tensors out (its
# dtype enum, descending: element sizes never grow along it). Unsigned types wider than a byte and the
# rarer float8/float4 variants are not listed: a file using them is refused by name.
DTYPES = {
    "I64": torch.int64, "F64": torch.float64, "F32": torch.float32, "I32": torch.int32,
    "BF16": torch.bfloat16, "F16": torch.float16, "I16": torch.int16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference implementation's limit: a larger "length" is a broken file
MAX_TENSOR_BYTES = 2**63 - 1  # torch counts bytes and strides in int64: a larger shape cannot even be made empty


class SafetensorsError(UserError):
    """A file that is not valid safetensors, or a tensor that cannot be written as one."""


# ------------------------------------------------------------------------------------------------
# Writing


def _tensor_bytes(t: torch.Tensor) -> bytearray:
    """The tensor's elements as raw bytes, row-major: a view or a transposed (non-contiguous) tensor gives
    its own elements in its own logical order, never the whole storage it is a window on.

    _tensor_bytes(torch.tensor([1, 2], dtype=torch.int16)) -> bytearray(b'\\x01\\x00\\x02\\x00')
    """
    flat = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)  # (numel * itemsize,) bytes
    out = bytearray(flat.numel())
    if out:  # torch.frombuffer refuses an empty buffer
        torch.frombuffer(out, dtype=torch.uint8).copy_(flat)
    return out


def save_file(tensors: dict, path, metadata: dict = None) -> None:
    """Write `tensors` ({name: Tensor}) and `metadata` ({str: str}) to `path` as safetensors, atomically.

    Tensors go in the reference writer's order (by dtype as listed in DTYPES, then by name), so the file
    is byte for byte the one the `safetensors` library writes. Element sizes only shrink along that
    order and the header is padded to a multiple of 8 bytes, so every tensor starts at a multiple of its
    own element size and a reader can map it in place. Tensors that share memory (tied weights) are
    written as separate copies: the format has no notion of sharing.
    """
    if sys.byteorder != "little":  # torch's bytes are the machine's; the format is little-endian
        raise SafetensorsError("writing safetensors on a big-endian machine is not supported")
    metadata = {"format": "pt", **(metadata or {})}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise SafetensorsError(f"safetensors metadata must map strings to strings, got {metadata!r}")
    for name, t in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise SafetensorsError(f"tensor name {name!r} cannot be stored (names are strings other than '__metadata__')")
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
            raise SafetensorsError(f"{name!r} is a {type(t).__name__}, not a dense tensor; safetensors holds tensors only")
        if t.dtype not in DTYPE_NAMES:
            raise SafetensorsError(f"{name!r} has dtype {t.dtype}, which safetensors cannot hold")

    rank = {name: i for i, name in enumerate(DTYPES)}
    order = sorted(tensors, key=lambda name: (rank[DTYPE_NAMES[tensors[name].dtype]], name))
    header, offset = {"__metadata__": metadata}, 0
    for name in order:
        t = tensors[name]
        size = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    header_bytes = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)  # JSON allows trailing spaces; data then starts 8-aligned

    def write(f):
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for name in order:
            f.write(_tensor_bytes(tensors[name]))

    atomic_write(path, write)


# ------------------------------------------------------------------------------------------------
# Reading


def _check_entry(name, entry) -> tuple:
    """One header entry -> (dtype, shape, begin, end), or the reason it is malformed."""
    if not isinstance(entry, dict):
        raise ValueError(f"the header entry of {name!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPES:
        raise ValueError(f"tensor {name!r} has dtype {dtype!r}, which this reader does not know "
                         f"(known: {', '.join(DTYPES)})")
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise ValueError(f"tensor {name!r} has shape {shape!r}; a shape is a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
        raise ValueError(f"tensor {name!r} has data_offsets {offsets!r}; expected [begin, end] with 0 <= begin <= end")
    begin, end = offsets
    # A zero anywhere makes a shape's size 0, which any offsets [b, b] match; torch would still overflow
    # building [0, 2**70] (its strides multiply the other dims), so the dims without the zeros must fit too.
    if math.prod(d or 1 for d in shape) * DTYPES[dtype].itemsize > MAX_TENSOR_BYTES:
        raise ValueError(f"tensor {name!r} has shape {shape}, larger than any tensor can be (2**63 bytes)")
    needed = math.prod(shape) * DTYPES[dtype].itemsize
    if end - begin != needed:
        raise ValueError(f"tensor {name!r} of shape {shape} and dtype {dtype} needs {needed} bytes, "
                         f"but its data_offsets [{begin}, {end}] give {end - begin}")
    return DTYPES[dtype], shape, begin, end


def read_header(f, file_size: int) -> tuple:
    """Parse and check the header of the open binary file f -> (entries, metadata, data_start).

    entries: {name: (dtype, shape, begin, end)}, checked against each other and against the file size:
    every tensor lies inside the data, no two overlap, and every data byte belongs to a tensor (so a
    file cut short, or a header that lies about where tensors are, is caught here). Raises ValueError
    with the reason.
    """
    if file_size < 8:
        raise ValueError(f"it is {file_size} bytes long, too short for the 8-byte header length that starts a safetensors file")
    (header_len,) = struct.unpack("<Q", f.read(8))
    if header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
        raise ValueError(f"its first 8 bytes announce a {header_len}-byte header, but the file is {file_size} bytes "
                         "(truncated, or not a safetensors file)")
    header = loads(f.read(header_len), "its header")  # JSONError, a ValueError: not UTF-8, not JSON, nested too deep
    if not isinstance(header, dict):
        raise ValueError(f"its header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not (isinstance(metadata, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise ValueError("its __metadata__ is not an object of strings")
    entries = {name: _check_entry(name, entry) for name, entry in header.items()}

    data_start = 8 + header_len
    data_len = file_size - data_start
    by_offset = sorted(entries.items(), key=lambda item: (item[1][2], item[1][3]))
    for name, (_, _, begin, end) in by_offset:
        if end > data_len:
            raise ValueError(f"tensor {name!r} ends at byte {end} of the data, but the file holds only {data_len} "
                             "bytes after its header: it is truncated (copy or download it again)")
    position, previous = 0, None  # where the next tensor must begin, and the tensor that ended there
    for name, (_, _, begin, end) in by_offset:
        if begin < position:
            raise ValueError(f"tensors {previous!r} and {name!r} overlap in the data (bytes {begin}..{position})")
        if begin > position:
            raise ValueError(f"data bytes {position}..{begin} belong to no tensor; the header does not describe this file")
        position, previous = end, name
    if position != data_len:
        raise ValueError(f"the last {data_len - position} bytes of the data belong to no tensor; "
                         "the header does not describe this file")
    return entries, metadata, data_start


def load_file(path) -> tuple:
    """Read a safetensors file -> ({name: Tensor}, metadata {str: str}), memory-mapped where possible.

    The file is mapped copy-on-write (mmap.ACCESS_COPY): no byte is read until a tensor is used, and
    writing into a returned tensor changes this process's copy only, never the file. Tensors keep the
    mapping alive as long as they exist. A tensor whose offset is not a multiple of its element size
    (which the reference writer never produces) is copied to aligned memory instead.
    Any problem with the file is one SafetensorsError: "PATH is not a valid safetensors file: why".
    """
    path = str(path)
    if sys.byteorder != "little":
        raise SafetensorsError(f"{path}: reading safetensors on a big-endian machine is not supported")
    try:
        with open(path, "rb") as f:
            file_size = f.seek(0, 2)
            f.seek(0)
            entries, metadata, data_start = read_header(f, file_size)
            try:
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if file_size else bytearray()
            except (OSError, ValueError):  # a file system that cannot map files: read it instead
                f.seek(0)
                data = bytearray(f.read())
    except OSError as e:
        raise SafetensorsError(f"{path} cannot be read ({e.strerror or e})") from None
    except ValueError as e:
        raise SafetensorsError(f"{path} is not a valid safetensors file: {e}") from None

    tensors = {}
    for name, (dtype, shape, begin, end) in entries.items():
        count = math.prod(shape)
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
        elif (data_start + begin) % dtype.itemsize == 0:
            tensors[name] = torch.frombuffer(data, dtype=dtype, count=count, offset=data_start + begin).reshape(shape)
        else:
            aligned = bytearray(data[data_start + begin:data_start + end])
            tensors[name] = torch.frombuffer(aligned, dtype=dtype).reshape(shape)
    return tensors, metadata
