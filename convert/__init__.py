"""The converter: model sources, plan, quantizers, and the pipeline that writes an edgeq file."""
from .calibrate import MethodSettings
from .convert import AllocationSettings, ConvertReport, convert
from .plan import PlanSettings

__all__ = ["convert", "AllocationSettings", "ConvertReport", "MethodSettings", "PlanSettings"]
