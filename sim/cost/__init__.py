"""Hardware cost model: prices a method spec on a GPU description.

>>> from sim.cost import predict, Shape
>>> p = predict("int8_flash", Shape(4, 32, 32, 8192, 8192, 64), "a100_80gb_sxm")
>>> sorted(p.tensor_ops)
['int8']
>>> round(speedup("int8_flash", Shape(4, 32, 32, 8192, 8192, 64), "a100_80gb_sxm").value, 2)
0.93

``phase`` is inferred from the shape when not given: ``q_len == 1`` is a decode step.

Tiers: ``roofline`` (pure), ``tiled`` (tile/wave/occupancy/overlap model, default),
``pipeline`` (the counted SASS of the kernel that would run, on datasheet values) and
``calibrated`` (the same on ``configs/hardware/measured/<name>.yaml``). ``predict_foreign``
prices a described foreign kernel (``configs/kernels/foreign/``) from its counted SASS. See
``model`` for the overlap model, ``kernels``/``methods`` for what is counted, ``hardware`` for the YAML schema.
"""
from .hardware import (Hardware, Quantity, UnsupportedOnHardware, apply_measured,
                       available_hardware, load_hardware)
from .model import PHASES, TIERS, Prediction, infer_phase, overlap, predict, predict_foreign
from .shape import Shape
from .speedup import Speedup, speedup

__all__ = ["predict", "predict_foreign", "speedup", "Speedup", "Prediction", "Shape",
           "infer_phase", "load_hardware", "Hardware", "Quantity", "UnsupportedOnHardware",
           "apply_measured", "available_hardware", "overlap", "TIERS", "PHASES"]
