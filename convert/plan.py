"""Plan: one quant type per tensor, from uniform settings and the head/embedding rules.

Defaults (documented in the README): linear layers at --bits with --group, asymmetric unless --sym;
the output head at max(--bits, 6) and the token embeddings at max(--bits, 4) (llama.cpp keeps these
higher too); when the head is tied to the embeddings the one tensor takes the higher of the two;
norms and biases stay F32. Bits 16 and 32 mean plain F16 / F32 storage.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgeq import quant_types
from edgeq.config import ModelConfig
from edgeq.errors import EdgeqError
from edgeq.quant_types import QuantType

PLAIN_BITS = {16: "f16", 32: "f32"}
ALLOWED_BITS = tuple(quant_types.BITS) + tuple(PLAIN_BITS)


@dataclass
class PlanSettings:
    bits: int = 4
    group: int = 64
    symmetric: bool = False
    head_bits: int | None = None
    embed_bits: int | None = None

    def validate(self) -> None:
        for flag, value in (("--bits", self.bits), ("--head-bits", self.head_bits), ("--embed-bits", self.embed_bits)):
            if value is not None and value not in ALLOWED_BITS:
                raise EdgeqError(f"{flag} {value} is not supported; choose one of "
                                 f"{', '.join(map(str, ALLOWED_BITS))}")
        if self.group not in quant_types.GROUPS:
            raise EdgeqError(f"--group {self.group} is not supported; choose one of "
                             f"{', '.join(map(str, quant_types.GROUPS))}")

    def head(self) -> int:
        return self.head_bits if self.head_bits is not None else max(self.bits, 6)

    def embed(self) -> int:
        return self.embed_bits if self.embed_bits is not None else max(self.bits, 4)


def type_for_bits(bits: int, settings: PlanSettings) -> QuantType:
    if bits in PLAIN_BITS:
        return quant_types.TYPES[PLAIN_BITS[bits]]
    return quant_types.uniform_type(bits, settings.group, settings.symmetric)


def make_plan(config: ModelConfig, settings: PlanSettings) -> dict[str, QuantType]:
    settings.validate()
    plan = {}
    for name in config.tensor_names():
        if len(config.tensor_shape(name)) == 1:
            plan[name] = quant_types.TYPES["f32"]
        elif name == "token_embd.weight":
            bits = max(settings.head(), settings.embed()) if config.tied_embeddings else settings.embed()
            plan[name] = type_for_bits(bits, settings)
        elif name == "output.weight":
            plan[name] = type_for_bits(settings.head(), settings)
        else:
            plan[name] = type_for_bits(settings.bits, settings)
    return plan
