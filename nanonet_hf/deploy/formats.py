"""The deployment formats a run can write beside its PyTorch student (`export_formats`), the extra each needs, and
the check that runs before any work: an unknown name, or a format whose libraries are not installed, is refused
naming the extra to install."""

import importlib.util

# name -> (the extra of pyproject.toml that installs it, the modules it imports, what it writes)
FORMATS = {
    "onnx": ("onnx", ("onnx", "onnxruntime", "onnxscript"), "student/onnx/model.onnx (fp32)"),
    "onnx-int8": ("onnx", ("onnx", "onnxruntime", "onnxscript"), "student/onnx/model_quantized.onnx (dynamic int8)"),
    "static": ("static", ("model2vec", "skeletoken"), "student_static/ (a Model2Vec StaticModelPipeline)"),
}


def check_export_formats(formats: list[str] | None) -> list[str]:
    """`formats` as a list without repeats, each known and installed; raises naming the unknown format or the extra
    to install."""
    formats = list(dict.fromkeys(formats or []))
    unknown = [name for name in formats if name not in FORMATS]
    if unknown:
        raise ValueError(f"export_formats {unknown} unknown: choose among {list(FORMATS)}.")
    for name in formats:
        extra, modules, _ = FORMATS[name]
        missing = [module for module in modules if importlib.util.find_spec(module) is None]
        if missing:
            raise ImportError(
                f"export_formats '{name}' needs {missing}, which are not installed: pip install 'nanonet-hf[{extra}]'."
            )
    return formats
