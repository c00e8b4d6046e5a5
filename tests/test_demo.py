"""The demo (README command one) runs end to end through a headless ComfyUI, and its numbers are the
benchmark harness's numbers for the same settings (FLUX images and the Wan video model)."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.server


def test_demo_matches_the_benchmark(comfy, env, tmp_path):
    from PIL import Image

    from benchmarks.run import Bench, Setting, psnr_ssim
    from benchmarks.user_settings import temporal_metrics
    from devtools import demo

    res = demo.main(["--steps", "12", "--video-steps", "8", "--out", str(tmp_path)])
    assert (tmp_path / "side_by_side.png").stat().st_size > 1000
    assert (tmp_path / "report.png").stat().st_size > 1000
    assert res["calls_full"] == 10 * 12 and res["calls_cached"] == 10 * 4  # speed 3: steps 0, 4, 7, 11

    b = Bench(classes=demo.CLASSES, seeds=range(demo.SEEDS), repeats=1)
    s = Setting("euler", 12, 3.0)
    ref, calls_full, _ = b.sample_all(b.patcher, s)
    imgs, calls, _ = b.sample_all(b.harness.apply_node(b.nodes.ABCacheNode, b.patcher), s)   # node defaults
    assert (calls_full, calls) == (12, 4)
    assert torch.allclose(res["images_full"], ref, atol=1e-5)
    assert torch.allclose(res["images_cached"], imgs, atol=1e-5)
    assert res["psnr"] == pytest.approx(psnr_ssim(ref, imgs)[0], abs=0.05)

    # video: an animated GIF of 8 frames, and the same clips as the harness (cfg 5 -> 2 chunks per call)
    gif = Image.open(tmp_path / "video_side_by_side.gif")
    assert gif.is_animated and gif.n_frames == 8
    assert res["video_calls_full"] == 10 * 8 and res["video_calls_cached"] == 10 * 3  # speed 3: steps 0, 4, 7
    vb = Bench(classes=demo.CLASSES, seeds=range(demo.VIDEO_SEEDS), repeats=1, model="wan")
    vs = Setting("euler", 8, 5.0)
    vref, _, _ = vb.sample_all(vb.patcher, vs)
    vimg, _, _ = vb.sample_all(vb.harness.apply_node(vb.nodes.ABCacheNode, vb.patcher), vs)   # node defaults
    assert vref.shape == (20, 8, 32, 32)
    assert torch.allclose(res["video_full"], vref, atol=1e-5)
    assert torch.allclose(res["video_cached"], vimg, atol=1e-5)
    assert res["video_tpsnr"] == pytest.approx(temporal_metrics(vref, vimg)[0], abs=0.05)
    assert res["video_psnr"] < 100 and res["video_tpsnr"] < 100     # caching changed something
