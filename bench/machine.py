"""The machine a benchmark ran on, and its own limits, measured in the same run.

A tokens/s figure means little on its own: the same code is 10x faster on a bigger machine. So
every bench script prints this header first and states its figures against two ceilings measured
here, seconds before the figures themselves:

    matmul peak (GFLOP/s)   the best a large matrix multiply reaches on this machine, in float32 and
                            in bfloat16: the ceiling for training, which is almost all matmuls (MFU
                            divides by the peak of the precision the step ran in)
    memory bandwidth (GB/s) how fast large tensors stream through memory: the ceiling for decoding
                            at batch 1, which reads every weight once per token

plus what else moves the numbers: the CPU model, its cores, the Python/torch versions, the number
of torch threads, and the load average (another busy process on a 2-core machine halves everything;
a table taken at load > ~1 is not worth quoting). The load average lags by a minute and counts the
benchmark itself, so the footer also says how much CPU time OTHER processes took while the
benchmark ran (from /proc/stat): a few percent is noise, tens of percent spoil the table.

    python -m bench.machine          # just the header

Used by every bench script:

    from bench.machine import measure_machine
    machine = measure_machine(threads=2)
    print(machine.header())          # a markdown table, e.g. | fp32 matmul peak | 183 GFLOP/s ... |
    machine.peak_gflops(torch.bfloat16)   # the ceiling a bfloat16 step's MFU divides by
    ...                              # the benchmark
    print(machine.footer())          # load average at the end, CPU share other processes took
"""
import argparse
import multiprocessing
import os
import platform
import sys
import time
from dataclasses import dataclass

import torch

from plumbing.device import cpu_has_native_bfloat16, pick_dtype
from plumbing.errors import UserError, run_main


def cpu_model() -> str:
    """'AMD EPYC 9B14' from /proc/cpuinfo on Linux; platform's guess elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    """The 1/5/15-minute load averages, e.g. '0.42 / 0.80 / 1.10' ('n/a' where the OS has none).

    On an N-core machine a 1-minute load well below N means the cores were ours; each 1.0 more is
    roughly one core's worth of someone else's work running beside the benchmark."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def busy_cpu_seconds() -> tuple[float, float]:
    """(CPU-seconds all processes have used since boot, CPU-seconds this process and its waited-for
    children have used), so that a difference of two readings tells how much others ran meanwhile.

    /proc/stat's first line counts, per state, the time all CPUs spent since boot in clock ticks:
    user nice system idle iowait irq softirq steal ...; busy = everything but idle and iowait.
    Returns (nan, nan) where there is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return float("nan"), float("nan")
    busy = sum(ticks) - ticks[3] - ticks[4]
    t = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system + t.children_user + t.children_system


class OthersWatch:
    """How much of the machine OTHER processes take while a benchmark runs.

    >>> watch = OthersWatch()
    >>> ...                       # time something
    >>> watch.share()             # e.g. 0.02: others took 2% of all cores' time meanwhile
    """

    def __init__(self):
        self.started = time.perf_counter()
        self.busy, self.mine = busy_cpu_seconds()

    def share(self) -> float:
        """Share of all cores' time since __init__ that other processes used (0.0 none, 1.0 all)."""
        busy, mine = busy_cpu_seconds()
        others = (busy - self.busy) - (mine - self.mine)
        return max(0.0, others) / ((time.perf_counter() - self.started) * os.cpu_count())


def wait_until_quiet(max_wait_s: float, busy_limit: float = 0.05, window_s: float = 5.0) -> float:
    """Sleep until the machine's CPUs were less than busy_limit busy over a window_s window, or until
    max_wait_s has passed; return the last window's busy share (0.0 = idle).

    Called between the rows of a benchmark on a shared machine: this process is idle meanwhile, so
    any busy time is someone else's, and a row started now is not spoiled from its first second."""
    deadline = time.perf_counter() + max_wait_s
    while True:
        watch = OthersWatch()
        time.sleep(window_s)
        busy = watch.share()
        if busy < busy_limit or time.perf_counter() >= deadline:
            return busy


