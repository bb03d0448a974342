"""malm's benchmarks: speed, size and scale, side by side with what a user would otherwise run.

    malm bench --quick                   # or: python -m benchmarks --quick
    malm bench --out benchmarks/results  # the full run whose table README shows

The sections live in `benchmarks/suite/` (one module each: peak, bundle_size, latency, encoder,
cold_start, training, index_scale); `machine.py` records what they ran on and `report.py` writes
`bench.json` + `bench.md`. Other scripts here (synth_speed.py, prepare_scale.py, export_targets.py,
ablation.py) belong to their own issues.
"""
