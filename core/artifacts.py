"""File names of a job's and an evaluation's artifacts: torch-free, so that the API can name them without the engine."""

from __future__ import annotations

ONNX_FILE = "student.onnx"
INT8_ONNX_FILE = "student.int8.onnx"
TORCHSCRIPT_FILE = "student.torchscript.pt"
OPENVINO_XML_FILE = "student.openvino.xml"  # OpenVINO IR: the graph; its weights are the .bin of the same name beside it
OPENVINO_BIN_FILE = "student.openvino.bin"
TFLITE_FILE = "student.tflite"  # batch 1, resizable; input and output as the ONNX file's
CARD_FILE = "model_card.json"
SAMPLES_FILE = "samples.png"
METRICS_FILE = "metrics.json"

# An evaluation's artifacts (worker.evaluation).
CONFUSION_FILE = "confusion.png"
MISTAKES_FILE = "mistakes.png"
EVALUATION_FILE = "evaluation.json"
