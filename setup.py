"""Build of sparseyolo's C++/CUDA extension ``sparseyolo._C``.

Configuration (environment variables):
  FORCE_CUDA=1       build the CUDA sources even if the checks below would skip them (fails without nvcc).
  FORCE_CPU=1        build the CPU sources only.
  CUDA_HOME          the CUDA toolkit; when unset, the first of torch's guess, nvcc's real location and
                     /usr/local/cuda that has bin/nvcc and include/cuda_runtime.h.
  TORCH_CUDA_ARCH_LIST  e.g. "8.0;9.0a" (the default); arches the installed nvcc cannot build are dropped.
  MAX_JOBS           parallel compile jobs (ninja).
  DEBUG=1            -O0 -g.
  SPARSEYOLO_EXPERIMENTAL_GPU=1  also build the experimental GPU code (not yet shown correct on a GPU): the
                     big-tile and wgmma 2:4 kernels (csrc/experimental/kernels/cuda) and the cuSPARSELt binding
                     (csrc/experimental/ops/cuda). The default build has the hardware-proven tile64 kernel only.
  SPARSEYOLO_NO_CUSPARSELT=1  with SPARSEYOLO_EXPERIMENTAL_GPU=1, leave out cuSPARSELt (otherwise built when
                     torch's wheel ships nvidia/cusparselt, headers and library).
  SPARSEYOLO_NVCC_FLAGS  extra nvcc flags, split on whitespace; benchmarks/device_check.sh passes the wgmma.sp
                     operand conventions the device's layout probe found (-DSPARSEYOLO_WGMMA_...) this way.

CUDA sources are built when torch was built with CUDA and nvcc is found, whether or not a GPU is present, so
that CI compiles them on machines without one.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CSRC = "csrc"
DEFAULT_ARCH_LIST = "8.0;9.0a"  # A100-class (mma.sp) and Hopper (wgmma, sparse wgmma need the 'a' target)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _is_cuda_home(path: str | None) -> bool:
    return bool(path) and (Path(path) / "bin" / "nvcc").is_file() and (Path(path) / "include" / "cuda_runtime.h").is_file()


def _find_cuda_home() -> str | None:
    """A CUDA toolkit root with both nvcc and the runtime headers (a bare nvcc wrapper is not enough)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(os.path.realpath(nvcc)).parent.parent))
        candidates.append(str(Path(nvcc).parent.parent))
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if _is_cuda_home(c):
            return str(Path(c).resolve())
    return None


