"""How much the SIMT emulator test catches: break the 2:4 sparse-conv kernels on purpose, one bug at a time.

Each mutation replaces text in a copy of csrc/kernels/cuda/ and csrc/experimental/kernels/cuda/ (most target the
experimental big-tile and wgmma kernels, so the copy is built with -DSPARSEYOLO_EXPERIMENTAL_GPU), builds
tests/cpp/test_sparse_conv24_emulated.cpp against the copy with g++, and runs it; the mutation is caught when the test fails (a wrong output, or an abort
from the emulator's checks). The unchanged kernels must pass. Needs g++ and the CUDA headers (CUDA_HOME, default
/usr/local/cuda); takes about 7 minutes on 2 cores:

    python tests/cpp/experimental/emulator_mutations.py [-j 2] [names...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
# The kernel sources a mutation may edit (the first that contains its text), relative to csrc/.
KERNELS = ("kernels/cuda/sparse_conv2d_24_device.cuh", "experimental/kernels/cuda/sparse_conv2d_24_experimental.cuh")

# name -> [(old, new), ...]: every `old` must occur in one of KERNELS; its first occurrence there is replaced.
MUTATIONS: dict[str, list[tuple[str, str]]] = {
    "swizzle dropped on the ldmatrix side": [(" ^ b_swz) * 16", ") * 16")],
    "swizzle dropped on the store side": [("const int chunk = (my_half * 4 + q) ^ (row & 7);",
                                           "const int chunk = (my_half * 4 + q);")],
    "big tiles: barrier before the next stage's copies removed": [
        ("    __syncthreads();  // k-step ks is visible to all; every warp", "    // removed")],
    "tile64: barrier after the MMAs removed": [("__syncthreads();  // the stage is overwritten", "// removed")],
    "big tiles: barrier before the epilogue removed": [
        ("  __syncthreads();  // all warps are done with the operand stages", "  // removed")],
    "wgmma: barrier before the next stage's copies removed": [
        ("    __syncthreads();\n    const int next = ks + kAhead;", "    const int next = ks + kAhead;")],
    "big tiles: cp.async wait one group short": [("cp_async_wait<kStages - 2>();", "cp_async_wait<kStages - 1>();")],
    "tile64: cp.async wait one group short": [("cp_async_wait<1>();", "cp_async_wait<2>();")],
    "wgmma: per-step wait dropped": [("    wgmma_wait<kOverlap ? 1 : 0>();", "    // removed")],
    "wgmma: per-step wait relaxed to one group in flight": [
        ("    wgmma_wait<kOverlap ? 1 : 0>();", "    wgmma_wait<1>();")],
    "wrong metadata lane": [("g * 2 + (t & 1)) * 4)", "g * 2) * 4)")],
    "k-blocks past K loaded": [("const bool in = mt_block + mt < packed_tiles && kb < num_k;",
                                "const bool in = mt_block + mt < packed_tiles;")],
    "row tiles past the packed weight loaded": [("packed_tiles = (p.cout + 63) / 64 * 4;",
                                                 "packed_tiles = (p.cout + 127) / 128 * 8;")],
    "warp mapping transposed": [("const int wm = warp % kWarpsM, wn = warp / kWarpsM;",
                                 "const int wm = warp / kWarpsM, wn = warp % kWarpsM;")],
    "gather-job stride": [("const int row = (tid >> 1) + j * (Cfg::kThreads / 2);",
                           "const int row = (tid >> 1) + j * (Cfg::kThreads / 4);")],
    "metadata chunk count": [("if (tid < Cfg::kMetaChunks) {", "if (tid < 64) {")],
    "wgmma: descriptor k offset": [("wgmma_desc_k_major_sw128(sb + sub * 64)", "wgmma_desc_k_major_sw128(sb + sub * 32)")],
    "wgmma: stages not 1024-byte aligned": [
        ("const uint32_t smem_base = (raw + kWgmmaAlign - 1) & ~static_cast<uint32_t>(kWgmmaAlign - 1);",
         "const uint32_t smem_base = raw;")],
    "wgmma: fragment row tile": [("const int frag = (wg * 4 + wq) * 2 + sub;", "const int frag = (wq * 2 + wg) * 2 + sub;")],
    "wgmma: accumulator mapping": [("epilogue(acc[4 * nt + 2 * half + j]", "epilogue(acc[4 * nt + half + 2 * j]")],
    "wgmma_overlap: one set of A registers": [
        ("(acc, a[P][sub], e[P][sub]", "(acc, a[0][sub], e[0][sub]"),
        ("      a[P][sub] = wgmma_a_fragment(", "      a[0][sub] = wgmma_a_fragment("),
        ("      e[P][sub] = wgmma_meta_word(", "      e[0][sub] = wgmma_meta_word(")],
    "wgmma: A registers 1 and 2 exchanged": [
        ("SPARSEYOLO_WGMMA_A_SWAP12 ? make_uint4", "!SPARSEYOLO_WGMMA_A_SWAP12 ? make_uint4")],
    "wgmma: metadata words of a quad's two lanes exchanged": [
        ("wgmma_meta_word(lds32(quad_meta), lds32(quad_meta + 4), t)",
         "wgmma_meta_word(lds32(quad_meta + 4), lds32(quad_meta), t)")],
    "wgmma: metadata high half from the low slot": [("hi = (kWgmmaMetaSlots >> (4 * (2 - s)))",
                                                     "hi = (kWgmmaMetaSlots >> (4 * (3 - s)))")],
    "wgmma_overlap: copies one stage too far ahead": [
        ("constexpr int kAhead = kOverlap ? kStages - 2 : kStages - 1;", "constexpr int kAhead = kStages - 1;")],
    "weights of the padding k-block (odd K) not zero-filled": [
        ("      cp_async16(sb + Cfg::kBBytes + i * 16, in ? static_cast<const void*>(vals + frag * 32 + ln) : p.values,\n"
         "                 in ? 16 : 0);",
         "      if (in) cp_async16(sb + Cfg::kBBytes + i * 16, static_cast<const void*>(vals + frag * 32 + ln), 16);")],
    "metadata of row tiles past the packed weight zero-filled": [
        ("p.meta + frag * 16 + q * 4, 16);", "p.meta + frag * 16 + q * 4, mt_block + mt < packed_tiles ? 16 : 0);")],
    "metadata of the padding k-block (odd K) zero-filled": [
        ("p.meta + frag * 16 + q * 4, 16);", "p.meta + frag * 16 + q * 4, 2 * ks + sub < num_k ? 16 : 0);")],
    "wgmma: proxy fence removed": [("    fence_proxy_async_shared();\n    // k-step ks is visible", "    // k-step ks is visible")],
    "wgmma: proxy fence before the cp.async wait": [
        ("    cp_async_wait<kAhead - 1>();\n    fence_proxy_async_shared();",
         "    fence_proxy_async_shared();\n    cp_async_wait<kAhead - 1>();")],
    "wgmma: wgmma.fence removed": [("    wgmma_fence();\n", "")],
    "wgmma_overlap: two MMA groups in flight": [("wgmma_wait<kOverlap ? 1 : 0>();", "wgmma_wait<kOverlap ? 2 : 0>();")],
}


def run(name: str, edits: list[tuple[str, str]], work: Path, cuda_include: str) -> tuple[str, bool, str]:
    """Builds and runs the emulated test against a mutated copy; returns (name, failed, first line of why)."""
    src = work / name.replace(" ", "_").replace(":", "").replace("'", "").replace("/", "_")
    shutil.copytree(ROOT / "csrc" / "kernels", src / "kernels")
    shutil.copytree(ROOT / "csrc" / "experimental", src / "experimental")
    for old, new in edits:
        path = next((src / k for k in KERNELS if old in (src / k).read_text()), None)
        if path is None:
            raise SystemExit(f"{name}: {old!r} not in {KERNELS} (the kernel changed: update this mutation)")
        path.write_text(path.read_text().replace(old, new, 1))
    exe = src / "test"
    build = subprocess.run(["g++", "-std=c++17", "-O2", "-U_FORTIFY_SOURCE", "-Wno-unknown-pragmas",
                            "-DSPARSEYOLO_EXPERIMENTAL_GPU", f"-I{src}",
                            f"-I{ROOT / 'tests' / 'cpp'}", f"-I{cuda_include}",
                            str(ROOT / "tests" / "cpp" / "test_sparse_conv24_emulated.cpp"), "-o", str(exe)],
                           capture_output=True, text=True, check=False)
    if build.returncode != 0:
        return name, True, "does not compile: " + (build.stderr.strip().splitlines() or ["?"])[0]
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=900, check=False)
    out = r.stdout + r.stderr
    # The emulator's message goes to stderr and can land in the middle of an unfinished stdout line.
    why = next((ln[ln.index("simt emulator"):] for ln in out.splitlines() if "simt emulator" in ln), "")
    if not why:
        fails = sum(ln.startswith("FAIL") for ln in out.splitlines())
        why = f"{fails} cases with a wrong output" if fails else f"exit code {r.returncode}"
    return name, r.returncode != 0, why


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-j", type=int, default=2, help="mutations built and run at once")
    ap.add_argument("names", nargs="*", help="only these mutations (default: all)")
    args = ap.parse_args()
    cuda_include = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "include")
    chosen = {n: e for n, e in MUTATIONS.items() if not args.names or n in args.names}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _, failed, why = run("unchanged", [], work, cuda_include)
        if failed:
            sys.exit(f"the unchanged kernels fail the emulated test ({why}); fix that first")
        with ThreadPoolExecutor(args.j) as pool:
            results = list(pool.map(lambda item: run(item[0], item[1], work, cuda_include), chosen.items()))
    missed = [n for n, failed, _ in results if not failed]
    for name, failed, why in results:
        print(f"{'caught' if failed else 'MISSED'}  {name}: {why}")
    print(f"{len(results) - len(missed)} of {len(results)} mutations caught")
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
