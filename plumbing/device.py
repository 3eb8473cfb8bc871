"""Which device a command runs on, and in which precision: the one meaning of `--device auto` and
`--dtype` for every script.

    pick_device("auto")   -> cuda if there is a GPU, else mps (Apple silicon), else cpu
    pick_device("cuda:1") -> that device, or a UserError if this machine has none
    pick_dtype(torch.device("cpu"), "bfloat16") -> (torch.bfloat16, "") on a CPU with native bfloat16,
                             (torch.float32, "... has no native bfloat16 ...") on one without

Training uses the dtype for autocast (the weights and the optimizer stay float32); evaluation and
the server store the weights in it.
"""
import torch

from plumbing.errors import UserError

DEVICE_HELP = "auto (cuda if present, else mps, else cpu), cpu, cuda, cuda:N or mps (default: %(default)s)"

DTYPES = ("auto", "bfloat16", "float16", "float32")  # what --dtype takes (float16: CUDA only)
TRAINING_DTYPE_HELP = (
    "precision of the forward's matmuls (autocast; weights and optimizer state stay float32): auto = bfloat16 "
    "on a CUDA GPU (float16 + loss scaling on one without bfloat16), float32 on CPU and MPS; bfloat16 also on a "
    "CPU with native bfloat16 (AVX512-BF16/AMX: 2.2-2.8x the float32 tokens/s at MiniMind2-Small, 1.1-1.2x at "
    "the demo's size), float32 on one without; the run's summary line says which (default: %(default)s, which "
    "keeps the CPU demo in float32)")
INFERENCE_DTYPE_HELP = (
    "the weights' dtype in memory (the files stay float32): auto = bfloat16 on a CUDA GPU, float32 on CPU and "
    "MPS; bfloat16 also on a CPU with native bfloat16 (AVX512-BF16/AMX): half the memory, faster decoding of "
    "batches (1.1x at 8 rows at MiniMind2-Small) but no faster one token at a time (0.8-1.0x), float32 on one without "
    "(default: %(default)s)")


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu; any other name is checked and taken as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this machine has no CUDA GPU (or this torch build has no CUDA); "
                        "use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available here; use --device cpu or auto")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {name}: only cpu, cuda and mps are supported")
    return device


# ------------------------------------------------------------------------------------------------
# Precision. bfloat16 keeps float32's 8 exponent bits and only 8 of its 24 significand bits: the
# same range (no loss scaling), a third of the digits, half the bytes. Whether it is also FASTER
# depends on the hardware: a CPU that multiplies bfloat16 in hardware does several times the float32
# matmul rate (a 2048x2048 matmul: 2,446 against 419 GFLOP/s on 2 Sapphire Rapids cores, with AMX);
# one that has to convert each number to float32 first gains nothing and loses the digits.

# x86's CPU flags for bfloat16 arithmetic: AVX512-BF16 (dot products of bfloat16 pairs; Cooper Lake,
# Sapphire Rapids and later, AMD Zen 4 and later) and AMX-BF16 (Sapphire Rapids' tile matrix unit).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set:
    """The CPU's feature flags, as Linux lists them in /proc/cpuinfo ({"avx2", "avx512_bf16", ...}); an empty set where
    there is no such file (macOS, Windows): every rule below then takes its safe side."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):  # "flags : fpu vme ... avx512_bf16 ... amx_bf16 ..."
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True if the CPU's flags (Linux's /proc/cpuinfo) include AVX512-BF16 or AMX-BF16.

    Why the flags, and not something else:
    - torch.backends.cpu.get_cpu_capability() names the vector width only: "AVX512" on CPUs with and
      without bfloat16 arithmetic alike.
    - torch's own check (torch.ops.mkldnn._is_mkldnn_bf16_supported) is true on every AVX-512 CPU,
      where oneDNN *emulates* bfloat16: it runs, but it is not what makes bfloat16 worth its rounding.
    - a tiny timed matmul would catch any fast CPU, but it costs time at every start, and its verdict
      can flip on a busy machine: a --resume would then be refused for a precision nobody changed.
    The flags are read in a millisecond and the same every time. Where there are none to read (macOS,
    Windows) and on ARM (whose bfloat16 kernels this project has not measured), the answer is False:
    float32, which is never slower than before.
    """
    return bool(cpu_flags(cpuinfo) & set(NATIVE_BF16_FLAGS))


def pick_dtype(device: torch.device, requested: str) -> tuple[torch.dtype, str]:
    """What --dtype `requested` means on `device` -> (dtype, why), the one place that decides it:

        --dtype     cuda                            cpu                                    mps
        auto        bfloat16 (float16 if the GPU    float32                                float32
                    has no bfloat16)
        bfloat16    bfloat16 (refused if it has     bfloat16 if the CPU has it natively    float32
                    none)                           (cpu_has_native_bfloat16), else float32
        float16     float16                         float32                                float32
        float32     float32                         float32                                float32

    `auto` keeps the CPU in float32 on purpose: the demo's figures were measured in float32, and on a
    CPU without native bfloat16 nothing may get slower. Ask for --dtype bfloat16 to use it.
    why: '' when the dtype is the one asked for; otherwise a few words for the run's summary line,
    e.g. 'bfloat16 asked, but this CPU has no native bfloat16 (avx512_bf16/amx_bf16)'.
    """
    if requested not in DTYPES:
        raise UserError(f"--dtype {requested!r}: use one of {', '.join(DTYPES)}")
    if device.type == "cuda":
        has_bf16 = torch.cuda.is_bf16_supported()
        if requested == "auto":
            return (torch.bfloat16, "auto") if has_bf16 else (torch.float16, "auto: this GPU has no bfloat16")
        if requested == "bfloat16" and not has_bf16:
            raise UserError("this GPU has no bfloat16; use --dtype float16 (or auto)")
        return getattr(torch, requested), ""
    if requested == "float32":
        return torch.float32, ""
    if requested == "auto":
        native = device.type == "cpu" and cpu_has_native_bfloat16()
        return torch.float32, "auto" + ("; --dtype bfloat16 would use this CPU's native bfloat16" if native else "")
    if requested == "bfloat16" and device.type == "cpu":
        if cpu_has_native_bfloat16():
            return torch.bfloat16, ""
        return torch.float32, "bfloat16 asked, but this CPU has no native bfloat16 (avx512_bf16/amx_bf16)"
    where = "CUDA" if requested == "float16" else "CUDA and CPUs with native bfloat16"
    return torch.float32, f"{requested} asked, but it is used on {where} only"
