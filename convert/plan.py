"""Plan: one quant type per tensor, from uniform settings and the head/embedding rules, keeping a
llama.cpp source's own grid where an edgeq type holds it exactly.

Defaults (documented in the README): linear layers at --bits (4) with --group (64; 32 at 2-3 bits), asymmetric
unless --sym; the output head at max(--bits, 6) and the token embeddings at max(--bits, 4)
(llama.cpp keeps these higher too); when the head is tied to the embeddings the one tensor takes the
higher of the two; norms and biases stay F32. Bits 16 and 32 mean plain F16 / F32 storage.
A tensor whose type no flag sets keeps its source grid when the source has one (a GGUF tensor in
Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0: convert.gguf_grid) and every block of it reads back exactly; any
other tensor takes the type above. So `edgeq convert model.Q4_1.gguf -o out` is lossless for the
Q4_1 tensors, and an explicit --bits/--group/--sym re-quantizes every linear layer as asked.

Layout (--layout): each uniform tensor is stored as bit-planes (u*g*, the LUT kernels: cost grows
with the bits) or as packed levels (p*g*, the int8 multiply-add kernels: cost per weight), the same
numbers either way, at the same size. auto = packed at the widths in AUTO_PACKED_BITS (every
width), where multiply-add decodes faster (measured: benchmarks/README.md "Two ways to multiply",
"4 bits packed by default", "Packed at every width"); bitplane / packed force one. codebook stores every 4-bit tensor as c4g<G><a|s> (4-bit indices
into 16 levels learned per 16 rows, convert.codebook; the multiply-add kernels), every 2-bit tensor as
v2g<G>s (a 4-bit index per pair of weights into 16 2-D centroids per 16 rows; groups of 64 unless
--group 128, scale only) and the other widths as auto does. The choice is per tensor and recorded by its type's name.
A kept source grid stays bit-planes under auto: the LUT path multiplies float activations (SmolLM2's
Q4_1 GGUF converted by default follows its source to KL 1e-6), where int8 activations on its Q8_0
head measured KL 8.7e-4 and 98 % top-1 agreement (tests/test_gguf_grid.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from edgeq import quant_types
from edgeq.config import ModelConfig
from edgeq.errors import EdgeqError
from edgeq.quant_types import QuantType

PLAIN_BITS = {16: "f16", 32: "f32"}
ALLOWED_BITS = tuple(quant_types.BITS) + tuple(PLAIN_BITS)
DEFAULT_BITS, DEFAULT_GROUP = 4, 64
# at 2-3 bits a group's scale and min matter more than the bytes they cost: measured on SmolLM2 with
# gptq at 3 bits (benchmarks/README.md), groups of 32 give ppl +29 % over float against +52 % for 64
LOW_BITS, LOW_BITS_GROUP = 3, 32
LAYOUTS = ("auto", "bitplane", "packed", "codebook")
# --layout auto stores a tensor as packed levels at these widths (benchmarks/README.md "4 bits packed
# by default", "Packed at every width"): multiply-add wins at 8 bits, at 4 on Zen 3 avx2 (Qwen2.5-0.5B
# decode 1.12-1.53x, prefill 1.02-1.48x the bit-plane file's; SmolLM2 level to 1.3x) for +0.5 % /
# -0.1 % perplexity (int8 activations), and since 2-6-bit levels are stored as bit fields (no larger
# than bit-planes) at 2, 3, 5 and 6 too: SmolLM2 decode 1.2-1.4x the bit-plane file's at 2-3 bits,
# kernels 1.6-2x at 5-6, 3-bit gptq perplexity +0.15 %
AUTO_PACKED_BITS = quant_types.BITS
CODEBOOK_LAYOUT_BITS = quant_types.CODEBOOK_BITS + (quant_types.VECTOR_BITS,)   # --layout codebook: c4, v2


@dataclass
class PlanSettings:
    bits: int | None = None        # None: DEFAULT_BITS where the source has no exact grid to keep
    group: int | None = None       # None: DEFAULT_GROUP, or LOW_BITS_GROUP at <= LOW_BITS bits
    symmetric: bool = False
    head_bits: int | None = None
    embed_bits: int | None = None
    layout: str = "auto"           # LAYOUTS: how uniform tensors are stored (module docstring)

    def validate(self) -> None:
        if self.layout not in LAYOUTS:
            raise EdgeqError(f"--layout {self.layout} is not supported; choose one of {', '.join(LAYOUTS)}")
        if self.layout == "codebook" and self.linear() not in CODEBOOK_LAYOUT_BITS:
            raise EdgeqError(f"--layout codebook stores {' and '.join(map(str, CODEBOOK_LAYOUT_BITS))}-bit "
                             f"types, not --bits {self.linear()}")
        if (self.layout == "codebook" and self.linear() == quant_types.VECTOR_BITS and self.group is not None
                and self.group not in quant_types.VECTOR_GROUPS):
            raise EdgeqError(f"--layout codebook at 2 bits takes --group "
                             f"{' or '.join(map(str, quant_types.VECTOR_GROUPS))}, not {self.group}")
        for flag, value in (("--bits", self.bits), ("--head-bits", self.head_bits), ("--embed-bits", self.embed_bits)):
            if value is not None and value not in ALLOWED_BITS:
                raise EdgeqError(f"{flag} {value} is not supported; choose one of "
                                 f"{', '.join(map(str, ALLOWED_BITS))}")
        if self.group is not None and self.group not in quant_types.GROUPS:
            raise EdgeqError(f"--group {self.group} is not supported; choose one of "
                             f"{', '.join(map(str, quant_types.GROUPS))}")

    def linear(self) -> int:
        return self.bits if self.bits is not None else DEFAULT_BITS

    def group_size(self) -> int:
        if self.group is not None:
            return self.group
        if self.layout == "codebook" and self.linear() == quant_types.VECTOR_BITS:
            return quant_types.VECTOR_GROUPS[0]      # v2 types exist at 64 and 128
        return LOW_BITS_GROUP if self.linear() <= LOW_BITS else DEFAULT_GROUP

    def head(self) -> int:
        return self.head_bits if self.head_bits is not None else max(self.linear(), 6)

    def embed(self) -> int:
        return self.embed_bits if self.embed_bits is not None else max(self.linear(), 4)

    def sets_type_of(self, name: str, config: ModelConfig) -> bool:
        """Whether a flag chooses this tensor's type (then a source grid is not kept)."""
        linear_flags = self.bits is not None or self.group is not None or self.symmetric or self.layout == "codebook"
        if name == "output.weight":
            return linear_flags or self.head_bits is not None
        if name == "token_embd.weight":
            return linear_flags or self.embed_bits is not None or (config.tied_embeddings and self.head_bits is not None)
        return linear_flags

    def family_for(self, bits: int) -> str:
        """The family a tensor of `bits` bits is stored in under --layout."""
        if self.layout == "codebook" and bits in CODEBOOK_LAYOUT_BITS:
            return quant_types.CODEBOOK
        packed = {"auto": bits in AUTO_PACKED_BITS, "bitplane": False, "packed": True,
                  "codebook": bits in AUTO_PACKED_BITS}[self.layout]
        return quant_types.UNIFORM_PACKED if packed else quant_types.UNIFORM_BITPLANE


