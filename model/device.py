"""Which device a command runs on: the one meaning of `--device auto` for every script.

    pick_device("auto")   -> cuda if there is a GPU, else mps (Apple silicon), else cpu
    pick_device("cuda:1") -> that device, or a UserError if this machine has none
"""
import torch

from model.errors import UserError

DEVICE_HELP = "auto (cuda if present, else mps, else cpu), cpu, cuda, cuda:N or mps (default: %(default)s)"


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
