"""Chapter 7's sweep: quality against model calls. Small runs of the real code on the shipped checkpoints."""
import json

import pytest
import torch

from course_lib.evaluation import main
from course_lib.evaluation.samplers import nfe_of, sample_prompts, samplers_sweep, steps_for, summarize
from course_lib.evaluation.sweeps import Sweep
from course_lib.metrics import fresh_prompts
from course_lib.pretrained import load_checkpoint


def test_heun_pays_two_calls_a_step_but_one_for_the_last():
    assert [steps_for("heun", k) for k in (1, 2, 3, 4, 100)] == [1, 1, 2, 2, 50]
    assert [nfe_of("heun", s) for s in (1, 2, 50)] == [1, 3, 99]
    assert steps_for("dpmpp_2m", 7) == 7 == nfe_of("ddim", 7)


def test_sweep_rows_share_prompts_and_noise_and_count_calls():
    prompts = fresh_prompts(2)
    sweep = samplers_sweep(("ddim", "euler", "heun", "lcm"), (1, 2, 3), prompts=prompts, n_per_prompt=2,
                           reference=("ddpm", 3), device="cpu")
    settings = [(r["sampler"], r["nfe"]) for r in sweep.rows]
    assert settings == [("ddpm", 3), ("ddim", 1), ("ddim", 2), ("ddim", 3), ("euler", 1), ("euler", 2),
                        ("euler", 3), ("heun", 1), ("heun", 3), ("lcm", 1), ("lcm", 2), ("lcm", 3)]
    assert {r["model"] for r in sweep.rows if r["sampler"] == "lcm"} == {"shapes32-lcm"}
    assert {r["model"] for r in sweep.rows if r["sampler"] != "lcm"} == {"shapes32-t2i"}
    # DDIM and Euler are the same update (sigma-space Euler): equal images from the same x_T
    for k in (1, 2, 3):
        torch.testing.assert_close(sweep.images[sweep.index(sampler="euler", nfe=k)],
                                   sweep.images[sweep.index(sampler="ddim", nfe=k)], atol=1e-3, rtol=0)
    for row in sweep.rows:
        assert row["frechet_distance"] > 0 and row["frechet_distance_se"] >= 0 and row["seconds_per_image"] > 0
        assert 0 <= row["prompt_accuracy"] <= 1
    # a row is what sample_prompts gives for its sampler and steps: prompt i's images are rows 2i, 2i + 1
    teacher = load_checkpoint("shapes32-t2i", "cpu")
    images, _ = sample_prompts(teacher, "ddim", 2, prompts, 2, guidance_scale=5.0, seed=0)
    torch.testing.assert_close(images, sweep.images[sweep.index(sampler="ddim", nfe=2)])


def test_summary_finds_the_fewest_calls_within_ten_percent():
    rows = [{"sampler": "ddpm", "steps": 1000, "nfe": 1000, "frechet_distance": 100.0, "frechet_distance_se": 5.0,
             "prompt_accuracy": 0.9, "seconds_per_image": 9.0}]
    for nfe, fd in ((1, 400.0), (4, 111.0), (8, 109.0), (20, 95.0)):
        rows.append({"sampler": "ddim", "nfe": nfe, "frechet_distance": fd, "frechet_distance_se": 5.0})
    rows.append({"sampler": "euler", "nfe": 1, "frechet_distance": 300.0, "frechet_distance_se": 5.0})
    rows.append({"sampler": "lcm", "nfe": 4, "frechet_distance": 120.0, "frechet_distance_se": 12.0})
    rows.append({"sampler": "dpmpp_2m", "nfe": 25, "frechet_distance": 101.0, "frechet_distance_se": 5.0})
    summary = summarize(Sweep(rows, []))
    assert summary["lcm_vs_teacher"] == {"lcm_4": rows[-2], "dpmpp_2m_25": rows[-1]}
    # 111 > 110 = 100 * 1.1 >= 109
    assert summary["smallest_nfe_within"] == {"ddim": 8, "euler": None, "lcm": None, "dpmpp_2m": 25}
    # 2 standard errors of the difference: 2 * sqrt(5^2 + 5^2) = 14.1 for ddim (111 - 100 < 14.1: NFE 4), and
    # 2 * sqrt(12^2 + 5^2) = 26 for lcm (120 - 100 < 26)
    assert summary["smallest_nfe_indistinguishable"] == {"ddim": 4, "euler": None, "lcm": 4, "dpmpp_2m": 25}
    assert summary["reference"]["frechet_distance"] == 100.0 and summary["fd_limit"] == pytest.approx(110.0)


def test_cli_writes_the_table_and_refuses_bad_settings(tmp_path, capsys):
    out = tmp_path / "samplers.json"
    main(["samplers", "--samplers", "dpmpp_2m", "lcm", "--nfes", "1", "2", "--prompts", "1", "--per-prompt", "2",
          "--reference-steps", "2", "--device", "cpu", "-o", str(out)])
    record = json.loads(out.read_text())
    assert [(r["sampler"], r["nfe"]) for r in record["rows"]] == [("ddpm", 2), ("dpmpp_2m", 1), ("dpmpp_2m", 2),
                                                                   ("lcm", 1), ("lcm", 2)]
    assert set(record["summary"]["smallest_nfe_within"]) == {"dpmpp_2m", "lcm"}
    assert record["images_per_row"] == 2 and record["device"].startswith("cpu") and "CPU-sized" in record["note"]
    assert set(record["summary"]["smallest_nfe_indistinguishable"]) == {"dpmpp_2m", "lcm"}
    assert record["command"].startswith("python -m course_lib.evaluation samplers --prompts 1 --per-prompt 2")
    assert "lcm" in capsys.readouterr().out
    for bad in (["--samplers", "euler_a"], ["--prompts", "0"], ["--nfes", "0"]):
        with pytest.raises(SystemExit) as e:
            main(["samplers", *bad, "-o", str(tmp_path / "x.json")])
        assert e.value.code == 2
    assert "valid names: ddpm, ddim, euler, heun, dpmpp_2m, lcm" in capsys.readouterr().err
