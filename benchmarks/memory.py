"""Where does the training command's memory go? Resident memory sampled around every step of a run.

    python -m benchmarks.memory --epochs 3 --out /tmp/mem.pt        # any arguments of helpers.train
    /usr/bin/time -v python -m benchmarks.memory --epochs 10 --out /tmp/mem.pt

Runs ``helpers.train.main`` unchanged, with the epoch, the evaluation and the two per-epoch writes
(checkpoint, JSON history) wrapped so that each prints a line with the process's memory before and
after, in MB, read from /proc/self/status: resident (VmRSS), its peak so far (VmHWM, what
``/usr/bin/time -v`` reports as "Maximum resident set size"), and the resident split into anonymous
memory (RssAnon: tensors, Python objects, the allocator's heap) and file-backed pages (RssFile: the
shared libraries of torch, MKL and oneDNN, which the kernel may drop and read back in).
A run whose memory grows from epoch to epoch shows which step, and which kind of memory, grows.
"""

import sys
import time

import helpers.train

FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")


def memory_mb(pid="self"):
    """{VmRSS, VmHWM, RssAnon, RssFile} of a process in MB, from /proc/PID/status (Linux)."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in FIELDS:
                fields[key] = int(value.split()[0]) / 1024  # kB -> MB
    return fields


START = time.perf_counter()


def report(what):
    m = memory_mb()
    print(
        f"[memory] {time.perf_counter() - START:7.1f} s  {what:<24} rss {m['VmRSS']:7.1f}  peak {m['VmHWM']:7.1f}"
        f"  anon {m['RssAnon']:7.1f}  file {m['RssFile']:6.1f} MB",
        flush=True,
    )


def sampled(name, fn):
    def wrapper(*args, **kwargs):
        report(f"before {name}")
        result = fn(*args, **kwargs)
        report(f"after {name}")
        return result

    return wrapper


def main(argv=None):
    for name in ("train_epoch", "evaluate", "save_checkpoint", "save_json"):
        setattr(helpers.train, name, sampled(name, getattr(helpers.train, name)))
    report("start")
    code = helpers.train.main(argv)
    report("end")
    return code


if __name__ == "__main__":
    sys.exit(main())
