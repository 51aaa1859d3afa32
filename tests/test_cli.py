"""The cacc command line."""

from __future__ import annotations

import json

import onnx

from compiler.cli import main
from tests.helpers import mlp_proto


def test_compile_save_inspect_export(tmp_path, capsys):
    src = tmp_path / "mlp.onnx"
    onnx.save(mlp_proto(), str(src))
    out = tmp_path / "mlp.cacc"
    report_json = tmp_path / "report.json"
    assert main(["compile", str(src), "--target", "onnx", "-o", str(out), "--json", str(report_json)]) == 0
    text = capsys.readouterr().out
    assert "cacc report: mlp.onnx" in text and "latency" in text
    assert json.loads(report_json.read_text())["target"] == "onnx"

    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "graph" in text and "cacc::FusedMatMul" in text

    exported = tmp_path / "mlp.opt.onnx"
    assert main(["export-onnx", str(src), "-o", str(exported)]) == 0
    onnx.checker.check_model(onnx.load(str(exported)), full_check=True)
    assert not onnx.load(str(exported)).graph.value_info  # intermediate shapes left out unless asked
    assert main(["export-onnx", str(src), "-o", str(exported), "--debug-info"]) == 0
    assert onnx.load(str(exported)).graph.value_info


def test_passes_lists_registry(capsys):
    assert main(["passes"]) == 0
    assert "fuse_bias_activation" in capsys.readouterr().out


def test_errors_exit_2_with_message(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    assert main(["compile", str(bad), "--target", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cacc: error:") and str(bad) in err
