"""The `edgeq` command line. Every failure the user can cause ends in one line on stderr, no traceback."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings

from .errors import EdgeqError


def _cmd_convert(args) -> int:
    from edgeq.convert import MethodSettings, PlanSettings, convert
    settings = PlanSettings(bits=args.bits, group=args.group, symmetric=args.sym,
                            head_bits=args.head_bits, embed_bits=args.embed_bits, layout=args.layout)
    method = MethodSettings(method=args.method, calib=args.calib, calib_tokens=args.calib_tokens,
                            calib_ctx=args.calib_ctx, stats=args.stats, act_order=args.act_order,
                            float_target=args.float_target)
    budget = _budget(args)
    allocation = None
    if budget is not None:
        from edgeq.convert import AllocationSettings
        allocation = AllocationSettings(budget, args.profile)
    elif args.profile is not None:
        raise EdgeqError("--profile is read with a budget: give --bpw, --size or --latency-ms")
    report = convert(args.source, args.output, settings, progress=False if args.quiet else None, method=method,
                     allocation=allocation)
    if not args.quiet and report.allocation is not None:
        for line in report.allocation_lines:
            print(line)
    if not args.quiet:
        kept = f", {len(report.kept_grid)} kept the source's grid" if report.kept_grid else ""
        print(f"wrote {report.output} ({report.file_bytes / 1e6:.1f} MB, {report.n_tensors} tensors{kept}, "
              f"relative weight error {report.mean_rel_error:.4f}) in {report.seconds:.1f} s")
    return 0


def _cmd_export(args) -> int:
    from edgeq.convert.export_gguf import export_gguf
    from .perplexity import read_text
    text = read_text(args.text) if args.text is not None else None
    report = export_gguf(args.model, args.output, args.type, kl_chunks=args.kl_chunks, text=text,
                         kl_runtime=args.kl_runtime, threads=args.threads)
    if not args.quiet:
        print("\n".join(report.kind_lines()))
        kept = sum(t.exact for t in report.tensors)
        print(f"wrote {report.output} ({report.file_bytes / 1e6:.1f} MB, {len(report.tensors)} tensors, {kept} exact, "
              f"{len(report.tensors) - kept} re-quantized) in {report.seconds:.1f} s")
        if report.exact():
            print("every tensor is exact: llama.cpp reads the same weights edgeq runs")
        elif report.kld is not None:
            print(f"cost of the re-quantized tensors: KL divergence {report.kld:.6f} ± {report.kld_stderr:.6f}, "
                  f"top-1 agreement {100 * report.top1_agreement:.2f}% over {report.kl_tokens} tokens "
                  + ("(edgeq on ours, llama.cpp on the export)" if report.kl_runtime == "llama.cpp" else
                     "(numpy float reference on our weights and on the exported ones)"))
    return 0


def _cmd_profile(args) -> int:
    from .profile import profile, save_profile
    result = profile(args.model, args.shapes_from, threads=args.threads, repeats=args.repeats,
                     progress=False if args.quiet else None,
                     stream_bytes=None if args.stream_mb is None else int(args.stream_mb * (1 << 20)))
    save_profile(result, args.output)
    if not args.quiet:
        n = sum(len(v) for v in result["times"].values())
        overhead = (f"; decode {1e3 * result['decode_seconds']:.2f} ms/token, of which "
                    f"{1e3 * result['overhead_seconds']:.2f} ms outside the products"
                    if result["decode_seconds"] is not None else "")
        print(f"wrote {args.output}: {n} products over {len(result['shapes'])} shapes on {result['cpu']} "
              f"(kernels {result['isa']}, {result['threads']} threads) in {result['profile_seconds']:.1f} s{overhead}")
    return 0


def _budget(args):
    from edgeq.convert.allocate import Budget, parse_size
    given = [(flag, value) for flag, value in (("--bpw", args.bpw), ("--size", args.size),
                                               ("--latency-ms", args.latency_ms)) if value is not None]
    if args.bpw is not None and args.size is not None:
        raise EdgeqError("give one of --bpw and --size, not both (--latency-ms may join either)")
    if not given:
        return None
    if args.bits is not None or args.head_bits is not None or args.embed_bits is not None or args.group is not None \
            or args.sym or args.layout != "auto":
        raise EdgeqError(f"{given[0][0]} chooses every tensor's type; drop --bits/--group/--sym/--head-bits/"
                         "--embed-bits/--layout")
    for flag, value in given:
        if flag != "--size" and not value > 0:
            raise EdgeqError(f"{flag} {value:g}: give a positive number")
    cap = args.latency_ms if len(given) == 2 else None     # a size or bpw budget with a latency cap
    flag, value = given[0]
    if flag == "--size":
        return Budget("size", parse_size(value), cap)
    return Budget("bpw" if flag == "--bpw" else "latency", float(value), cap)


def _cmd_calibrate(args) -> int:
    from edgeq.convert.calibrate import calibrate
    meta = calibrate(args.source, args.output, args.calib, args.calib_tokens, args.calib_ctx,
                     progress=False if args.quiet else None)
    if not args.quiet:
        print(f"wrote {args.output}: E[x^2] of every linear input over {meta['tokens']} tokens of "
              f"{meta['calibration_text']} (hash {meta['calibration_hash']})")
    return 0


def _cmd_info(args) -> int:
    from .fileformat import ModelFile
    from .info import describe
    from .model import check_ctx, check_model_path
    model = ModelFile(check_model_path(args.file))
    if args.ctx is not None:
        check_ctx(args.ctx, model.config.max_seq_len, args.file)
    print(describe(model, ctx=args.ctx, tensors=not args.summary, kv=args.kv))
    return 0


def _cmd_bench(args) -> int:
    from .bench import format_json, format_table, run_bench
    from .registry import default_model
    path = args.model if args.model is not None else default_model()
    report = run_bench(path, threads=args.threads, prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens,
                       runs=args.runs, bandwidth_mb=args.bandwidth_mb, kv=args.kv)
    print(format_json(report) if args.json else format_table(report))
    return 0


def _cmd_perplexity(args) -> int:
    import json
    from .data import text_path
    from .perplexity import perplexity, read_text
    text = read_text(args.text if args.text is not None else text_path("evaluation"))
    result = perplexity(args.model, text, ctx=args.ctx, convention=args.convention,
                        chunks=args.chunks, base=args.base, threads=args.threads,
                        progress=None, kv=args.kv)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.summary())
    return 0


def _cmd_serve(args) -> int:
    from .registry import default_model
    from .serve import serve
    path = args.model if args.model is not None else default_model()
    return serve(path, host=args.host, port=args.port, ctx=args.ctx, threads=args.threads, parallel=args.parallel,
                 api_key=args.api_key, queue=args.queue, kv=args.kv)


# ---------------------------------------------------------------------------------------------
# run and chat
# ---------------------------------------------------------------------------------------------

class _Stdout:
    """Whether the text streamed to stdout has left a line open (no newline yet)."""
    line_open = False


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings (dropped turns, a full context, too many threads) as one `edgeq: warning: ...` line,
    never glued to streamed text: an open stdout line is ended first (the text ends with a newline
    anyway when its stream ends, so stdout holds the same text either way)."""
    _end_line()
    print(f"edgeq: warning: {message}", file=sys.stderr, flush=True)


