"""Facts about the machine a benchmark runs on, read from the machine.

Every bench script writes these into its RESULTS.md section (`describe()`),
so no section states a CPU, core count, RAM size or peak that the run did not
see:

    import host  # bench/host.py
    facts = host.facts()          # measures the matmul peak (< 1 s on a CPU)
    host.describe(facts)
    # 'AMD EPYC (x86_64), 2 CPU cores, 23.5 GiB RAM, no accelerator (JAX
    #  cpu backend, 8 devices), float32 matmul peak 431 GFLOP/s (jitted
    #  2048x2048 on one JAX device, best of 10)'

Sources: CPU model from /proc/cpuinfo ("model name", else "Hardware" /
"Processor"; `platform.processor()` where there is no /proc), core count
`os.cpu_count()` (and the cores this process may use,
`os.sched_getaffinity`, when fewer), RAM from /proc/meminfo's MemTotal
(`os.sysconf` elsewhere), the accelerator from `jax.devices()`, and the
matmul peak measured by `matmul_peak`.
"""

import os
import platform
import time


def cpu_model(cpuinfo="/proc/cpuinfo"):
  """The CPU's model name, e.g. "AMD EPYC 7B13" (or the machine type)."""
  try:
    with open(cpuinfo) as f:
      text = f.read()
  except OSError:
    text = ""
  for key in ("model name", "Hardware", "Processor", "cpu model"):
    for line in text.splitlines():
      name, sep, value = line.partition(":")
      if sep and name.strip() == key and value.strip():
        return value.strip()
  return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores():
  """Cores this process may run on (its affinity mask), else os.cpu_count()."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count()


def ram_bytes(meminfo="/proc/meminfo"):
  """Total RAM in bytes (MemTotal), or None when it cannot be read."""
  try:
    with open(meminfo) as f:
      for line in f:
        if line.startswith("MemTotal:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (AttributeError, ValueError, OSError):
    return None


def accelerator():
  """(description, JAX backend, device count) of JAX's default devices."""
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  backend = jax.default_backend()
  if backend == "cpu":
    return (f"no accelerator (JAX {backend} backend, {len(devices)} "
            f"device{'s' if len(devices) != 1 else ''})", backend,
            len(devices))
  kinds = sorted({d.device_kind for d in devices})
  return (f"{len(devices)} x {', '.join(kinds)} (JAX {backend})", backend,
          len(devices))


def matmul_peak(n=2048, reps=10, dtype="float32"):
  """Best GFLOP/s of a jitted n x n matmul in `dtype` on JAX's first device."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.dtype(dtype))
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    f(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best / 1e9


def facts(peak=True, peak_n=2048, dtype="float32"):
  """The machine's facts as a dict (see the module docstring).

  Args:
    peak: measure the matmul peak (needs JAX; < 1 s on a CPU); False leaves
      "matmul_peak_gflops" None.
    peak_n: matmul size of the peak (8192 suits a GPU).
    dtype: dtype of the peak matmul.

  Returns:
    dict with cpu_model, arch, cpu_cores (os.cpu_count()), usable_cores,
    ram_bytes, accelerator, backend, devices, matmul_peak_gflops,
    peak_n, peak_dtype.
  """
  desc, backend, n_devices = accelerator()
  return {
      "cpu_model": cpu_model(),
      "arch": platform.machine(),
      "cpu_cores": os.cpu_count(),
      "usable_cores": usable_cores(),
      "ram_bytes": ram_bytes(),
      "accelerator": desc,
      "backend": backend,
      "devices": n_devices,
      "matmul_peak_gflops": matmul_peak(peak_n, dtype=dtype) if peak else None,
      "peak_n": peak_n,
      "peak_dtype": dtype,
  }


def describe(f):
  """One line for a results section, from `facts()`."""
  cores = f"{f['cpu_cores']} CPU cores"
  if f["usable_cores"] and f["usable_cores"] != f["cpu_cores"]:
    cores += f" ({f['usable_cores']} usable by this process)"
  ram = (f"{f['ram_bytes'] / 2**30:.1f} GiB RAM" if f["ram_bytes"]
         else "RAM unknown")
  parts = [f"{f['cpu_model']} ({f['arch']})", cores, ram, f["accelerator"]]
  if f["matmul_peak_gflops"]:
    parts.append(
        f"{f['peak_dtype']} matmul peak {f['matmul_peak_gflops']:,.0f} "
        f"GFLOP/s (jitted {f['peak_n']}x{f['peak_n']} on one JAX device, "
        "best of 10)")
  return ", ".join(parts)
