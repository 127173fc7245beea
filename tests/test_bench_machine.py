

def test_bf16_benchmark_compares_precisions_and_records_its_machine(tmp_path, capsys):
    import bf16

    ratios = bf16.main(["--models", "tiny", "--rounds", "1", "--steps", "1", "--warmup", "0", "--batch", "2",
                        "--results-dir", str(tmp_path)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == ratios and set(ratios) == {"tiny_bf16_over_fp32"} and ratios["tiny_bf16_over_fp32"] > 0
    assert any(line.startswith("machine: ") for line in lines) and any(line.startswith("| tiny |") for line in lines)
    (path,) = tmp_path.glob("*-bf16.json")
    tiny = json.loads(path.read_text())["result"]["models"]["tiny"]
    assert tiny["batch"] == 2 and set(tiny["tokens_per_s"]) == {"fp32", "bf16"}
    assert abs(tiny["last_loss"]["fp32"] - tiny["last_loss"]["bf16"]) < 0.1  # one step from the same weights