def _open_model(args):
    from .model import load
    from .registry import default_model
    path = args.model if args.model is not None else default_model()
    return load(path, threads=args.threads, ctx=args.ctx, kv=args.kv)


def _sampling_args(args) -> dict:
    return {"max_tokens": args.max_tokens, "temperature": args.temperature,
            "top_k": args.top_k, "top_p": args.top_p, "min_p": args.min_p,
            "repeat_penalty": args.repeat_penalty, "frequency_penalty": args.frequency_penalty,
            "presence_penalty": args.presence_penalty, "seed": args.seed, "stop": args.stop or None}


def _write_stream(stream, pieces: list[str]) -> None:
    """Write each piece to stdout as it comes (flushed), collecting them in `pieces`; always closes
    the stream, so an interrupt or a closed pipe releases the model."""
    try:
        for piece in stream:
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
            if piece:
                _Stdout.line_open = not piece.endswith("\n")
    finally:
        stream.close()


def _end_line() -> None:
    """End the line the streamed text left open, if any."""
    if _Stdout.line_open:
        _Stdout.line_open = False
        sys.stdout.write("\n")
        sys.stdout.flush()


def _report(model, args) -> None:
    if args.verbose:
        stats = model.last_stats
        speed = stats.generated_tokens / stats.generate_seconds if stats.generate_seconds > 0 else 0.0
        print(f"edgeq: {stats.prompt_tokens} prompt tokens ({stats.cached_tokens} cached) in "
              f"{stats.prompt_seconds:.2f} s, {stats.generated_tokens} generated at {speed:.1f} tok/s, "
              f"stop: {stats.stop_reason or 'interrupted'}", file=sys.stderr, flush=True)