def type_for_bits(bits: int, settings: PlanSettings) -> QuantType:
    if bits in PLAIN_BITS:
        return quant_types.TYPES[PLAIN_BITS[bits]]
    family = settings.family_for(bits)
    if family == quant_types.CODEBOOK and bits == quant_types.VECTOR_BITS:   # scale only; G 64 or 128
        return quant_types.codebook_type(bits, settings.group_size(), True)
    if family == quant_types.CODEBOOK:
        return quant_types.codebook_type(bits, settings.group_size(), settings.symmetric)
    return quant_types.uniform_type(bits, settings.group_size(), settings.symmetric, family)


def make_plan(config: ModelConfig, settings: PlanSettings) -> dict[str, QuantType]:
    """The type of every tensor from the settings alone (no source grid)."""
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
            plan[name] = type_for_bits(settings.linear(), settings)
    return plan


def source_grids(source, settings: PlanSettings) -> tuple[dict[str, QuantType], dict[str, str]]:
    """(tensors that keep the source's grid -> their exact edgeq type, tensors that have such a
    grid but cannot keep it -> why). Reads and checks every candidate tensor's blocks."""
    kept, refused = {}, {}
    for name in source.config.tensor_names():
        qtype = source.grid_type(name)
        if qtype is None or settings.sets_type_of(name, source.config):
            continue
        if source.grid_is_exact(name):      # the same numbers; bit-planes unless --layout says otherwise
            kept[name] = qtype if settings.layout == "auto" else quant_types.with_family(qtype, settings.family_for(qtype.bits))
        else:
            refused[name] = f"its source grid does not fit {qtype.name} exactly (a value is not finite)"
    return kept, refused
