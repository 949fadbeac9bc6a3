"""The `edgeq` command line. Every failure the user can cause ends in one line on stderr, no traceback."""
from __future__ import annotations

import argparse
import os
import signal
import sys

from .errors import EdgeqError


def _cmd_convert(args) -> int:
    from edgeq.convert import PlanSettings, convert
    settings = PlanSettings(bits=args.bits, group=args.group, symmetric=args.sym,
                            head_bits=args.head_bits, embed_bits=args.embed_bits)
    report = convert(args.source, args.output, settings, progress=False if args.quiet else None)
    if not args.quiet:
        print(f"wrote {report.output} ({report.file_bytes / 1e6:.1f} MB, {report.n_tensors} tensors, "
              f"relative weight error {report.mean_rel_error:.4f}) in {report.seconds:.1f} s")
    return 0


def _cmd_info(args) -> int:
    from .fileformat import ModelFile
    from .info import describe
    print(describe(ModelFile(args.file), ctx=args.ctx, tensors=not args.summary))
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error, with a pointer to --help."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgeq", description="Quantize LLMs and run them on CPUs.")
    parser.add_argument("--version", action="version", version=f"edgeq {__import__('edgeq').__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    convert = commands.add_parser("convert", help="quantize a Hugging Face folder, hub id or GGUF file",
                                  description="Quantize a model into one edgeq file.")
    convert.add_argument("source", metavar="SRC", help="Hugging Face folder, hub id (owner/name) or .gguf file")
    convert.add_argument("-o", "--output", required=True, metavar="OUT", help="the edgeq file to write")
    convert.add_argument("--bits", type=int, default=4, help="bits per weight of the linear layers: 2, 3, 4, 5, 6, 8 "
                         "(16 = F16) [default: 4]")
    convert.add_argument("--group", type=int, default=64, help="weights per scale along the input: 32, 64, 128 [default: 64]")
    convert.add_argument("--sym", action="store_true", help="symmetric levels (scale only, no min)")
    convert.add_argument("--head-bits", type=int, default=None, help="bits of the output head [default: max(bits, 6)]")
    convert.add_argument("--embed-bits", type=int, default=None, help="bits of the token embeddings [default: max(bits, 4)]")
    convert.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    convert.set_defaults(func=_cmd_convert)

    info = commands.add_parser("info", help="describe an edgeq file", description="Describe an edgeq file.")
    info.add_argument("file", metavar="FILE")
    info.add_argument("--ctx", type=int, default=None, help="context length for the memory estimate [default: 4096]")
    info.add_argument("--summary", action="store_true", help="omit the per-tensor table")
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
        return 128 + signal.SIGPIPE
    except MemoryError:
        print("edgeq: error: out of memory", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"edgeq: error: {error.filename or ''}{': ' if error.filename else ''}{error.strerror or error}",
              file=sys.stderr)
        return 1
