"""Hardware cost model: prices a method spec on a GPU description.

>>> from sim.cost import predict, Shape
>>> p = predict("int8_flash", Shape(4, 32, 32, 8192, 8192, 64), "a100_80gb_sxm")
>>> sorted(p.tensor_ops)
['int8']

Tiers: ``roofline`` (pure), ``tiled`` (tile/wave/occupancy/overlap model, default) and
``calibrated`` (tiled on ``configs/hardware/measured/<name>.yaml``). See ``model`` for the
overlap model, ``kernels``/``methods`` for what is counted, ``hardware`` for the YAML schema.
"""
from .hardware import (Hardware, Quantity, UnsupportedOnHardware, apply_measured,
                       available_hardware, load_hardware)
from .model import TIERS, Prediction, overlap, predict
from .shape import Shape

__all__ = ["predict", "Prediction", "Shape", "load_hardware", "Hardware", "Quantity",
           "UnsupportedOnHardware", "apply_measured", "available_hardware", "overlap", "TIERS"]
