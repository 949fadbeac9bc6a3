"""Model sources: a Hugging Face folder, a hub id, or a llama.cpp GGUF file, normalized to one description.

Every source gives a ModelConfig, a TokenizerSpec, generation defaults, provenance, and float32
tensors by canonical name, read one at a time (safetensors by explicit file reads into arrays the
converter owns and drops, not a memory map whose touched pages stay resident; GGUF tensors
dequantized with gguf.quants) so converting never holds the whole model in memory. A GGUF source also gives the
integer grid of tensors whose ggml blocks an edgeq type holds exactly (grid_type, load_grid; see
gguf_grid), so the default conversion can keep them as they are.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edgeq.config import SUPPORTED_ARCHITECTURES, ModelConfig, TokenizerSpec, canonical_name
from edgeq.errors import EdgeqError
from edgeq.quant_types import QuantType

from . import gguf_grid
from .safetensors_io import SafetensorsFolder

_HF_MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
                   "gemma3_text": "gemma3"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SUPPORTED_TEXT = ("llama (Llama 2/3, SmolLM, TinyLlama, Mistral without sliding window), qwen2, qwen3 and "
                   "gemma3 (the text model, gemma3_text)")
GELU_TANH_NAMES = ("gelu_pytorch_tanh", "gelu_tanh")   # Hugging Face's names of the tanh-approximated gelu
DEFAULT_SLIDING_WINDOW_PATTERN = 6                     # gemma3: every 6th layer is global
DEQUANTIZE_VALUES = 1 << 22                            # a GGUF tensor is dequantized this many values at a time


class Source:
    config: ModelConfig
    tokenizer: TokenizerSpec
    generation: dict
    provenance: dict

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def load(self, name: str, rows: slice | None = None) -> np.ndarray:
        """A tensor, or a range of its rows, as float32 (converting reads big tensors in row chunks)."""
        raise NotImplementedError

    def grid_type(self, name: str) -> QuantType | None:
        """The edgeq type that holds the stored tensor exactly as the source quantized it (a GGUF
        source's ggml blocks), or None: float sources have no grid to keep."""
        return None

    def rounded_grid_type(self, name: str) -> QuantType | None:
        """The edgeq type that holds the stored tensor's levels with its scales rounded to fp16 (a GGUF
        source's Q4_K blocks), or None."""
        return None

    def check_tensors(self) -> None:
        """Every tensor the architecture needs is present with the expected shape."""
        for name in self.config.tensor_names():
            expected = self.config.tensor_shape(name)
            try:
                shape = self.shape(name)
            except KeyError:
                raise EdgeqError(f"{self.provenance['source']}: tensor {name} is missing; "
                                 "the weights do not match config") from None
            if tuple(shape) != expected:
                raise EdgeqError(f"{self.provenance['source']}: tensor {name} has shape {tuple(shape)}, "
                                 f"config says {expected}")


def open_source(spec: str | os.PathLike) -> Source:
    """A local folder, a local .gguf file, or a Hugging Face hub id ("owner/name")."""
    path = Path(spec)
    if path.is_dir():
        return HFFolderSource(path)
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            return GGUFSource(path)
        raise EdgeqError(f"{path}: not a model; give a Hugging Face folder, a hub id or a .gguf file")
    if _HUB_ID.match(str(spec)) and not str(spec).startswith((".", "/")):
        return HFFolderSource(_download_from_hub(str(spec)), source=str(spec))
    raise EdgeqError(f"{spec}: no such file or folder (and not a hub id like owner/name)")


def _download_from_hub(repo_id: str) -> Path:
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    patterns = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja"]
    try:
        return Path(huggingface_hub.snapshot_download(repo_id=repo_id, allow_patterns=patterns))
    except RepositoryNotFoundError:
        raise EdgeqError(f"{repo_id}: no such model on the Hugging Face hub (or it is gated: "
                         "run `hf auth login`)") from None
    except LocalEntryNotFoundError:
        raise EdgeqError(f"{repo_id}: not in the local Hugging Face cache and the hub cannot be reached; "
                         "connect to the network or download the folder and give its path") from None
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise EdgeqError(f"{repo_id}: could not download from the Hugging Face hub: "
                         f"{str(error).splitlines()[0]}") from None


# ---------------------------------------------------------------------------------------------
# Hugging Face folder
# ---------------------------------------------------------------------------------------------

def _read_json(path: Path, required: bool = True) -> dict:
    if not path.exists():
        if required:
            raise EdgeqError(f"{path.parent}: {path.name} is missing; a Hugging Face model folder needs it")
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EdgeqError(f"{path}: not valid JSON ({error}); re-download it") from None
    if not isinstance(value, dict):
        raise EdgeqError(f"{path}: expected a JSON object")
    return value


def _gemma3_layer_types(hf: dict, n_layers: int) -> str:
    """"s"/"g" per layer from layer_types, else from the sliding-window pattern (every Nth layer global)."""
    kinds = hf.get("layer_types")
    if kinds:
        if len(kinds) != n_layers or set(kinds) - {"sliding_attention", "full_attention"}:
            raise EdgeqError("layer_types must name sliding_attention or full_attention for every layer")
        return "".join("s" if kind == "sliding_attention" else "g" for kind in kinds)
    pattern = int(hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern")
                  or DEFAULT_SLIDING_WINDOW_PATTERN)
    return "".join("g" if (i + 1) % pattern == 0 else "s" for i in range(n_layers))


def _gemma3_fields(hf: dict, config: ModelConfig, where: str) -> dict:
    """Gemma 3's rope parameters for rope scaling (the global layers'), and its extra config fields."""
    if hf.get("use_bidirectional_attention"):
        raise EdgeqError(f"{where}: bidirectional attention is not supported")
    if hf.get("hidden_activation", hf.get("hidden_act")) not in GELU_TANH_NAMES:
        raise EdgeqError(f"{where}: gemma3 with activation {hf.get('hidden_activation')!r} is not supported "
                         f"(expected {GELU_TANH_NAMES[0]})")
    per_type = hf.get("rope_parameters") or {}
    full = per_type.get("full_attention") or {}
    sliding = per_type.get("sliding_attention") or {}
    config.rope_theta = float(full.get("rope_theta") or hf.get("rope_theta") or 1000000.0)
    config.rope_local_theta = float(sliding.get("rope_theta") or hf.get("rope_local_base_freq") or 10000.0)
    config.qk_norm = config.post_norms = True
    config.ffn_act = "gelu_tanh"
    config.embed_scale = config.dim ** 0.5
    config.attn_scale = float(hf.get("query_pre_attn_scalar") or config.head_dim) ** -0.5
    # Gemma 3 keeps attn_logit_softcapping in its config but never applies it (transformers' Gemma3
    # attention does not pass it on; llama.cpp's gemma3 graph has no score cap): neither do we.
    config.attn_softcap = 0.0
    config.final_softcap = float(hf.get("final_logit_softcapping") or 0.0)
    config.sliding_window = int(hf.get("sliding_window") or 0)
    config.layer_types = _gemma3_layer_types(hf, config.n_layers) if config.sliding_window else ""
    return hf.get("rope_scaling") or (full if full.get("rope_type", "default") != "default" else None)


def config_from_hf(hf: dict, where: str) -> ModelConfig:
    model_type = hf.get("model_type", "")
    if model_type == "gemma3" and isinstance(hf.get("text_config"), dict):
        raise EdgeqError(f"{where}: the multimodal gemma3 model is not supported; convert a text-only "
                         "Gemma 3 (model_type gemma3_text, e.g. gemma-3-270m or gemma-3-1b)")
    if model_type not in _HF_MODEL_TYPES:
        raise EdgeqError(f"{where}: architecture {model_type or 'unknown'!r} is not supported; "
                         f"supported: {_SUPPORTED_TEXT}")
    arch = _HF_MODEL_TYPES[model_type]
    try:
        dim, n_heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        n_kv_heads = int(hf.get("num_key_value_heads") or n_heads)
        max_seq_len = int(hf.get("max_position_embeddings", 2048))
        if hf.get("sliding_window") and (arch in ("qwen2", "qwen3") and hf.get("use_sliding_window")
                                         or arch == "llama" and int(hf["sliding_window"]) < max_seq_len):
            raise EdgeqError(f"{where}: sliding-window attention is not supported for {arch}")
        if arch != "gemma3" and hf.get("hidden_act", "silu") != "silu" or hf.get("mlp_bias"):
            raise EdgeqError(f"{where}: only SwiGLU (silu) MLPs without bias are supported")
        config = ModelConfig(
            arch=arch,
            vocab_size=int(hf["vocab_size"]),
            dim=dim,
            hidden_dim=int(hf["intermediate_size"]),
            n_layers=int(hf["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=int(hf.get("head_dim") or dim // n_heads),
            max_seq_len=max_seq_len,
            rope_theta=float(hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tied_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attn_bias=arch == "qwen2" or bool(hf.get("attention_bias", False)),
            qk_norm=arch == "qwen3",
        )
        scaling = hf.get("rope_scaling") or hf.get("rope_parameters")   # transformers 5 writes rope_parameters
        if arch == "gemma3":
            scaling = _gemma3_fields(hf, config, where)
    except (KeyError, TypeError, ValueError) as error:
        raise EdgeqError(f"{where}: config.json lacks or has an invalid {error}") from None
    if scaling:
        kind = scaling.get("rope_type") or scaling.get("type")
        if kind == "linear":
            config.rope_scaling_type, config.rope_scaling_factor = "linear", float(scaling["factor"])
        elif kind == "llama3":
            config.rope_scaling_type = "llama3"
            config.rope_scaling_factor = float(scaling["factor"])
            config.rope_low_freq_factor = float(scaling.get("low_freq_factor", 1.0))
            config.rope_high_freq_factor = float(scaling.get("high_freq_factor", 4.0))
            config.rope_original_max_seq_len = int(scaling["original_max_position_embeddings"])
        elif kind != "default":
            raise EdgeqError(f"{where}: rope scaling {kind!r} is not supported; supported: linear, llama3")
    if config.n_heads % config.n_kv_heads or min(config.dim, config.n_layers, config.vocab_size, config.head_dim) <= 0:
        raise EdgeqError(f"{where}: inconsistent dimensions in config.json")
    return config


def _token_content(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def tokenizer_from_hf(folder: Path) -> TokenizerSpec:
    tokenizer_config = _read_json(folder / "tokenizer_config.json", required=False)
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: take the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if (folder / "chat_template.jinja").exists():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    bos, eos = _token_content(tokenizer_config.get("bos_token")), _token_content(tokenizer_config.get("eos_token"))
    if (folder / "tokenizer.json").exists():
        from tokenizers import Tokenizer
        text = (folder / "tokenizer.json").read_text(encoding="utf-8")
        try:
            tokenizer = Tokenizer.from_str(text)
        except Exception as error:  # tokenizers raises its own exception type
            raise EdgeqError(f"{folder / 'tokenizer.json'}: cannot be loaded ({error})") from None
        lookup = tokenizer.token_to_id
        spec = TokenizerSpec("hf-json", text)
    elif (folder / "tokenizer.model").exists():
        import sentencepiece
        data = (folder / "tokenizer.model").read_bytes()
        try:
            processor = sentencepiece.SentencePieceProcessor(model_proto=data)
        except Exception as error:
            raise EdgeqError(f"{folder / 'tokenizer.model'}: not a sentencepiece model ({error})") from None
        lookup = lambda piece: (None if processor.piece_to_id(piece) == processor.unk_id() else processor.piece_to_id(piece))
        spec = TokenizerSpec("sentencepiece", data)
        spec.add_bos = bool(tokenizer_config.get("add_bos_token", True))
    else:
        raise EdgeqError(f"{folder}: no tokenizer (tokenizer.json or tokenizer.model); copy it from the "
                         "original model into this folder")
    spec.bos_id = lookup(bos) if bos else None
    spec.eos_id = lookup(eos) if eos else None
    pad, unk = _token_content(tokenizer_config.get("pad_token")), _token_content(tokenizer_config.get("unk_token"))
    spec.pad_id = lookup(pad) if pad else None
    spec.unk_id = lookup(unk) if unk and spec.kind == "hf-json" else None
    if spec.kind == "sentencepiece" and processor.unk_id() >= 0:
        spec.unk_id = processor.unk_id()
    spec.add_bos = bool(tokenizer_config.get("add_bos_token", spec.add_bos))
    spec.chat_template = template
    return spec


class HFFolderSource(Source):
    def __init__(self, folder: Path, source: str | None = None):
        folder = Path(folder)
        hf = _read_json(folder / "config.json")
        self.config = config_from_hf(hf, str(folder))
        self.weights = SafetensorsFolder(folder)
        self.names = {}
        for name in self.weights.names():
            canonical = canonical_name(name, self.config.arch)
            if canonical:
                self.names[canonical] = name
        if "output.weight" not in self.names:
            self.config.tied_embeddings = True
        elif self.config.tied_embeddings:
            del self.names["output.weight"]   # some checkpoints store the tied copy anyway
        self.tokenizer = tokenizer_from_hf(folder)
        self.generation = _read_json(folder / "generation_config.json", required=False)
        eos = self.generation.get("eos_token_id")
        eos_list = eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else []
        if self.tokenizer.eos_id is None and eos_list:
            self.tokenizer.eos_id = eos_list[0]
        self.tokenizer.extra_eos_ids = [e for e in eos_list if e != self.tokenizer.eos_id]
        if self.tokenizer.bos_id is None and isinstance(hf.get("bos_token_id"), int):
            self.tokenizer.bos_id = hf["bos_token_id"]
        self.provenance = {"source": source or str(folder), "source_kind": "hf-hub" if source else "hf-folder"}
        self.check_tensors()

    def shape(self, name):
        return self.weights.shape(self.names[name])

    def load(self, name, rows=None):
        weight = self.weights.load(self.names[name], rows)
        if self.config.arch == "gemma3" and name.endswith("norm.weight"):
            weight = weight + np.float32(1.0)   # Gemma's RMSNorm multiplies by (1 + weight): stored with the 1 added
        return weight


# ---------------------------------------------------------------------------------------------
# llama.cpp GGUF file
# ---------------------------------------------------------------------------------------------

def _unpermute_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (interleaved RoPE pairs -> Hugging Face halves)."""
    rows = weight.shape[0]
    return (weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def llama3_parameters(factors: np.ndarray, theta: float, head_dim: int) -> tuple[float, float, float, int] | None:
    """(factor, low_freq_factor, high_freq_factor, original length) of Hugging Face's llama3 rope
    scaling that give `factors` (head_dim/2 values llama.cpp divides each frequency by), or None.

    Frequency i of wavelength w_i keeps factor 1 below old/high, takes `factor` above old/low, and in
    between 1/f = (1 - s)/factor + s with s = old/((high - low)·w) − low/(high − low), continuous at
    both ends: the factors fix `factor` and that line in 1/w, so the three others only up to a common
    scale (chosen here to make the original length an integer)."""
    f = factors.astype(np.float64)
    factor = float(f.max())
    if factor <= 1.0 or f.min() < 1.0 - 1e-6:
        return None
    inverse_wavelength = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim) / (2 * np.pi)
    one, full = np.isclose(f, 1.0, rtol=1e-6, atol=0), np.isclose(f, factor, rtol=1e-6, atol=0)
    between = ~one & ~full
    points = [(x, (1 / y - 1 / factor) / (1 - 1 / factor)) for x, y in zip(inverse_wavelength[between], f[between])]
    if len(points) >= 2:
        x, s = np.array(points).T
        slope, intercept = np.linalg.lstsq(np.stack([x, np.ones_like(x)], axis=1), s, rcond=None)[0]
    else:
        # fewer than two frequencies in between: the line is not fixed, only bounded (s > 1 where the
        # factor is 1, s < 0 where it is `factor`, a negative intercept); one well inside the bounds
        x_one = inverse_wavelength[one].min() if one.any() else None       # the longest wavelength kept
        x_full = inverse_wavelength[full].max()                             # the shortest one scaled
        if points:
            (x, s), = points
            bounds = [s / x, s / (x - x_full)] + ([(1 - s) / (x_one - x)] if x_one is not None else [])
            slope = 2 * max(bounds)
            intercept = s - slope * x
        elif x_one is not None:                         # through (x_full, -1/2) and (x_one, 3/2)
            slope = 2 / (x_one - x_full)
            intercept = -0.5 - slope * x_full
        else:
            slope, intercept = 0.5 / x_full, -1.0
    return _llama3_line(slope, intercept, factor, factors, theta, head_dim)


def _llama3_line(slope: float, intercept: float, factor: float, factors: np.ndarray, theta: float,
                 head_dim: int) -> tuple[float, float, float, int] | None:
    """llama3_parameters for s = slope·(1/w) + intercept (slope = old/(high − low), intercept =
    −low/(high − low)), if they give `factors`."""
    from .export_gguf import llama3_rope_factors
    if not slope > 0 or not intercept < 0:
        return None
    old = max(1, int(round(slope / -intercept)))                 # low = 1 up to rounding
    scale = old / slope
    low, high = -intercept * scale, (1 - intercept) * scale
    # the simplest numbers that give the factors (configs use short decimals: 1.0, 4.0, 8192)
    for digits in [*range(7), None]:
        found = (round(factor, digits), round(low, digits), round(high, digits), old) if digits is not None \
            else (factor, float(low), float(high), old)
        probe = SimpleNamespace(rope_theta=theta, head_dim=head_dim, rope_scaling_factor=found[0],
                                rope_low_freq_factor=found[1], rope_high_freq_factor=found[2],
                                rope_original_max_seq_len=found[3])
        if 0 < found[1] < found[2] and np.allclose(llama3_rope_factors(probe), factors, rtol=1e-6, atol=0):
            return found
    return None


class GGUFSource(Source):
    def __init__(self, path: Path):
        import gguf
        self.path = Path(path)
        try:
            self.reader = gguf.GGUFReader(self.path)
        except Exception:  # the reader raises ValueError, IndexError, ... on corrupt files
            raise EdgeqError(f"{path}: not a valid GGUF file (truncated or corrupted); re-download it") from None
        size = self.path.stat().st_size
        self.tensors = {}
        for tensor in self.reader.tensors:
            if tensor.data_offset + tensor.n_bytes > size or tensor.data.nbytes != tensor.n_bytes:
                raise EdgeqError(f"{path}: tensor {tensor.name} lies outside the file (truncated); re-download it")
            self.tensors[tensor.name] = tensor
        arch = self._field("general.architecture")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise EdgeqError(f"{path}: architecture {arch!r} is not supported; supported: {_SUPPORTED_TEXT}")
        self.config = self._config(arch)
        if "rope_freqs.weight" in self.tensors:
            self._llama3_scaling(self.tensors.pop("rope_freqs.weight"))
        from .gguf_tokenizer import tokenizer_spec_from_gguf
        self.tokenizer = tokenizer_spec_from_gguf(self.reader)
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                    "tokenizer.ggml.scores"):
            self.reader.fields.pop(key, None)    # gguf-py keeps ~1 KB of objects per entry: free them
        self.generation = {}
        self.provenance = {"source": str(path), "source_kind": "gguf",
                           "source_name": self._field("general.name", "")}
        self.check_tensors()

    def _field(self, key, default=None):
        field = self.reader.fields.get(key)
        if field is None:
            return default
        try:
            return field.contents()
        except Exception:
            raise EdgeqError(f"{self.path}: metadata {key} is corrupted; re-download it") from None

    def _config(self, arch: str) -> ModelConfig:
        def need(key):
            value = self._field(f"{arch}.{key}")
            if value is None:
                raise EdgeqError(f"{self.path}: metadata {arch}.{key} is missing")
            return value
        dim, n_heads = int(need("embedding_length")), int(need("attention.head_count"))
        tokens = self.reader.fields.get("tokenizer.ggml.tokens")
        vocab = self._field(f"{arch}.vocab_size") or (len(tokens.data) if tokens else None)
        if vocab is None:
            raise EdgeqError(f"{self.path}: vocabulary size unknown (no tokenizer)")
        config = ModelConfig(
            arch=arch,
            vocab_size=int(vocab),
            dim=dim,
            hidden_dim=int(need("feed_forward_length")),
            n_layers=int(need("block_count")),
            n_heads=n_heads,
            n_kv_heads=int(self._field(f"{arch}.attention.head_count_kv") or n_heads),
            head_dim=int(self._field(f"{arch}.attention.key_length") or dim // n_heads),
            max_seq_len=int(self._field(f"{arch}.context_length") or 2048),
            rope_theta=float(self._field(f"{arch}.rope.freq_base") or 10000.0),
            norm_eps=float(need("attention.layer_norm_rms_epsilon")),
            tied_embeddings="output.weight" not in self.tensors,
            attn_bias="blk.0.attn_q.bias" in self.tensors,
            qk_norm="blk.0.attn_q_norm.weight" in self.tensors,
        )
        if arch == "gemma3":
            self._gemma3_config(config)
        scaling = self._field(f"{arch}.rope.scaling.type")
        if scaling == "linear":
            config.rope_scaling_type = "linear"
            config.rope_scaling_factor = float(need("rope.scaling.factor"))
        elif scaling not in (None, "none"):
            raise EdgeqError(f"{self.path}: rope scaling {scaling!r} is not supported; supported: linear")
        return config

    def _llama3_scaling(self, tensor) -> None:
        """Llama 3 rope scaling from llama.cpp's rope_freqs tensor (what convert_hf_to_gguf.py and
        `edgeq export` write instead of the four numbers): the numbers found, checked to give the
        tensor's factors again."""
        import gguf
        config = self.config
        refuse = lambda why: EdgeqError(f"{self.path}: the rope_freqs tensor {why}; convert from the Hugging "
                                        "Face folder instead")
        if (config.arch != "llama" or tensor.tensor_type != gguf.GGMLQuantizationType.F32
                or tensor.data.size != config.head_dim // 2 or config.rope_scaling_type != "none"):
            raise refuse("is not Llama 3 scaling of this model (F32, head_dim/2 values, no other scaling)")
        factors = np.asarray(tensor.data, np.float32).reshape(-1)
        if np.all(factors == 1.0):
            return                                          # no scaling
        found = llama3_parameters(factors, config.rope_theta, config.head_dim)
        if found is None:
            raise refuse("does not hold Llama 3 scaling factors")
        config.rope_scaling_type = "llama3"
        (config.rope_scaling_factor, config.rope_low_freq_factor, config.rope_high_freq_factor,
         config.rope_original_max_seq_len) = found

    def _gemma3_config(self, config: ModelConfig) -> None:
        """What llama.cpp's gemma3 graph takes from the metadata or fixes in code: the norms are
        stored with Gemma's 1 added already (convert_hf_to_gguf adds it), every sixth layer is
        global unless the file says otherwise, sliding layers use RoPE base 10000, and attention is
        scaled by 1/sqrt(head_dim) (by 1/sqrt(dim / n_heads) for the 62-layer 27B)."""
        config.post_norms = "blk.0.post_ffw_norm.weight" in self.tensors
        config.ffn_act = "gelu_tanh"
        config.embed_scale = config.dim ** 0.5
        query_scalar = config.dim / config.n_heads if config.n_layers == 62 else config.head_dim
        config.attn_scale = float(query_scalar) ** -0.5
        config.attn_softcap = 0.0   # Gemma 3 applies no score cap (see _gemma3_fields)
        config.final_softcap = float(self._field("gemma3.final_logit_softcapping") or 0.0)
        config.sliding_window = int(self._field("gemma3.attention.sliding_window") or 0)
        if config.sliding_window:
            pattern = int(self._field("gemma3.attention.sliding_window_pattern") or DEFAULT_SLIDING_WINDOW_PATTERN)
            config.layer_types = "".join("g" if (i + 1) % pattern == 0 else "s" for i in range(config.n_layers))
            config.rope_local_theta = float(self._field("gemma3.rope.freq_base_swa") or 10000.0)

    def shape(self, name):
        return tuple(int(d) for d in reversed(self.tensors[name].shape))

    def _permuted(self, name) -> bool:
        return self.config.arch == "llama" and name.split(".")[-2] in ("attn_q", "attn_k")

    def _unpermute(self, name, array: np.ndarray) -> np.ndarray:
        return _unpermute_rows(array, self.config.n_heads if "attn_q" in name else self.config.n_kv_heads)

    # -- the source's own grid (convert.gguf_grid): llama.cpp blocks an edgeq type holds exactly --

    def grid_type(self, name: str) -> QuantType | None:
        """The edgeq type that holds this tensor's ggml blocks exactly, or None."""
        shape = self.shape(name)
        if len(shape) != 2 or shape[1] % gguf_grid.BLOCK:
            return None
        return gguf_grid.edgeq_type(self.tensors[name].tensor_type)

    def rounded_grid_type(self, name: str) -> QuantType | None:
        """The edgeq type that holds this tensor's K-quant levels with fp16-rounded group scales
        (gguf_grid.read_rounded: Q4_K as u4g32a), or None."""
        shape = self.shape(name)
        if len(shape) != 2 or shape[1] % gguf_grid.BLOCK:
            return None
        return gguf_grid.rounded_type(self.tensors[name].tensor_type)

    def grid_is_exact(self, name: str) -> bool:
        """Every block of the tensor reads back bit-exactly against gguf.quants (checked in row chunks)."""
        tensor, (rows, cols) = self.tensors[name], self.shape(name)
        step = max(1, (1 << 22) // cols)
        return all(gguf_grid.matches_gguf(tensor.tensor_type, tensor.data[start:start + step], cols)
                   for start in range(0, rows, step))

    def load_grid(self, name: str, rows: slice | None = None):
        """Levels (M, K) uint8, scales and mins (M, K/32; None without m) fp16 of a tensor with a grid_type
        or a rounded_grid_type, rows in Hugging Face order (the q/k permutation undone, as load does)."""
        tensor, cols = self.tensors[name], self.shape(name)[1]
        data = tensor.data if rows is None or self._permuted(name) else tensor.data[rows]
        read = gguf_grid.read_rounded if gguf_grid.rounded_type(tensor.tensor_type) else gguf_grid.read_blocks
        grid = read(tensor.tensor_type, data, cols)
        if self._permuted(name):
            grid = tuple(None if part is None else self._unpermute(name, part) for part in grid)
            if rows is not None:
                grid = tuple(None if part is None else part[rows] for part in grid)
        return grid

    def load(self, name, rows=None):
        import gguf
        tensor = self.tensors[name]
        shape = self.shape(name)
        permuted = self._permuted(name)
        data = tensor.data
        if rows is not None and not permuted and len(shape) == 2:
            data, shape = data[rows], (len(range(*rows.indices(shape[0]))), shape[1])
        try:
            if len(shape) == 2:     # gguf.quants' temporaries are several times the float32 result:
                weight = np.empty(shape, dtype=np.float32)             # dequantize a row chunk at a time
                step = max(1, DEQUANTIZE_VALUES // shape[1])
                for start in range(0, shape[0], step):
                    part = gguf.quants.dequantize(data[start:start + step], tensor.tensor_type)
                    weight[start:start + step] = np.asarray(part, dtype=np.float32).reshape(-1, shape[1])
            else:
                weight = np.asarray(gguf.quants.dequantize(data, tensor.tensor_type), dtype=np.float32).reshape(shape)
        except NotImplementedError:
            raise EdgeqError(f"{self.path}: tensor {name} has GGUF type {tensor.tensor_type.name}, which "
                             "gguf.quants cannot dequantize") from None
        if permuted:   # q/k rows are mixed within each head: undo on the whole tensor, then slice
            weight = self._unpermute(name, weight)
            if rows is not None:
                weight = weight[rows]
        return weight
