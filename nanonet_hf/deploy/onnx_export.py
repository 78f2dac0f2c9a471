"""An exported student as ONNX: `student/onnx/model.onnx` (fp32) and `student/onnx/model_quantized.onnx` (dynamic
int8), the layout transformers.js and the Hub's ONNX tooling read, each checked against the PyTorch student before
it is kept.

The graph comes from torch's own exporter (`torch.onnx.export(dynamo=True)`): optimum's exporter requires
transformers < 5 and cannot be installed beside this project. The legacy TorchScript exporter is not used: on BERT,
ELECTRA and DeBERTa-v3 its graph gave logits off by up to 2.7 at another batch shape (it traced the token type ids
as constants), which the check below would refuse. Batch and sequence axes are dynamic; the inputs are the ones the
student's tokenizer gives (`input_ids`, `attention_mask`, and `token_type_ids` where it has them).

The int8 model is quantized with `onnxruntime.quantization.quantize_dynamic` (weights int8 per output channel,
activations quantized at run time), which needs no calibration data. Its agreement with the PyTorch student's predicted class on held-out
rows is recorded; below `MIN_INT8_AGREEMENT` the export fails.
"""

import logging
import os

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from ..files import atomic_directory
from ..inference import predict_logits

logger = logging.getLogger(__name__)

ONNX_DIR = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model_quantized.onnx"
# fp32 logits must match the PyTorch student's to this absolute (and relative) tolerance on every held-out row
FP32_TOLERANCE = 1e-4
# the int8 model must predict the PyTorch student's class on at least this share of the held-out rows
MIN_INT8_AGREEMENT = 0.9
CHECK_ROWS = 256
# int8 scales per output channel of each weight, not one per tensor: on 2,000 unlabeled training texts the int8
# model agreed with the PyTorch student on 98.9% (TREC-6) and 98.1% (Rotten Tomatoes) of the rows, against 96.8% and
# 96.5% per tensor, at the same speed (measured on the default run's students)
PER_CHANNEL = True


class OnnxExportError(RuntimeError):
    """The exporter could not take the model, or the exported graph does not give the PyTorch student's logits."""


class OnnxClassifier:
    """A student's ONNX graph served with onnxruntime and the student's tokenizer: texts in, logits `[N, C]` out
    (tokenization included, as a deployment pays it)."""

    def __init__(self, onnx_path: str, tokenizer, *, max_length: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # no busy-waiting of idle threads after a call: timed beside PyTorch, spinning threads would slow it down
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        self.input_names = [item.name for item in self.session.get_inputs()]
        self.tokenizer, self.max_length = tokenizer, max_length or tokenizer.model_max_length

    def __call__(self, texts: list[str]) -> np.ndarray:
        inputs = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="np")
        return self.session.run(["logits"], {name: inputs[name].astype(np.int64) for name in self.input_names})[0]

    def logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Logits of `texts` in batches, in their order."""
        chunks = [self(texts[start : start + batch_size]) for start in range(0, len(texts), batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)


def export_onnx(student_dir: str, check_texts: list[str], *, int8: bool, max_length: int) -> dict:
    """Write `student_dir/onnx/model.onnx` (and with `int8`, `model_quantized.onnx`) from the plain transformers
    student in `student_dir`, checked against it on `check_texts` (held-out rows; the first `CHECK_ROWS`). Returns the
    record of the checks: the largest fp32 logit difference, the int8 agreement.

    Raises [`OnnxExportError`] naming the architecture when the exporter cannot take it, and when a check fails;
    nothing is left in `student_dir/onnx` then (the folder is written whole in a temporary sibling)."""
    if not check_texts:
        raise ValueError("The ONNX export is checked on held-out texts; none were given.")
    check_texts = list(check_texts[:CHECK_ROWS])
    model = AutoModelForSequenceClassification.from_pretrained(student_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    reference = predict_logits(model, tokenizer, check_texts, max_length=max_length)
    record = {"check_rows": len(check_texts)}
    with atomic_directory(os.path.join(student_dir, ONNX_DIR)) as tmp:
        fp32_path = os.path.join(tmp, FP32_FILE)
        _export_graph(model, tokenizer, fp32_path, check_texts)
        fp32 = OnnxClassifier(fp32_path, tokenizer, max_length=max_length).logits(check_texts)
        difference = float(np.abs(fp32 - reference).max())
        record["fp32_max_abs_diff"] = difference
        if not np.allclose(fp32, reference, atol=FP32_TOLERANCE, rtol=FP32_TOLERANCE):
            raise OnnxExportError(
                f"The ONNX graph of {_name(model)} gives logits up to {difference:.2e} away from the PyTorch student's on "
                f"{len(check_texts)} held-out rows (tolerance {FP32_TOLERANCE}): not written."
            )
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            int8_path = os.path.join(tmp, INT8_FILE)
            quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8, per_channel=PER_CHANNEL)
            quantized = OnnxClassifier(int8_path, tokenizer, max_length=max_length).logits(check_texts)
            agreement = float((quantized.argmax(-1) == reference.argmax(-1)).mean())
            record.update(int8_agreement=agreement, int8_max_abs_diff=float(np.abs(quantized - reference).max()))
            if agreement < MIN_INT8_AGREEMENT:
                raise OnnxExportError(
                    f"The int8 ONNX model of {_name(model)} predicts the PyTorch student's class on {100 * agreement:.1f}% "
                    f"of {len(check_texts)} held-out rows, below {100 * MIN_INT8_AGREEMENT:.0f}%: not written. Export "
                    "without 'onnx-int8'."
                )
    logger.info("ONNX export of %s checked on %d held-out rows: %s", student_dir, len(check_texts), record)
    return record


def _export_graph(model, tokenizer, path: str, texts: list[str]) -> None:
    """The graph of `model` at `path`, traced on two texts of different lengths (a batch of one, or of equal lengths,
    would let the exporter fix that axis to its size)."""
    sample = sorted(texts, key=len)
    sample = [sample[0] + " ", sample[-1] + " " + sample[-1]]
    inputs = dict(tokenizer(sample, padding=True, return_tensors="pt"))
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    try:
        torch.onnx.export(
            model, (), path, kwargs=inputs, input_names=list(inputs), output_names=["logits"], dynamo=True,
            dynamic_shapes={name: {0: batch, 1: sequence} for name in inputs}, external_data=False, verbose=False,
        )  # fmt: skip
    except Exception as error:  # the exporter's failures come as many types; say which model it could not take
        raise OnnxExportError(f"torch's ONNX exporter cannot take {_name(model)}: {type(error).__name__}: {error}") from error


def _name(model) -> str:
    return f"{type(model).__name__} (model_type '{model.config.model_type}')"
