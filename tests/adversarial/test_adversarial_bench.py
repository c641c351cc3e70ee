"""The benchmark runs at smoke size and reports positive rates; its two statistic implementations agree."""


def test_bench_adversarial_smoke(load_bench):
    r = load_bench("adversarial").main(["--size", "smoke"])
    for key in ("pgd_ours_img_s", "pgd_torchattacks_img_s", "pgd_ratio", "det_ours_img_s", "det_scipy_img_s",
                "det_ratio_scipy"):
        assert r[key] > 0, key
    # the scipy.ndimage reference computes the same statistic
    assert r["det_max_rel_dev"] < 1e-3
    # same attack, same model: success rates within a few images of each other
    assert abs(r["pgd_success_ours"] - r["pgd_success_torchattacks"]) <= 3 / r["pgd_images"]