def _cmd_run(args) -> int:
    if args.prompt is None:
        if sys.stdin.isatty():
            raise EdgeqError("give a prompt with -p TEXT (or pipe it on stdin)")
        args.prompt = sys.stdin.read()
    with _open_model(args) as model:
        pieces: list[str] = []
        try:
            _write_stream(model.generate(args.prompt, stream=True, **_sampling_args(args)), pieces)
        except KeyboardInterrupt:
            _end_line()
            raise
        _end_line()
        _report(model, args)
    return 0


CHAT_HELP = "/reset starts over, /exit or Ctrl-D quits, Ctrl-C stops an answer"


def _cmd_chat(args) -> int:
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    system = [{"role": "system", "content": args.system}] if args.system else []
    with _open_model(args) as model:
        if interactive:
            print(f"edgeq chat: {model.path.name} ({CHAT_HELP})", file=sys.stderr, flush=True)
        history = list(system)
        failed = False                 # a turn ended in an error: exit status 1 at the end
        while True:
            try:
                line = input("> ") if interactive else sys.stdin.readline()
            except EOFError:
                line = ""
            if not line:               # Ctrl-D / end of input
                if interactive:
                    print()
                return 1 if failed else 0
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                return 1 if failed else 0
            if text == "/reset":
                history = list(system)
                if interactive:
                    print("(conversation cleared)", file=sys.stderr, flush=True)
                continue
            if text.startswith("/") and " " not in text and interactive:
                print(f"edgeq: unknown command {text} ({CHAT_HELP}; start a message with // to send a /)",
                      file=sys.stderr, flush=True)
                continue
            if text.startswith("//"):
                text = text[1:]
            history.append({"role": "user", "content": text})
            pieces: list[str] = []
            try:
                stream = model.chat(history, stream=True, **_sampling_args(args))
                _write_stream(stream, pieces)
            except KeyboardInterrupt:    # stop this answer, keep the conversation (and what was said)
                _Stdout.line_open = _Stdout.line_open or not pieces
                _end_line()
                print("(stopped)", file=sys.stderr, flush=True)
            except EdgeqError as error:  # e.g. a message longer than the context: say so, keep chatting
                _end_line()
                print(f"edgeq: error: {error}", file=sys.stderr, flush=True)
                history.pop()
                failed = True
                continue
            else:
                _end_line()
            answer = "".join(pieces)
            dropped = model.last_stats.dropped_messages
            if dropped:       # the model left these out to fit the context: forget them here too
                del history[len(system):len(system) + dropped]
            history.append({"role": "assistant", "content": answer})
            _report(model, args)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error, with a pointer to --help."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgeq", description="Quantize LLMs and run them on CPUs.")
    parser.add_argument("--version", action="version", version=f"edgeq {__import__('edgeq').__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    from .quant_types import BITS
    widths = f"{', '.join(map(str, BITS))} (16 = F16, 32 = F32)"      # edgeq.convert.plan.ALLOWED_BITS
    convert = commands.add_parser("convert", help="quantize a Hugging Face folder, hub id or GGUF file",
                                  description="Quantize a model into one edgeq file.")
    convert.add_argument("source", metavar="SRC", help="Hugging Face folder, hub id (owner/name) or .gguf file")
    convert.add_argument("-o", "--output", required=True, metavar="OUT", help="the edgeq file to write")
    convert.add_argument("--bits", type=int, default=None, help=f"bits per weight of the linear layers: {widths} "
                         "[default: 4; a .gguf source's Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 tensors keep their own "
                         "grid unless --bits, --group or --sym is given]")
    convert.add_argument("--group", type=int, default=None, help="weights per scale along the input: 32, 64, 128 [default: 64; 32 at 2-3 bits, except a calibrated head: 64]")
    convert.add_argument("--sym", action="store_true", help="symmetric levels (scale only, no min)")
    convert.add_argument("--layout", choices=["auto", "bitplane", "packed", "codebook"], default="auto",
                         help="how quantized tensors are stored: bitplane (u*g* types, LUT kernels: cost "
                         "grows with the bits), packed (p*g* types, the same size: whole levels, int8 "
                         "multiply-add kernels, cost per weight), codebook (c4g* types for the 4-bit tensors: "
                         "4-bit indices into 16 int8 levels learned per 16 rows by weighted k-means, the "
                         "multiply-add kernels; other widths as auto); auto = packed at every width "
                         "(benchmarks/README.md) [default: auto]")
    convert.add_argument("--head-bits", type=int, default=None, help=f"bits of the output head: {widths} [default: max(bits, 6)]")
    convert.add_argument("--embed-bits", type=int, default=None, help=f"bits of the token embeddings: {widths} [default: max(bits, 4)]")
    convert.add_argument("--method", choices=["auto", "rtn", "hqq", "gptq"], default="auto",
                         help="how linear layers are quantized: rtn (clip search; weighted by E[x^2] with "
                         "--calib/--stats), hqq (half-quadratic scale/min fit), gptq (Hessian error feedback, "
                         "calibrates); auto = gptq at <= 3 bits, rtn weighted by the calibration text's E[x^2] "
                         "at 4-6 bits, plain rtn at 8 [default: auto]")
    budget = convert.add_argument_group("mixed precision (one budget, --bpw or --size or --latency-ms, or "
                                        "--latency-ms beside --bpw/--size; every 2-D tensor's type is chosen "
                                        "from measured sensitivity and cost: a knapsack)")
    budget.add_argument("--bpw", type=float, default=None, metavar="B",
                        help="average stored bits per weight over the 2-D tensors, scales and padding included")
    budget.add_argument("--size", default=None, metavar="SIZE", help="the whole file at most SIZE: bytes or "
                        "80MB, 1.2GB, 512MiB")
    budget.add_argument("--latency-ms", type=float, default=None, metavar="MS",
                        help="decode milliseconds per token on the profiled CPU (needs --profile); beside "
                        "--bpw/--size, a cap the plan must also meet")
    budget.add_argument("--profile", default=None, metavar="FILE",
                        help="kernel timings from `edgeq profile` (for --latency-ms)")
    _add_calibration_flags(convert)
    convert.add_argument("--stats", default=None, metavar="FILE",
                         help="E[x^2] statistics from `edgeq calibrate` (rtn/hqq), instead of calibrating")
    convert.add_argument("--act-order", action="store_true",
                         help="gptq: visit columns by decreasing E[x^2] (groups stay as stored)")
    convert.add_argument("--float-target", action="store_true",
                         help="gptq: aim each layer at the float model's output (runs the float model beside "
                         "the quantized one: ~1.5x the calibration time)")
    convert.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    convert.set_defaults(func=_cmd_convert)

    calibrate = commands.add_parser("calibrate", help="compute calibration statistics once, for convert --stats",
                                    description="Run the float model over a calibration text and save E[x^2] "
                                    "of every linear layer's input (.npz) for `edgeq convert --stats`.")
    calibrate.add_argument("source", metavar="SRC", help="Hugging Face folder, hub id (owner/name) or .gguf file")
    calibrate.add_argument("-o", "--output", required=True, metavar="OUT", help="the statistics file to write (.npz)")
    _add_calibration_flags(calibrate)
    calibrate.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    calibrate.set_defaults(func=_cmd_calibrate)

    from edgeq.convert.export_gguf import DEFAULT_KL_CHUNKS, KL_RUNTIMES, TYPE_CHOICES
    export = commands.add_parser("export", help="write an edgeq file as a llama.cpp GGUF (llama.cpp, ollama, "
                                 "LM Studio, llama-server)",
                                 description="Write an edgeq file as a GGUF that llama.cpp loads. Tensors whose "
                                 "levels a llama.cpp type holds exactly are copied without loss; the others are "
                                 "re-quantized, and the KL divergence that costs is measured.")
    export.add_argument("model", metavar="MODEL", help="an edgeq file")
    export.add_argument("-o", "--output", required=True, metavar="OUT", help="the .gguf file to write")
    export.add_argument("--type", choices=TYPE_CHOICES, default="auto",
                        help="llama.cpp type of the matrices: auto = per tensor the smallest type that holds "
                        "it exactly, else the smallest with at least its bits (Q8_0); a named type is exact "
                        "where it can be, else re-quantized [default: auto]")
    export.add_argument("--kl-chunks", type=int, default=DEFAULT_KL_CHUNKS, metavar="N",
                        help="chunks of 512 tokens of the evaluation text to measure the KL divergence of "
                        f"re-quantized tensors on, 0 = skip [default: {DEFAULT_KL_CHUNKS}]")
    export.add_argument("--text", default=None, metavar="FILE",
                        help="text for the KL measurement [default: the shipped evaluation text]")
    export.add_argument("--kl-runtime", choices=KL_RUNTIMES, default="auto",
                        help="what runs the two models for the KL: llama.cpp (edgeq on ours, llama-cpp-python "
                        "on the export; this python's or $EDGEQ_LLAMA_CPP_PYTHON), reference (the numpy float "
                        "reference on both weight sets); auto = llama.cpp when found [default: auto]")
    export.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                        help="threads for the KL measurement [default: the number of physical cores]")
    export.add_argument("-q", "--quiet", action="store_true", help="no summary")
    export.set_defaults(func=_cmd_export)
    prof = commands.add_parser("profile", help="time every candidate type's kernel for a model's shapes here",
                               description="Time the decode product of every quant type the allocator may "
                               "choose, for each (rows, cols) of a model, on this CPU (median of repeats; "
                               "weights streamed from memory, threaded as decode runs them), for "
                               "`edgeq convert --latency-ms --profile`.")
    prof.add_argument("model", metavar="MODEL", nargs="?", default=None,
                      help="an edgeq file of the model (its decode time per token is measured too, as "
                           "`edgeq bench` does by default)")
    prof.add_argument("--shapes-from", default=None, metavar="SRC",
                      help="take the shapes from a convert source instead (HF folder, hub id, .gguf)")
    prof.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                      help="threads [default: the number of physical cores]")
    from .profile import DEFAULT_REPEATS, ROUNDS
    prof.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, metavar="N",
                      help=f"timed runs per product, spread over up to {ROUNDS} rounds of every product (so a busy "
                      f"machine's drift hits every type alike); the median kept [default: {DEFAULT_REPEATS}]")
    prof.add_argument("--stream-mb", type=float, default=None, metavar="MB",
                      help="MiB of weight copies each product cycles through [default: max(64, 2x the "
                      "last-level cache): weights come from memory, as in decode]")
    prof.add_argument("-o", "--output", required=True, metavar="OUT", help="the profile to write (JSON)")
    prof.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    prof.set_defaults(func=_cmd_profile)

    info = commands.add_parser("info", help="describe an edgeq file", description="Describe an edgeq file.")
    info.add_argument("file", metavar="FILE")
    info.add_argument("--ctx", type=int, default=None, metavar="N",
                      help="context length for the memory estimate, 1 to the model's trained length "
                      "[default: min(trained length, 4096)]")
    info.add_argument("--summary", action="store_true", help="omit the per-tensor table")
    _add_kv_flag(info, "the KV cache type of the memory estimate [default: a line for each: f16, q8, k8v4, f32]",
                 default=None)
    info.set_defaults(func=_cmd_info)

    run = commands.add_parser("run", help="generate text from a prompt",
                              description="Continue a prompt, streaming the text to stdout.")
    run.add_argument("model", metavar="MODEL", nargs="?", default=None,
                     help="an edgeq file [default: SmolLM2-135M-Instruct at 4 bits, prepared once in the cache]")
    run.add_argument("-p", "--prompt", default=None, help="the prompt [default: read from stdin]")
    _add_generation_flags(run)
    run.set_defaults(func=_cmd_run)

    chat = commands.add_parser("chat", help="talk with an instruction-tuned model",
                               description=f"Interactive chat with the model's chat template ({CHAT_HELP}). "
                               "With stdin not a terminal, each line is a message and each answer is one "
                               "block on stdout.")
    chat.add_argument("model", metavar="MODEL", nargs="?", default=None,
                      help="an edgeq file [default: SmolLM2-135M-Instruct at 4 bits, prepared once in the cache]")
    chat.add_argument("--system", default=None, metavar="TEXT", help="a system message")
    _add_generation_flags(chat)
    chat.set_defaults(func=_cmd_chat)

    from .bench import DEFAULT_BANDWIDTH_MB, DEFAULT_GEN_TOKENS, DEFAULT_PROMPT_TOKENS, DEFAULT_RUNS
    bench = commands.add_parser("bench", help="measure speed, peak memory and the decode roofline",
                                description="Load time, prefill and decode tokens/s (median, min, max over "
                                "runs), peak RSS, weight bytes read per token, this machine's memory read "
                                "bandwidth, and decode as a fraction of bandwidth / bytes per token.")
    bench.add_argument("model", metavar="MODEL", nargs="?", default=None,
                       help="an edgeq file [default: SmolLM2-135M-Instruct at 4 bits, prepared once in the cache]")
    bench.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                       help="threads, at most the logical CPUs (more are capped, with a warning) "
                       "[default: the number of physical cores]")
    bench.add_argument("--prompt-tokens", type=int, default=DEFAULT_PROMPT_TOKENS, metavar="N",
                       help=f"tokens evaluated in one prefill [default: {DEFAULT_PROMPT_TOKENS}]")
    bench.add_argument("--gen-tokens", type=int, default=DEFAULT_GEN_TOKENS, metavar="N",
                       help=f"tokens decoded one at a time, greedily [default: {DEFAULT_GEN_TOKENS}]")
    bench.add_argument("--runs", type=int, default=DEFAULT_RUNS, metavar="N",
                       help=f"runs, each opening the model afresh [default: {DEFAULT_RUNS}]")
    bench.add_argument("--bandwidth-mb", type=int, default=DEFAULT_BANDWIDTH_MB, metavar="N",
                       help="MiB read by the bandwidth probe, at least 4x the last-level cache "
                       f"[default: {DEFAULT_BANDWIDTH_MB}]")
    bench.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    _add_kv_flag(bench)
    bench.set_defaults(func=_cmd_bench)

    from .serve import DEFAULT_HOST, DEFAULT_PARALLEL, DEFAULT_PORT, DEFAULT_QUEUE
    serve = commands.add_parser("serve", help="an OpenAI-compatible HTTP server (needs edgeq[server])",
                                description="Serve the model over OpenAI's API: /v1/models, /v1/chat/completions, "
                                "/v1/completions (echo, logprobs), /health. Ctrl-C stops.")
    serve.add_argument("model", metavar="MODEL", nargs="?", default=None,
                       help="an edgeq file [default: SmolLM2-135M-Instruct at 4 bits, prepared once in the cache]")
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on [default: {DEFAULT_HOST}]")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT,
                       help=f"port, 0 = any free one [default: {DEFAULT_PORT}]")
    serve.add_argument("-c", "--ctx", type=int, default=None, metavar="N",
                       help="context length of each slot, 1 to the model's trained length "
                       "[default: min(trained length, 4096)]")
    serve.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                       help="threads per slot [default: the physical cores divided among the slots, at least 1]")
    serve.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL, metavar="N",
                       help="slots answering at the same time, each with its own KV cache "
                       f"[default: {DEFAULT_PARALLEL}]")
    serve.add_argument("--queue", type=int, default=DEFAULT_QUEUE, metavar="N",
                       help="requests that may wait for a slot; more are answered 503 with Retry-After "
                       f"[default: {DEFAULT_QUEUE}]")
    serve.add_argument("--api-key", default=None, metavar="KEY",
                       help="require 'Authorization: Bearer KEY' on /v1/* [default: none]")
    _add_kv_flag(serve, "each slot's KV cache: f16, q8 (int8 per block of 32 values, fp16 scales: "
                 "0.53x the memory), or k8v4 (int8 keys, int4 values: 0.41x) [default: f16]")
    serve.set_defaults(func=_cmd_serve)

    ppl = commands.add_parser("perplexity", help="perplexity of a model on a text, optionally against a base",
                              description="Perplexity on a text (llama-perplexity's convention by default), and with "
                              "--base the KL divergence, top-1 agreement and Δppl against another model.")
    ppl.add_argument("model", metavar="MODEL", help="an edgeq file, or a float source (HF folder, hub id, .gguf)")
    ppl.add_argument("--text", default=None, metavar="FILE",
                     help="a UTF-8 text file [default: the evaluation text shipped with edgeq, Botchan "
                     "from Project Gutenberg (edgeq/data/evaluation.txt)]")
    ppl.add_argument("--convention", choices=["llama", "gptq"], default="llama",
                     help="llama: BOS first (when the model adds BOS), score the second half of each chunk; "
                     "gptq: no BOS, score every token but the first [default: llama]")
    ppl.add_argument("-c", "--ctx", type=int, default=None, metavar="N",
                     help="tokens per chunk, 1 to the model's trained length [default: 512 (llama), 2048 (gptq)]")
    ppl.add_argument("--chunks", type=int, default=None, metavar="N", help="score only the first N chunks")
    ppl.add_argument("--base", default=None, metavar="OTHER",
                     help="compare with this model: an edgeq file, or a float source (HF folder, hub id, .gguf)")
    ppl.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                     help="threads, at most the logical CPUs (more are capped, with a warning) "
                       "[default: the number of physical cores]")
    ppl.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_kv_flag(ppl, "MODEL's KV cache: f16, q8 (int8 per block of 32 values, fp16 scales), or k8v4 "
                 "(int8 keys, int4 values); --base always runs with f16, so `--kv q8 --base MODEL` is the "
                 "int8 cache's cost [default: f16]")
    ppl.set_defaults(func=_cmd_perplexity)
    return parser


