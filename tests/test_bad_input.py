"""Bad input: one line on stderr naming the problem, a non-zero exit, no traceback, no output file."""
from __future__ import annotations

import errno
import json
import re
import shutil
import subprocess
import sys

import pytest

from edgeq import cli


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgeq", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def assert_clean_failure(result, *words, code=1):
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("edgeq: error:" if code == 1 else "edgeq convert: error:"), result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


def assert_no_output(folder, name="out.edgeq"):
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(f".{name}") or p.name == name]
    assert not leftovers, leftovers


@pytest.fixture
def broken_copy(tiny_llama, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_llama, folder)
    return folder


def convert_fails(source, tmp_path, *words, extra=()):
    result = run_cli("convert", source, "-o", tmp_path / "out.edgeq", *extra)
    assert_clean_failure(result, *words)
    assert_no_output(tmp_path)


def test_missing_config(broken_copy, tmp_path):
    (broken_copy / "config.json").unlink()
    convert_fails(broken_copy, tmp_path, "config.json")


def test_missing_weights(broken_copy, tmp_path):
    (broken_copy / "model.safetensors").unlink()
    convert_fails(broken_copy, tmp_path, "safetensors")


def test_missing_tokenizer(broken_copy, tmp_path):
    (broken_copy / "tokenizer.json").unlink()
    convert_fails(broken_copy, tmp_path, "tokenizer")


def test_missing_shard(tiny_qwen, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_qwen, folder)
    (folder / "model-00002-of-00002.safetensors").unlink()
    convert_fails(folder, tmp_path, "model-00002-of-00002.safetensors")


def test_unsupported_architecture(broken_copy, tmp_path):
    config = json.loads((broken_copy / "config.json").read_text())
    config["model_type"] = "gpt2"
    (broken_copy / "config.json").write_text(json.dumps(config))
    convert_fails(broken_copy, tmp_path, "gpt2", "supported: llama")


def test_config_that_disagrees_with_weights(broken_copy, tmp_path):
    config = json.loads((broken_copy / "config.json").read_text())
    config["intermediate_size"] = 256
    (broken_copy / "config.json").write_text(json.dumps(config))
    convert_fails(broken_copy, tmp_path, "ffn_gate.weight", "shape")


@pytest.mark.parametrize("damage", ["truncate", "header", "garbage-length"])
def test_corrupted_safetensors(broken_copy, tmp_path, damage):
    path = broken_copy / "model.safetensors"
    data = path.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "header":
        data = data[:8] + b"{not json" + data[17:]
    else:
        data = (1 << 62).to_bytes(8, "little") + data[8:]
    path.write_bytes(data)
    convert_fails(broken_copy, tmp_path, "model.safetensors")


def test_nan_weights(tiny_qwen, tmp_path):
    import numpy as np
    from edgeq.convert.safetensors_io import SafetensorsFile
    folder = tmp_path / "model"
    shutil.copytree(tiny_qwen, folder)
    shard = folder / "model-00001-of-00002.safetensors"
    reader = SafetensorsFile(shard)
    name = next(n for n in reader.entries if n.endswith("mlp.up_proj.weight"))
    _, _, begin = reader.entries[name]
    data = bytearray(shard.read_bytes())
    data[reader.data_start + begin: reader.data_start + begin + 4] = np.float32("nan").tobytes()
    shard.write_bytes(bytes(data))
    convert_fails(folder, tmp_path, "NaN")


@pytest.mark.parametrize("damage", ["truncate", "magic", "header"])
def test_corrupted_gguf(smollm2_gguf, tmp_path, damage):
    data = smollm2_gguf.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 3]
    elif damage == "magic":
        data = b"GGUX" + data[4:]
    else:   # an absurd tensor count / key-value count
        data = data[:8] + (1 << 60).to_bytes(8, "little") + data[16:]
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(data)
    convert_fails(bad, tmp_path, "bad.gguf")


