"""Run an exported clipforge student anywhere: onnxruntime, numpy and Pillow only (no torch).

    from clipforge_runtime import Student
    student = Student.load("student.onnx")
    student.predict(["photo.png"], top_k=3)

The student's model card travels in the ONNX file's metadata (``clipforge_model_card``): its classes, input size and
layout. Images are prepared as the job's teacher saw them (``prepare_image``: the one preprocessing, which the engine's
example images, evaluations and predictions share).
"""

from clipforge_runtime.student import UNKNOWN, Prediction, Student, StudentFileError, prepare_image, top_log_odds

__all__ = ["UNKNOWN", "Prediction", "Student", "StudentFileError", "prepare_image", "top_log_odds"]
