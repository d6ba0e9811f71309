"""Several run folders drawn into one figure and one table."""

import json

import pytest

from fastedit.errors import InputError
from fastedit.experiments.compare import compare_runs, comparison_table, read_run


def fake_run(folder, method, efficacy, partial_last_line=False, batch_size=1, every=10):
    """A run folder as run_sequential writes it, with checkpoints every ``every`` edits (batches)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"run": {"method": method, "mode": "fast", "batch_size": batch_size,
                                                            "model": "smollm2-135m"}}))
    lines = []
    for i, eff in enumerate(efficacy):
        lines.append(json.dumps({
            "edits": every * (i + 1),
            "requests": every * (i + 1) * batch_size,
            "latest_edits": {"rewrite_success": eff, "paraphrase_success": eff / 2, "neighborhood_success": 0.8},
            "all_edits": {"rewrite_success": eff - 0.1, "paraphrase_success": eff / 2, "neighborhood_success": 0.7},
            "by_age": [eff - 0.3, eff - 0.2, eff],
            "generation_entropy": 6.0 - i,
            "downstream": {"sst2": {"accuracy": 0.6, "mcc": 0.1}, "cola": {"mcc": 0.2, "accuracy": 0.5}, "n": 4},
            "norm_growth": {"a.weight": {"relative": 0.01 * (i + 1)}, "b.weight": {"relative": 0.03 * (i + 1)}},
        }))
    text = "\n".join(lines) + "\n" + ('{"edits": 4' if partial_last_line else "")
    (folder / "checkpoints.jsonl").write_text(text)
    return folder


def test_figure_and_table(tmp_path):
    a = fake_run(tmp_path / "a", "memit", [1.0, 0.9, 0.5])
    b = fake_run(tmp_path / "b", "alphaedit", [1.0, 0.95], partial_last_line=True)
    png, md = compare_runs([a, b], tmp_path / "out")
    assert png.stat().st_size > 10_000
    table = md.read_text()
    rows = [l for l in table.splitlines() if l.startswith("| memit") or l.startswith("| alphaedit")]
    # last checkpoints (30 and 20 edits), then the common checkpoints 10 and 20 for both runs
    assert [r.split(" | ")[1] for r in rows] == ["30", "20", "10", "10", "20", "20"]
    last_memit = rows[0].split(" | ")
    # efficacy latest, all so far, oldest tenth, paraphrase
    assert last_memit[2:6] == ["0.500", "0.400", "0.200", "0.250"]
    assert last_memit[8] == "0.400"  # GLUE mean of accuracy 0.6 and MCC 0.2
    assert last_memit[9].rstrip(" |") == "0.060"  # mean relative growth of 0.03 and 0.09


def test_bad_run_folders(tmp_path):
    with pytest.raises(InputError, match="not a fastedit run folder"):
        read_run(tmp_path)
    run = fake_run(tmp_path / "r", "memit", [1.0])
    (run / "checkpoints.jsonl").write_text("{oops\n" + (run / "checkpoints.jsonl").read_text())
    with pytest.raises(InputError, match="line 1 is not JSON"):
        read_run(run)
    assert comparison_table([]).startswith("Last checkpoint")


def test_cli(tmp_path, capsys):
    from fastedit.cli import main

    a, b = fake_run(tmp_path / "a", "memit", [1.0]), fake_run(tmp_path / "b", "encore", [0.9])
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    assert "| encore (fast, batch 1) | 10 | 0.900 |" in printed and (tmp_path / "o" / "compare.png").exists()
    assert main(["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) != 0


def test_runs_of_different_batch_sizes_share_the_requests_axis(tmp_path):
    one = fake_run(tmp_path / "b1", "memit", [1.0, 0.9])  # checkpoints at 10 and 20 requests
    ten = fake_run(tmp_path / "b10", "encore", [0.95], batch_size=10, every=2)  # 2 batches of 10: 20 requests
    runs = [read_run(one), read_run(ten)]
    assert runs[1].series(lambda c: c["generation_entropy"]) == ([20], [6.0])
    table = comparison_table(runs)
    assert "| encore (fast, batch 10) | 20 | 0.950 |" in table
    common = table.split("every run reached")[1]
    assert "| memit (fast, batch 1) | 20 | 0.900 |" in common and "| 10 |" not in common
    # a run from before checkpoints recorded requests: edits × batch size
    line = json.loads((ten / "checkpoints.jsonl").read_text().splitlines()[0])
    del line["requests"]
    (ten / "checkpoints.jsonl").write_text(json.dumps(line) + "\n")
    assert read_run(ten).series(lambda c: c["generation_entropy"])[0] == [20]
