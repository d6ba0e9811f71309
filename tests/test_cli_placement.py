"""The placement and tracking options of `fastedit edit` and `fastedit run` (--device-map, --report-to, --profile)."""

import pytest

from fastedit.cli import _device_map, _parser


def test_device_map_option():
    args = _parser().parse_args(["edit", "--model", "m", "--requests", "r.json", "--out", "o", "--device-map", "auto"])
    assert _device_map(args.device_map) == "auto"
    args = _parser().parse_args(["run", "--edits", "3", "--out", "o", "--device-map", '{"transformer.h.0": 0, "": "cpu"}'])
    assert _device_map(args.device_map) == {"transformer.h.0": 0, "": "cpu"}
    assert _device_map(None) is None
    with pytest.raises(SystemExit, match="--device-map: not a valid JSON object"):
        _device_map("{oops")


def test_run_tracking_options():
    args = _parser().parse_args(["run", "--edits", "3", "--out", "o"])
    assert (args.report_to, args.profile, args.device_map, args.data) == ("none", None, None, "")
    args = _parser().parse_args(["run", "--edits", "3", "--out", "o", "--report-to", "tensorboard", "--profile", "t.json"])
    assert (args.report_to, args.profile) == ("tensorboard", "t.json")
    with pytest.raises(SystemExit):
        _parser().parse_args(["run", "--edits", "3", "--out", "o", "--report-to", "mlflow"])
