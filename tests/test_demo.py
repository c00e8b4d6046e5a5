"""The demo (README command one) runs end to end through a headless ComfyUI, and its numbers are the
benchmark harness's numbers for the same setting."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.server


def test_demo_matches_the_benchmark(comfy, env, tmp_path):
    from benchmarks.run import Bench, Setting, psnr_ssim
    from devtools import demo

    res = demo.main(["--steps", "12", "--out", str(tmp_path)])
    assert (tmp_path / "side_by_side.png").stat().st_size > 1000
    assert (tmp_path / "report.png").stat().st_size > 1000
    assert res["calls_full"] == 10 * 12 and res["calls_cached"] == 10 * 6  # steps 0,1,2,3,7,11

    b = Bench(classes=demo.CLASSES, seeds=range(demo.SEEDS), repeats=1)
    s = Setting("euler", 12, 3.0)
    ref, calls_full, _ = b.sample_all(b.patcher, s)
    imgs, calls, _ = b.sample_all(b.ab(2, 4, 3), s)
    assert (calls_full, calls) == (12, 6)
    assert torch.allclose(res["images_full"], ref, atol=1e-5)
    assert torch.allclose(res["images_cached"], imgs, atol=1e-5)
    assert res["psnr"] == pytest.approx(psnr_ssim(ref, imgs)[0], abs=0.05)