def best_time(fn, repeats: int) -> float:
    """The fastest of `repeats` timed calls of fn() (after one untimed warm-up call), in seconds.

    The best, not the mean: on a shared machine every disturbance makes a run slower, never faster,
    so the minimum is the closest to what the hardware does."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak_gflops(n: int = 2048, repeats: int = 5, dtype=torch.float32) -> float:
    """GFLOP/s of an (n, n) @ (n, n) matmul in `dtype`, best of `repeats`: 2 n^3 FLOPs each.

    At n = 2048 (17 GFLOP, a 16 MB float32 operand) the BLAS kernel runs at its steady-state rate;
    this is the ceiling a training step's matmuls can approach, and the denominator of MFU. In
    bfloat16 it is the ceiling of a step under bfloat16 autocast: ~6x the float32 one on a CPU with
    AMX (2 Sapphire Rapids cores), about the float32 one (or less) where bfloat16 is emulated.
    """
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    out = torch.empty(n, n, dtype=dtype)
    seconds = best_time(lambda: torch.mm(a, b, out=out), repeats)
    return 2 * n**3 / seconds / 1e9


def memory_bandwidth_gbs(mbytes: int = 256, repeats: int = 5) -> tuple[float, float]:
    """(copy GB/s counting read + write, read GB/s) on `mbytes` MB float32 tensors, best of `repeats`.

    256 MB is far beyond any cache, so both stream from DRAM. Copy: dst.copy_(src) moves 2 x mbytes.
    Read: src.sum() reads mbytes and writes nothing, which is what decoding does with the weights;
    that read figure is the one the decode bound uses.
    """
    src = torch.ones(mbytes * 2**20 // 4)
    dst = torch.empty_like(src)
    nbytes = src.numel() * 4
    copy_s = best_time(lambda: dst.copy_(src), repeats)
    read_s = best_time(lambda: src.sum(), repeats)
    return 2 * nbytes / copy_s / 1e9, nbytes / read_s / 1e9


@dataclass
class Machine:
    """What the header reports; the measured ceilings are attributes for the scripts to divide by."""

    cpu: str
    cores: int
    python: str
    torch: str
    threads: int
    matmul_gflops: float  # measured fp32 matmul peak, the denominator of a float32 step's MFU
    bf16_matmul_gflops: float  # measured bf16 matmul peak, the denominator of a bfloat16 step's MFU
    native_bf16: bool  # plumbing.device.cpu_has_native_bfloat16(): whether bfloat16 runs natively or emulated
    matmul_n: int
    copy_gbs: float  # measured copy bandwidth, read + write counted
    read_gbs: float  # measured read bandwidth: the decode bound's
    load_before: str  # load average when the measurement started
    others_during: float  # share of the CPUs other processes took while the ceilings were measured
    watch: OthersWatch  # started with the measurement: what other processes took since
    measurements: int = 1  # how many times the ceilings were measured (remeasure adds one)

    def remeasure(self) -> None:
        """Measure the ceilings again and keep the best seen so far.

        On a shared virtual machine the same matmul runs up to ~20% slower at some moments than at
        others (a neighbour busy on the host, invisible from inside). Benchmarks call this between
        rows and divide by the best ceiling seen in the whole run, so a ceiling caught at a slow
        moment never flatters an MFU or a %-of-bound figure."""
        copy_gbs, read_gbs = memory_bandwidth_gbs()
        self.copy_gbs, self.read_gbs = max(self.copy_gbs, copy_gbs), max(self.read_gbs, read_gbs)
        self.matmul_gflops = max(self.matmul_gflops, matmul_peak_gflops(self.matmul_n))
        self.bf16_matmul_gflops = max(self.bf16_matmul_gflops, matmul_peak_gflops(self.matmul_n, dtype=torch.bfloat16))
        self.measurements += 1

    def peak_gflops(self, dtype: torch.dtype) -> float:
        """The measured matmul peak of `dtype` (float32 or bfloat16): what MFU divides by."""
        return self.bf16_matmul_gflops if dtype == torch.bfloat16 else self.matmul_gflops

    def header(self) -> str:
        """A markdown table of the machine and its measured ceilings."""
        rows = [
            ("machine", f"{self.cpu}, {self.cores} cores"),
            ("software", f"python {self.python}, torch {self.torch}"),
            ("torch threads", str(self.threads)),
            ("fp32 matmul peak (measured)", f"{self.matmul_gflops:,.0f} GFLOP/s ({self.matmul_n}x{self.matmul_n} @ "
                                            f"{self.matmul_n}x{self.matmul_n}, best of 5 {self._when()})"),
            ("bf16 matmul peak (measured)", f"{self.bf16_matmul_gflops:,.0f} GFLOP/s (the same, in bfloat16; "
                                            f"{'native' if self.native_bf16 else 'emulated'}: this CPU "
                                            f"{'has' if self.native_bf16 else 'lacks'} avx512_bf16/amx_bf16)"),
            ("memory bandwidth (measured)", f"{self.read_gbs:.1f} GB/s read (sum of 256 MB), "
                                            f"{self.copy_gbs:.1f} GB/s copy (read + write), best of 5 {self._when()}"),
            ("load average 1/5/15 min, at start", self.load_before),
            ("other processes' CPU share while measuring the ceilings", f"{self.others_during:.0%}"),
        ]
        return "| machine | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)

    def _when(self) -> str:
        return "at the start" if self.measurements == 1 else f"at each of {self.measurements} points in the run, the best used"

    def footer(self) -> str:
        """One line for under the table: the load average now and what other processes took meanwhile."""
        return (f"load average 1/5/15 min at the end: {load_average()}; other processes used "
                f"{self.watch.share():.0%} of the {self.cores} cores' time during the run")


def measure_machine(threads: int | None = None, matmul_n: int = 2048) -> Machine:
    """Set torch's thread count (None: leave torch's default), then measure the ceilings.

    Call it at the start of a benchmark, after nothing else heavy has run, so the ceilings and the
    figures come from the same minute of the same machine."""
    if threads:
        torch.set_num_threads(threads)
    load_before, watch = load_average(), OthersWatch()
    copy_gbs, read_gbs = memory_bandwidth_gbs()
    matmul_gflops = matmul_peak_gflops(matmul_n)
    bf16_matmul_gflops = matmul_peak_gflops(matmul_n, dtype=torch.bfloat16)
    return Machine(
        cpu=cpu_model(),
        cores=os.cpu_count(),
        python=platform.python_version(),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        matmul_gflops=matmul_gflops,
        bf16_matmul_gflops=bf16_matmul_gflops,
        native_bf16=cpu_has_native_bfloat16(),
        matmul_n=matmul_n,
        copy_gbs=copy_gbs,
        read_gbs=read_gbs,
        load_before=load_before,
        others_during=watch.share(),
        watch=watch,
    )


def add_threads_arg(parser) -> None:
    """--threads, shared by every bench script so they all default to the same thing."""
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads (default: %(default)s, every core)")


def add_quiet_args(parser) -> None:
    """--wait / --attempts / --max_others: how a benchmark copes with a machine shared with others."""
    parser.add_argument("--wait", type=float, default=120,
                        help="before each row, wait up to this many seconds for the CPUs to be idle (0: don't wait; default: %(default)s)")
    parser.add_argument("--attempts", type=int, default=3,
                        help="measure a row again, up to this many times in all, while other processes took more than "
                             "--max_others of the CPU time during it (default: %(default)s)")
    parser.add_argument("--max_others", type=float, default=0.05,
                        help="share of the CPU time others may take during a row before it is measured again (default: %(default)s)")


def add_dtypes_arg(parser, default=("float32", "bfloat16")) -> None:
    """--dtypes: the precisions a benchmark measures, side by side."""
    parser.add_argument("--dtypes", nargs="+", default=list(default), choices=["float32", "bfloat16"],
                        help="precisions to measure; bfloat16 only where the CPU has it natively, as for the "
                             f"scripts' --dtype bfloat16 (default: {' '.join(default)})")


def cpu_dtypes(names) -> list:
    """The precisions to measure, each name resolved by plumbing.device.pick_dtype exactly as the scripts'
    --dtype is on the CPU, duplicates dropped: ["float32", "bfloat16"] -> [torch.float32, torch.bfloat16]
    on a CPU with native bfloat16, [torch.float32] on one without (saying so on stderr)."""
    chosen = []
    for name in names:
        dtype, note = pick_dtype(torch.device("cpu"), name)
        if dtype != getattr(torch, name):
            print(f"--dtypes {name}: left out, {note}: the scripts would run float32", file=sys.stderr)
        elif dtype not in chosen:
            chosen.append(dtype)
    return chosen


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> 'bfloat16'"""
    return str(dtype).removeprefix("torch.")