def test_unsupported_gguf_architecture(tmp_path):
    import gguf
    import numpy as np
    path = tmp_path / "phi.gguf"
    writer = gguf.GGUFWriter(path, "phi2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    convert_fails(path, tmp_path, "phi2", "supported")


def test_missing_source(tmp_path):
    convert_fails(tmp_path / "nope", tmp_path, "nope", "no such file")


@pytest.mark.parametrize("flags, words", [
    (["--bits", "7"], ["--bits 7", "2, 3, 4, 5, 6, 8"]),
    (["--group", "48"], ["--group 48", "32, 64, 128"]),
    (["--head-bits", "1"], ["--head-bits 1"]),
    (["--embed-bits", "12"], ["--embed-bits 12"]),
])
def test_invalid_flags(tiny_llama, tmp_path, flags, words):
    convert_fails(tiny_llama, tmp_path, *words, extra=flags)


def test_non_numeric_flag_is_a_usage_error(tiny_llama, tmp_path):
    result = run_cli("convert", tiny_llama, "-o", tmp_path / "out.edgeq", "--bits", "four")
    assert_clean_failure(result, "--bits", code=2)


def test_unwritable_output(tiny_llama, tmp_path):
    assert_clean_failure(run_cli("convert", tiny_llama, "-o", tmp_path / "no-such-dir" / "out.edgeq"), "does not exist")
    assert_clean_failure(run_cli("convert", tiny_llama, "-o", "/proc/edgeq-test.edgeq"), "cannot write")
    assert_clean_failure(run_cli("convert", tiny_llama, "-o", tmp_path), "is a folder")


def test_output_must_not_overwrite_the_source(smollm2_gguf, tmp_path):
    copy = tmp_path / "model.gguf"
    shutil.copy(smollm2_gguf, copy)
    assert_clean_failure(run_cli("convert", copy, "-o", copy), "overwrite the source")
    assert copy.read_bytes()[:4] == b"GGUF" and copy.stat().st_size == smollm2_gguf.stat().st_size


@pytest.mark.parametrize("failure", ["disk-full", "interrupt"])
def test_write_failing_midway_leaves_nothing(tiny_llama, tmp_path, monkeypatch, capsys, failure):
    """The disk fills up (or the user presses Ctrl-C) after a few tensors were written."""
    import gguf
    real_write = gguf.GGUFWriter.write_tensor_data
    calls = []

    def failing_write(self, tensor, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            if failure == "disk-full":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise KeyboardInterrupt
        return real_write(self, tensor, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", failing_write)
    previous = tmp_path / "out.edgeq"
    previous.write_bytes(b"an earlier good file")
    code = cli.main(["convert", str(tiny_llama), "-o", str(previous), "-q"])
    err = capsys.readouterr().err
    assert len(calls) == 4
    if failure == "disk-full":
        assert code == 1 and err.count("\n") == 1 and "No space left on device" in err and "nothing was written" in err
    else:
        assert code == 130 and err.strip() == "edgeq: interrupted"
    assert previous.read_bytes() == b"an earlier good file"     # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out.edgeq"]  # and no temporary file is left


@pytest.mark.parametrize("damage", ["truncate", "not-gguf", "llama.cpp-file"])
def test_info_on_bad_files(tiny_llama, smollm2_gguf, tmp_path, damage):
    if damage == "llama.cpp-file":
        assert_clean_failure(run_cli("info", smollm2_gguf), "not an edgeq file", "edgeq convert")
        return
    good = tmp_path / "good.edgeq"
    assert run_cli("convert", tiny_llama, "-o", good, "-q").returncode == 0
    bad = tmp_path / "bad.edgeq"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) - 5000] if damage == "truncate" else b"PK\x03\x04" + data[4:])
    assert_clean_failure(run_cli("info", bad), "bad.edgeq")


def test_info_rejects_unknown_format_version(tiny_llama, tmp_path):
    good = tmp_path / "good.edgeq"
    assert run_cli("convert", tiny_llama, "-o", good, "-q").returncode == 0
    data = good.read_bytes()
    key = b"edgeq.format_version"
    at = data.index(key) + len(key) + 4          # the u32 value follows its type tag
    bad = tmp_path / "future.edgeq"
    bad.write_bytes(data[:at] + (99).to_bytes(4, "little") + data[at + 4:])
    assert_clean_failure(run_cli("info", bad), "format version 99")


