"""lm-evaluation-harness against `edgeq serve`, offline: a small multiple-choice task built here from
a public-domain text, run by the harness's `local-completions` model over HTTP, and checked against
the same log-likelihoods computed with edgeq's Python API.

The task (edgeq_botchan_cloze): sentences of *Botchan* (Project Gutenberg #8868, the shipped
evaluation text) with their last four words cut off; the choices are the true ending and the endings
of three other sentences (fixed seed). acc: the choice with the highest log-likelihood is the true
one (chance 25 %); acc_norm: the same per character of the choice. The harness sends loglikelihood
requests as token ids with echo, max_tokens 1, logprobs 1, and gets its tokenizer from the server's
/tokenize (tokenizer_backend=remote), so nothing is downloaded.

    python benchmarks/eval_harness.py [MODEL] [--items 120] [--lm-eval PATH] [--parallel 2] [--json OUT]

lm-evaluation-harness need not be in this environment: `--lm-eval` names its `lm_eval` executable
(default: the one on PATH), for example one installed with `python -m venv h && h/bin/pip install lm-eval`.
Not here: generation tasks, or tasks from the hub.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TASK = "edgeq_botchan_cloze"
ENDING_WORDS = 4
CHOICES = 4


def sentences(text: str) -> list[str]:
    """Sentences of the novel's body (after the translator's note, before Gutenberg's license), one
    line each, 12 to 40 words, plain ASCII."""
    body = text[text.index("CHAPTER I\n"):text.index("End of Project Gutenberg")]
    body = re.sub(r"\s+", " ", body)
    found = re.split(r"(?<=[.!?])\s+(?=[A-Z\"])", body)
    return [s.strip() for s in found if 12 <= len(s.split()) <= 40 and s.isascii() and "CHAPTER" not in s]


def build_items(text: str, count: int, seed: int = 0) -> list[dict]:
    """`count` cloze items spread evenly over the novel: {context, choices, label}."""
    pool = sentences(text)
    rng = random.Random(seed)
    picked = [pool[i * len(pool) // count] for i in range(count)]
    items = []
    for sentence in picked:
        words = sentence.split()
        context, ending = " ".join(words[:-ENDING_WORDS]), " ".join(words[-ENDING_WORDS:])
        others = []
        while len(others) < CHOICES - 1:
            other = " ".join(rng.choice(pool).split()[-ENDING_WORDS:])
            if other != ending and other not in others:
                others.append(other)
        label = rng.randrange(CHOICES)
        choices = others[:label] + [ending] + others[label:]
        items.append({"context": context, "choices": choices, "label": label})
    return items


def write_task(folder: Path, items: list[dict]) -> None:
    data = folder / f"{TASK}.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    (folder / f"{TASK}.yaml").write_text(f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(data))}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""")


def direct_scores(model_path: Path, items: list[dict]) -> dict:
    """acc and acc_norm from Model.prompt_logprobs, splitting context and continuation the way the
    harness does: the continuation's tokens are those of context + " " + choice after the context's."""
    import edgeq
    right, right_norm = [], []
    with edgeq.load(model_path) as model:
        for item in items:
            context_ids = model.tokenize(item["context"], add_special=False)
            scores = []
            for choice in item["choices"]:
                whole = model.tokenize(item["context"] + " " + choice, add_special=False)
                logprobs = model.prompt_logprobs(whole)         # logprobs[i]: token i + 1
                scores.append(sum(e.logprob for e in logprobs[len(context_ids) - 1:]))
            lengths = [len(" " + c) for c in item["choices"]]
            right.append(int(np.argmax(scores)) == item["label"])
            right_norm.append(int(np.argmax(np.array(scores) / lengths)) == item["label"])
    return {"acc": float(np.mean(right)), "acc_norm": float(np.mean(right_norm))}


def start_server(model_path: Path, parallel: int) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "edgeq", "serve", str(model_path), "--port", "0",
                             "--parallel", str(parallel), "--ctx", "1024"],
                            stderr=subprocess.PIPE, text=True)
    while True:
        line = proc.stderr.readline()
        if not line:
            raise SystemExit(f"edgeq serve did not start (exit status {proc.wait()})")
        print(line, end="", file=sys.stderr)
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+)/v1", line)
        if found:
            return proc, int(found.group(1))


def run_harness(lm_eval: str, port: int, model_id: str, folder: Path, parallel: int) -> dict:
    """The exact command a user runs (see README "Serve"), offline; returns the task's results."""
    model_args = (f"base_url=http://127.0.0.1:{port}/v1/completions,model={model_id},tokenizer_backend=remote,"
                  f"num_concurrent={parallel},max_retries=3")
    command = [lm_eval, "--model", "local-completions", "--model_args", model_args, "--tasks", TASK,
               "--include_path", str(folder), "--output_path", str(folder / "out")]
    print("$ " + " ".join(command), file=sys.stderr)
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"lm_eval failed:\n{result.stderr[-3000:]}")
    found = sorted((folder / "out").rglob("results_*.json"))
    if not found:
        raise SystemExit(f"lm_eval wrote no results:\n{result.stdout[-2000:]}")
    return json.loads(found[-1].read_text())["results"][TASK]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default=None, help="an edgeq file [default: the default model]")
    parser.add_argument("--items", type=int, default=120, help="multiple-choice items [default: 120]")
    parser.add_argument("--lm-eval", default=shutil.which("lm_eval"), metavar="PATH",
                        help="the lm_eval executable [default: the one on PATH]")
    parser.add_argument("--parallel", type=int, default=2, help="server slots and harness requests at once")
    parser.add_argument("--json", default=None, metavar="OUT", help="write the results here")
    args = parser.parse_args()
    if not args.lm_eval:
        raise SystemExit("no lm_eval found: pip install lm-eval (here or in another environment) and pass "
                         "--lm-eval PATH/TO/lm_eval")
    from edgeq import registry
    from edgeq.data import text_path
    model_path = Path(args.model) if args.model else registry.default_model()
    items = build_items(text_path("evaluation").read_text(encoding="utf-8"), args.items)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_task(folder, items)
        proc, port = start_server(model_path, args.parallel)
        try:
            start = time.perf_counter()
            harness = run_harness(args.lm_eval, port, model_path.name, folder, args.parallel)
            seconds = time.perf_counter() - start
        finally:
            proc.send_signal(2)
            proc.wait(30)
    direct = direct_scores(model_path, items)
    report = {"model": model_path.name, "task": TASK, "items": len(items), "chance": 1 / CHOICES,
              "harness": {k: harness[k] for k in ("acc,none", "acc_stderr,none", "acc_norm,none",
                                                   "acc_norm_stderr,none") if k in harness},
              "direct": direct, "harness_seconds": round(seconds, 1)}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    same = abs(harness["acc,none"] - direct["acc"]) < 1e-9 and abs(harness["acc_norm,none"] - direct["acc_norm"]) < 1e-9
    if not same:
        print("edgeq: the harness's accuracy differs from the direct computation", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
