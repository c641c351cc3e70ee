"""The benchmark at smoke size: interleaved repetitions, and the two sides really compute the same thing."""


def test_bench_adversarial_smoke(load_bench):
    """Faults caught: a benchmark whose PGD differs from torchattacks' (it would compare two different
    attacks: here the images must agree pixel for pixel), a statistic that differs from the scipy
    reference, timings that are not interleaved repetitions (one ratio per repetition)."""
    r = load_bench("adversarial").main(["--size", "smoke"])
    assert r["pgd_pixel_agreement"] > 0.999
    assert r["det_max_rel_dev"] < 1e-5
    assert len(r["pgd"]["speedup_per_rep"]) == r["reps"] == 5
    assert len(r["det_times"]["ours"]) == len(r["det_times"]["scipy"]) == 5
    assert sorted(r["pgd"]["speedup_per_rep"])[2] == r["pgd"]["speedup_median"]