# ----------------------------------------------------------------------------------------------
# one message per mistake, whichever command meets it

MODEL_COMMANDS = [("run", "-p", "hi"), ("chat",), ("bench",), ("info",), ("perplexity",)]


def model_cli(command, path, *extra, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgeq", command[0], str(path), *command[1:], *extra],
                          input="hi\n", capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def converted_tiny(tiny_converted):
    return tiny_converted("llama", 4)


@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=lambda c: c[0])
def test_a_folder_is_called_a_folder(tiny_llama, tmp_path, command):
    """A Hugging Face folder gets the exact convert command, with the path as typed (relative here)."""
    shutil.copytree(tiny_llama, tmp_path / "models" / "tiny")
    empty = tmp_path / "empty"
    empty.mkdir()
    if command[0] != "perplexity":               # perplexity runs a Hugging Face folder as a float model
        result = model_cli(command, "models/tiny", cwd=tmp_path)
        assert_clean_failure(result, "models/tiny: not an edgeq file (it is a Hugging Face model folder); "
                             "convert it first: edgeq convert models/tiny -o models/tiny.q4")
    result = model_cli(command, empty)
    assert_clean_failure(result, str(empty), "folder")
    assert "no such file" not in result.stderr


def test_load_a_folder(tiny_llama):
    import edgeq
    from edgeq.errors import EdgeqError
    with pytest.raises(EdgeqError, match=r"it is a Hugging Face model folder\); convert it first: edgeq convert"):
        edgeq.load(tiny_llama)


@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=lambda c: c[0])
def test_foreign_files_get_the_same_message_everywhere(smollm2_gguf, tmp_path, command):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model\n" * 10)
    assert_clean_failure(model_cli(command, notes), f"edgeq: error: {notes}: not an edgeq file (it does not "
                         "start with GGUF's magic bytes); give a file written by `edgeq convert`")
    if command[0] != "perplexity":               # perplexity runs a llama.cpp GGUF as a float model
        gguf = tmp_path / "sub" / "model.gguf"
        gguf.parent.mkdir()
        gguf.symlink_to(smollm2_gguf)
        assert_clean_failure(model_cli(command, gguf), f"{gguf}: not an edgeq file (a GGUF file for 'llama', as "
                             f"llama.cpp writes them); convert it first: edgeq convert {gguf} -o {gguf.parent}/model.q4")


@pytest.mark.parametrize("ctx", ["0", "-3", "100000"])
def test_ctx_out_of_range_is_the_same_error_for_info_run_and_perplexity(converted_tiny, ctx):
    message = f"a context of {ctx} tokens is out of range: use 1 to 256"
    assert_clean_failure(model_cli(("info",), converted_tiny, "--ctx", ctx), message)
    assert_clean_failure(model_cli(("run", "-p", "hi"), converted_tiny, "--ctx", ctx), message)
    if ctx == "100000":                           # below 3 the llama convention scores nothing: its own message
        assert_clean_failure(model_cli(("perplexity",), converted_tiny, "--ctx", ctx), message)
    result = run_cli("info", converted_tiny, "--ctx", "256", "--summary")
    assert result.returncode == 0 and "at context 256 =" in result.stdout


def test_bits_help_lists_what_the_converter_accepts():
    """`--bits 7`'s error and `--help` name the same widths."""
    from edgeq.convert.plan import ALLOWED_BITS
    help_text = " ".join(run_cli("convert", "--help").stdout.split())
    widths = "2, 3, 4, 5, 6, 8 (16 = F16, 32 = F32)"
    assert [int(w) for w in re.findall(r"\b\d+\b", widths)] == list(ALLOWED_BITS)
    for flag in ("--bits BITS bits per weight of the linear layers:", "--head-bits HEAD_BITS bits of the output head:",
                 "--embed-bits EMBED_BITS bits of the token embeddings:"):
        assert f"{flag} {widths}" in help_text, (flag, help_text)