def _add_calibration_flags(command) -> None:
    from edgeq.convert.calibrate import DEFAULT_CTX, DEFAULT_TOKENS
    command.add_argument("--calib", default=None, metavar="FILE",
                         help="calibration text (UTF-8) [default: the Shakespeare text shipped with edgeq]")
    command.add_argument("--calib-tokens", type=int, default=DEFAULT_TOKENS, metavar="N",
                         help=f"calibration tokens [default: {DEFAULT_TOKENS}]")
    command.add_argument("--calib-ctx", type=int, default=None, metavar="N",
                         help=f"tokens per calibration window [default: min({DEFAULT_CTX}, the model's context)]")


def _add_kv_flag(command, help: str | None = None, default: str | None = "f16") -> None:
    command.add_argument("--kv", choices=["f16", "q8", "k8v4"], default=default, metavar="{f16,q8,k8v4}",
                         help=help or "KV cache: f16, q8 (int8 per block of 32 values, fp16 scales: 0.53x "
                         "the memory, a small quality cost), or k8v4 (int8 keys, int4 values per block of "
                         "32: 0.41x, a larger cost) [default: f16]")


def _add_generation_flags(command) -> None:
    from .sampling import DEFAULT_MAX_TOKENS
    group = command.add_argument_group("generation (unset sampling flags take the file's defaults, else llama.cpp's)")
    group.add_argument("-n", "--max-tokens", type=int, default=DEFAULT_MAX_TOKENS, metavar="N",
                       help=f"tokens to generate at most (0 or more), -1 = until the end of the context "
                       f"[default: {DEFAULT_MAX_TOKENS}]")
    group.add_argument("--temperature", "--temp", type=float, default=None, metavar="T",
                       help="0 = greedy [default: 0.8]")
    group.add_argument("--top-k", type=int, default=None, metavar="K", help="0 = off [default: 40]")
    group.add_argument("--top-p", type=float, default=None, metavar="P", help="1 = off [default: 0.95]")
    group.add_argument("--min-p", type=float, default=None, metavar="P", help="0 = off [default: 0.05]")
    group.add_argument("--repeat-penalty", type=float, default=None, metavar="R",
                       help="penalty on the last 64 tokens, 1 = off [default: 1.0]")
    group.add_argument("--frequency-penalty", type=float, default=None, metavar="F",
                       help="OpenAI's: subtracted per occurrence in the last 64 tokens, -2 to 2 [default: 0]")
    group.add_argument("--presence-penalty", type=float, default=None, metavar="F",
                       help="OpenAI's: subtracted once for a token in the last 64 tokens, -2 to 2 [default: 0]")
    group.add_argument("--seed", type=int, default=None, help="makes sampling reproducible [default: random]")
    group.add_argument("--stop", action="append", default=None, metavar="TEXT",
                       help="stop before this text (repeatable)")
    group.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                       help="threads, at most the logical CPUs (more are capped, with a warning) "
                       "[default: the number of physical cores]")
    group.add_argument("-c", "--ctx", type=int, default=None, metavar="N",
                       help="context length in tokens, 1 to the model's trained length [default: min(trained length, 4096)]")
    _add_kv_flag(group)
    group.add_argument("-v", "--verbose", action="store_true", help="prompt and speed statistics on stderr")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return args.func(args)
    except EdgeqError as error:
        print(f"edgeq: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgeq: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # silence the flush at exit
        print("edgeq: output closed (broken pipe); stopped", file=sys.stderr)
        return 128 + signal.SIGPIPE
    except MemoryError:
        print("edgeq: error: out of memory", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"edgeq: error: {error.filename or ''}{': ' if error.filename else ''}{error.strerror or error}",
              file=sys.stderr)
        return 1
