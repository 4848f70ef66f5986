"""An allocator policy for CPU training processes."""

from __future__ import annotations

_TUNED = [False]


def tune_cpu_allocator() -> bool:
    """Keep freed memory in this process's glibc heap instead of returning it to the kernel.

    A training step allocates and frees activations of several MB. With glibc's defaults the
    main thread's arena hands them back (``mmap``/``munmap``, heap trimming), and every step
    page-faults them in again (thousands of faults a step for the CNN of
    ``benchmarks/train_seeds.py`` in the main thread; none once tuned, and faster steps).
    (Worker threads' arenas do not trim, so ``threads`` hardly faults either way.) This turns ``mmap`` off for allocations and heap trimming off; the
    process then keeps its peak footprint (a few hundred MB here), which a training process
    holds anyway. Process-wide and permanent; glibc only (returns whether it was applied).
    """
    if _TUNED[0]:
        return True
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        ok = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2**30) == 1
    except (OSError, AttributeError):
        return False
    _TUNED[0] = ok
    return ok