# torch.utils.cpp_extension reads CUDA_HOME once, at import: settle it first.
_cuda_home = _find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _nvcc_arches(cuda_home: str) -> set[str]:
    """Compute capabilities the installed nvcc can target, e.g. {'80', '90', ...}."""
    try:
        out = subprocess.run([str(Path(cuda_home) / "bin" / "nvcc"), "--list-gpu-arch"], capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return set()
    return {a.split("_")[1] for a in out.split() if a.startswith("compute_")}


def _arch_list(cuda_home: str) -> str:
    """TORCH_CUDA_ARCH_LIST (default 8.0;9.0a) minus what this nvcc cannot build."""
    wanted = os.environ.get("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST).replace(",", ";").replace(" ", ";")
    supported = _nvcc_arches(cuda_home)
    kept, dropped = [], []
    for arch in filter(None, wanted.split(";")):
        base = arch.replace("+PTX", "").rstrip("af").replace(".", "")
        (kept if not supported or base in supported else dropped).append(arch)
    if dropped:
        print(f"sparseyolo: nvcc cannot build {dropped}; dropped from TORCH_CUDA_ARCH_LIST")
    if not kept:
        sys.exit(f"sparseyolo: none of TORCH_CUDA_ARCH_LIST={wanted!r} is supported by this nvcc")
    return ";".join(kept)


def _wheel_cuda_includes() -> list[str]:
    """Include dirs of the NVIDIA wheels that ship with torch (cusparse.h, cublas, cusparseLt.h ...).

    A CUDA-toolkit install may lack the library headers that torch's own wheels carry under
    site-packages/nvidia/*/include. They are added as -isystem so CUDA_HOME/include (-I) stays first.
    """
    dirs: list[str] = []
    for site in {str(Path(torch.__file__).resolve().parent.parent)}:
        dirs += sorted(d for d in glob.glob(os.path.join(site, "nvidia", "*", "include")) if os.path.isdir(d))
    return dirs


def _cusparselt() -> tuple[list[str], list[str], str]:
    """(compile flags, link flags, what was found) for the cuSPARSELt that ships with torch (nvidia/cusparselt).

    torch's CUDA library already loads libcusparseLt.so.0, so linking against it adds no new dependency; the
    rpath is for a process that loads sparseyolo._C before torch's CUDA library.
    """
    off = "not found (the cuda_cusparselt backend is off)"
    if not _env_flag("SPARSEYOLO_EXPERIMENTAL_GPU"):
        return [], [], "off (experimental: SPARSEYOLO_EXPERIMENTAL_GPU=1 builds it)"
    if _env_flag("SPARSEYOLO_NO_CUSPARSELT"):
        return [], [], "off (SPARSEYOLO_NO_CUSPARSELT=1)"
    site = Path(torch.__file__).resolve().parent.parent
    header = site / "nvidia" / "cusparselt" / "include" / "cusparseLt.h"
    libs = sorted((site / "nvidia" / "cusparselt" / "lib").glob("libcusparseLt.so*"))
    if not header.is_file() or not libs:
        return [], [], off
    lib = libs[0]
    return ["-DSPARSEYOLO_WITH_CUSPARSELT"], [f"-L{lib.parent}", f"-l:{lib.name}", f"-Wl,-rpath,{lib.parent}"], lib.name


def _sources(*patterns: str) -> list[str]:
    out: list[str] = []
    for p in patterns:
        out += glob.glob(os.path.join(CSRC, p), recursive=True)
    return sorted(out)


def make_extension():
    cpu_sources = _sources("*.cpp", "ops/*.cpp", "ops/cpu/*.cpp")
    # experimental/ops/cuda: the cuSPARSELt ops' CUDA kernels, whose binding is compiled only with
    # SPARSEYOLO_EXPERIMENTAL_GPU=1 (without it they raise "built without cuSPARSELt").
    cuda_sources = _sources("ops/cuda/*.cpp", "kernels/cuda/*.cu", "experimental/ops/cuda/*.cpp")
    debug = _env_flag("DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # at::parallel_for is inline OpenMP in torch's headers: without -fopenmp it silently runs on one thread.
    cxx = opt + ["-fopenmp", "-fvisibility=hidden", "-Wall", "-Wno-unknown-pragmas"]
    define_macros = [("TORCH_ASSERT_ONLY_METHOD_OPERATORS", None)]

    with_cuda = False
    reason = "FORCE_CPU=1" if _env_flag("FORCE_CPU") else None
    if reason is None:
        if torch.version.cuda is None:
            reason = "torch was built without CUDA"
        elif _cuda_home is None:
            reason = "nvcc not found (set CUDA_HOME)"
        else:
            with_cuda = True
    if _env_flag("FORCE_CUDA") and not with_cuda:
        sys.exit(f"sparseyolo: FORCE_CUDA=1 but the CUDA sources cannot be built: {reason}")

    if not with_cuda:
        print(f"sparseyolo: building CPU-only extension ({reason}); sources: {len(cpu_sources)} C++")
        return CppExtension("sparseyolo._C", cpu_sources, extra_compile_args={"cxx": cxx},
                            extra_link_args=["-fopenmp"], define_macros=define_macros)

    os.environ["TORCH_CUDA_ARCH_LIST"] = _arch_list(_cuda_home)
    system_includes = [f for d in _wheel_cuda_includes() for f in ("-isystem", d)]
    nvcc = opt + ["-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"] + system_includes
    if debug:
        nvcc += ["-G"]
    experimental = ["-DSPARSEYOLO_EXPERIMENTAL_GPU"] if _env_flag("SPARSEYOLO_EXPERIMENTAL_GPU") else []
    nvcc += experimental + os.environ.get("SPARSEYOLO_NVCC_FLAGS", "").split()
    n_cu = sum(s.endswith(".cu") for s in cuda_sources)
    cslt_cflags, cslt_ldflags, cslt_found = _cusparselt()
    print(
        f"sparseyolo: building CPU+CUDA extension: CUDA_HOME={_cuda_home}, torch CUDA {torch.version.cuda}, "
        f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}, sources: "
        f"{len(cpu_sources) + len(cuda_sources) - n_cu} C++, {n_cu} CUDA; extra includes: {_wheel_cuda_includes()}"
        f"; SPARSEYOLO_NVCC_FLAGS={os.environ.get('SPARSEYOLO_NVCC_FLAGS', '')!r}"
        f"; experimental GPU kernels: {'on' if experimental else 'off (SPARSEYOLO_EXPERIMENTAL_GPU=1)'}"
        f"; cuSPARSELt: {cslt_found}"
    )
    return CUDAExtension(
        "sparseyolo._C",
        cpu_sources + cuda_sources,
        extra_compile_args={"cxx": cxx + ["-DSPARSEYOLO_WITH_CUDA"] + experimental + cslt_cflags + system_includes,
                            "nvcc": nvcc},
        extra_link_args=["-fopenmp"] + cslt_ldflags,
        define_macros=define_macros,
    )


setup(
    packages=find_packages(include=["sparseyolo", "sparseyolo.*"]),
    package_data={"sparseyolo": ["models/configs/*.yaml", "assets/*.pt.xz"]},  # assets: the demo's checkpoint
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