def add_step_args(parser) -> None:
    """--steps / --warmup / --lora_rank, shared by the benchmarks that time training steps."""
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case; the median is reported (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--lora_rank", type=int, default=16, help="LoRA rank, on wq and wo as MiniMind2 (default: %(default)s)")


def run_in_fresh_process(target, args: tuple):
    """What target(*args, results) put on its `results` queue, run in a process of its own
    ("spawn": nothing inherited from this one), so a peak-memory figure is that run's alone."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=target, args=(*args, results))
    process.start()
    out = results.get()
    process.join()
    if process.exitcode != 0:
        raise UserError(f"the {target.__name__} process failed (exit code {process.exitcode}; its error is printed above)")
    return out


def measure_quietly(fn, args):
    """(result of fn(), share of the CPUs others took during it), fn() re-run up to args.attempts
    times while others took more than args.max_others; the least disturbed attempt is kept."""
    best = None
    for _ in range(max(1, args.attempts)):
        if args.wait > 0:
            wait_until_quiet(args.wait)
        watch = OthersWatch()
        result = fn()
        share = watch.share()
        if best is None or share < best[1]:
            best = (result, share)
        if share <= args.max_others:
            break
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description="Print the machine header the bench scripts share.")
    add_threads_arg(parser)
    args = parser.parse_args(argv)
    machine = measure_machine(args.threads)
    print(machine.header())
    print(f"\n{machine.footer()}")


if __name__ == "__main__":
    sys.exit(run_main(main))
