"""Choosing the next token from logits, in numpy, the way llama.cpp's default sampler chain does.

Order (llama.cpp's common sampler): penalties over the last `repeat_last_n` tokens (repetition, then
OpenAI's frequency and presence penalties, as llama.cpp's penalties sampler does), top-k,
top-p, min-p, temperature, then a draw from the remaining distribution. top-k/top-p/min-p look at
the untempered distribution; temperature only reshapes what survives them. Temperature 0 is greedy
(argmax after the penalty). A seed makes the draws reproducible (numpy's PCG64 Generator); no seed
draws one from the OS. Not here: grammars, DRY, mirostat, or logit biases.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Sequence

import numpy as np

DEFAULT_MAX_TOKENS = 512     # generate()/chat() and the CLI: tokens per answer unless told otherwise


@dataclass
class SamplingParams:
    """llama.cpp's defaults (common_params_sampling), which its users already know."""
    temperature: float = 0.8
    top_k: int = 40              # <= 0: off
    top_p: float = 0.95          # >= 1: off
    min_p: float = 0.05          # <= 0: off; keeps tokens with p >= min_p * p_max
    repeat_penalty: float = 1.0  # 1: off; > 1 makes tokens of the last repeat_last_n tokens less likely
    frequency_penalty: float = 0.0   # 0: off; subtracted from a logit once per occurrence in the window
    presence_penalty: float = 0.0    # 0: off; subtracted once from the logit of every token in the window
    repeat_last_n: int = 64
    seed: int | None = None

    def validate(self) -> "SamplingParams":
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if not np.isfinite(self.repeat_penalty) or self.repeat_penalty <= 0:
            raise ValueError(f"repeat_penalty must be > 0, got {self.repeat_penalty}")
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not np.isfinite(value) or not -2.0 <= value <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {value}")
        if self.repeat_last_n < 0:
            raise ValueError(f"repeat_last_n must be >= 0, got {self.repeat_last_n}")
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        return self

    def replace(self, **changes) -> "SamplingParams":
        """A copy with the given fields changed; None values keep the current one."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"unknown sampling parameter(s): {', '.join(sorted(unknown))}")
        values = asdict(self)
        values.update({k: v for k, v in changes.items() if v is not None})
        return SamplingParams(**values)


def apply_repeat_penalty(logits: np.ndarray, history: Sequence[int], penalty: float, last_n: int,
                         frequency: float = 0.0, presence: float = 0.0) -> np.ndarray:
    """llama.cpp's penalties over the last `last_n` tokens, once per distinct token: the repetition
    penalty divides positive logits and multiplies negative ones; then count * frequency + presence
    is subtracted (OpenAI's frequency and presence penalties)."""
    if (penalty == 1.0 and frequency == 0.0 and presence == 0.0) or last_n == 0 or not len(history):
        return logits
    recent, counts = np.unique(np.asarray(history[-last_n:], dtype=np.int64), return_counts=True)
    inside = (recent >= 0) & (recent < len(logits))
    recent, counts = recent[inside], counts[inside]
    logits = logits.copy()
    values = logits[recent]
    if penalty != 1.0:
        values = np.where(values > 0, values / penalty, values * penalty)
    logits[recent] = values - counts * frequency - presence
    return logits


def candidates(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """The support after top-k, top-p and min-p: (ids, their untempered logits), most likely first."""
    logits = np.asarray(logits, dtype=np.float64)
    vocab = len(logits)
    k = params.top_k if 0 < params.top_k < vocab else vocab
    if k < vocab:
        ids = np.argpartition(-logits, k - 1)[:k]
    else:
        ids = np.arange(vocab)
    ids = ids[np.argsort(-logits[ids], kind="stable")]
    values = logits[ids]
    if params.top_p < 1.0:
        probs = np.exp(values - values[0])
        probs /= probs.sum()
        # keep the smallest prefix whose mass reaches top_p (at least one token)
        keep = int(np.searchsorted(np.cumsum(probs), params.top_p, side="left")) + 1
        ids, values = ids[:keep], values[:keep]
    if params.min_p > 0.0:
        keep = values >= values[0] + np.log(params.min_p)
        ids, values = ids[keep], values[keep]
    return ids, values


class Sampler:
    """One generation's sampler: holds the random generator, so a seed reproduces the whole run."""

    def __init__(self, params: SamplingParams):
        self.params = params.validate()
        self.rng = np.random.default_rng(params.seed)

    def probabilities(self, logits: np.ndarray, history: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """(ids, probabilities) the next token is drawn from; for greedy, the argmax with p = 1."""
        p = self.params
        logits = apply_repeat_penalty(np.asarray(logits, dtype=np.float32), history, p.repeat_penalty,
                                      p.repeat_last_n, p.frequency_penalty, p.presence_penalty)
        if p.temperature == 0:
            return np.array([int(np.argmax(logits))]), np.ones(1)
        ids, values = candidates(logits, p)
        scaled = (values - values[0]) / p.temperature
        probs = np.exp(scaled)
        return ids, probs / probs.sum()

    def sample(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        ids, probs = self.probabilities(logits, history)
        if len(ids) == 1:
            return int(ids[0])
        return int(ids[min(int(np.searchsorted(np.cumsum(probs), self.rng.random() * probs.sum(), side="right")),
                           len(ids) - 1)])
