"""benchmarks/experimental/profile_sparse_conv_ncu.py --summarize: the table it makes of an ncu raw CSV export (no GPU)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("profile_ncu",
                                               ROOT / "benchmarks" / "experimental" / "profile_sparse_conv_ncu.py")
profile_ncu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(profile_ncu)

# What `ncu --import x.ncu-rep --csv --page raw --print-units base` writes: a header, a units row, one row per
# kernel; ncu may put thousands separators in numbers, and its own ==PROF== lines may come first.
CSV = '''==PROF== Connected to process 1234
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC",\
"gpu__time_duration.sum","sm__throughput.avg.pct_of_peak_sustained_elapsed","dram__bytes.sum.per_second",\
"launch__registers_per_thread","sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",\
"smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio",\
"smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio",\
"smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio",\
"smsp__average_warp_latency_issue_stalled_barrier.ratio"
"","","","","","","","","","","","nsecond","%","byte/second","register/thread","%","inst","inst","inst","inst"
"0","1234","python3","h",\
"void sparseyolo::kernels::spconv24::sparse_conv24_tile64<__half>(sparseyolo::kernels::SparseConv24Params)","1","7",\
"(128, 1, 1)","(1600, 5, 1)","0","9.0","1,234,567","41.5","2,500,000,000,000","124","33.3","5.5","2.25","0.5","99"
"1","1234","python3","h","sm90_xmma_fprop_implicit_gemm_f16f16_f16f32","1","7","(384, 1, 1)","(132, 1, 1)","0","9.0",\
"250000","88","1e12","168","","0.1","1.5","0.75","99"
'''


def test_summary_rows_units_and_stalls():
    md = profile_ncu.summarize(CSV)
    lines = md.strip().splitlines()
    assert len(lines) == 4  # header, rule, two kernels (the units row and ==PROF== line skipped)
    tile64 = lines[2]
    assert "`spconv24" not in tile64 and "`sparse_conv24_tile64<__half>`" in tile64  # namespaces and args dropped
    cells = [c.strip() for c in tile64.split("|")]
    head = [c.strip() for c in lines[0].split("|")]
    row = dict(zip(head, cells))
    assert row["us"] == "1234.6"  # 1,234,567 ns
    assert row["SM %"] == "41.5"
    assert row["DRAM GB/s"] == "2500"
    assert row["regs"] == "124"
    assert row["mem %"] == "n/a"  # not collected
    assert row["tensor pipe %"] == "33.3"
    # the per-issue family wins over the latency one, largest first
    stalls = "barrier 5.5, long_scoreboard 2.2, math_pipe_throttle 0.5"
    assert row["top stalls (cycles per issued instruction)"] == stalls
    cudnn = dict(zip(head, [c.strip() for c in lines[3].split("|")]))
    assert cudnn["tensor pipe %"] == "n/a" and cudnn["us"] == "250.0"
    assert cudnn["top stalls (cycles per issued instruction)"].startswith("long_scoreboard 1.5")


def test_summary_without_kernels_or_header():
    assert "no ncu raw CSV header" in profile_ncu.summarize("==PROF== nothing\n")
    header = CSV.split("\n\"0\"")[0]
    assert "profiled no kernel" in profile_ncu.summarize(header)
