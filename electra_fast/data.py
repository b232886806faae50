"""Pre-training data for ``electra-fast pretrain``: where text comes from, and how it becomes batches.

* Corpora. With no ``--data`` the embedded default corpus is used: real English text present on every
  Python install (the reference manual's topics in ``pydoc_data.topics`` and the docstrings of the standard
  library, read with ``ast`` without importing anything). ``--data`` takes a text file, JSONL with a text
  field, a directory of such files, or a ``datasets.save_to_disk`` directory.
* Documents. A corpus yields documents, each a list of non-empty lines. In text files a blank line ends a
  document (the official ELECTRA input format: one sentence or paragraph per line); a JSONL record or a
  dataset row is one document.
* Packing follows the official ``build_pretraining_dataset.py``: lines are accumulated until they reach the
  target length, then split into one or two segments ``[CLS] A [SEP] B [SEP]`` (10 % of the time a single
  segment), and 5 % of the time the next target length is a random length in [5, max_length] so the model also
  sees short inputs. Unlike the official code, which truncates what overflows the target (and loses it), the
  overflowing line is split and its rest starts the next sequence: no token is lost. ``packing="documents"``
  (the official behaviour) flushes the sequence at each document's end; ``"full"`` (the default) fills every
  sequence across document boundaries, each segment still starting at a line.
* Blocks. A corpus is read in blocks of documents (``document_blocks``, about ``BLOCK_BYTES`` of text each, in
  the corpus's fixed order); ``map_blocks`` applies a function to each block in worker processes and returns the
  results in block order, so whatever is built from them is the same for any number of workers. Preparation
  (electra_fast/prepare_data.py) tokenizes and packs each block on its own; the tokenizer trainer counts words.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import random
import signal
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch

from .errors import UserInputError

Document = list  # the non-empty lines of one document, each a str
LineEncoder = Callable[[list], list]  # list of lines -> list of token-id lists (no special tokens)

TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PACKINGS = ("full", "documents")
BLOCK_BYTES = 1 << 20  # text per block of documents handed to a worker
SINGLE_SEGMENT_PROB = 0.1  # official: "small chance to only have one segment as in classification tasks"
SHORT_SEQUENCE_PROB = 0.05  # official: "small chance for random-length instead of max_length-length example"
MIN_SHORT_LENGTH = 5
_STDLIB_DIRS_WITHOUT_PROSE = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def epoch_rng(seed: int, epoch: int, purpose: str) -> random.Random:
    """An independent, reproducible random generator for one purpose of one epoch."""
    return random.Random(f"electra-fast:{seed}:{epoch}:{purpose}")


def _clean_lines(text: str) -> Document:
    """Non-empty stripped lines of ``text``, without rules such as '*****' or '-----' (reStructuredText)."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and any(ch.isalnum() for ch in line)]


# ----------------------------------------------------------------------------------------------- corpora


class Corpus:
    """A source of documents. ``documents(rng)`` streams one epoch in an order drawn from ``rng``."""

    description: str

    def documents(self, rng: random.Random) -> Iterator[Document]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identifies the text (for reusing a tokenizer trained on it)."""
        return self.description


def _stdlib_docstring_documents() -> Iterator[Document]:
    """One document per standard-library source file: its docstrings in source order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if d not in _STDLIB_DIRS_WITHOUT_PROSE)
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            try:
                tree = ast.parse(Path(directory, name).read_bytes())
            except (SyntaxError, ValueError, OSError):
                continue  # e.g. lib2to3 test data written in Python 2
            lines: Document = []
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines += _clean_lines(ast.get_docstring(node) or "")
            if lines:
                yield lines


@functools.lru_cache(maxsize=1)
def embedded_documents() -> tuple:
    """The embedded default corpus, in a fixed order: pydoc topics (sorted by name), then stdlib docstrings."""
    from pydoc_data.topics import topics

    documents = [_clean_lines(topics[name]) for name in sorted(topics)]
    documents += list(_stdlib_docstring_documents())
    return tuple(tuple(document) for document in documents if document)


class EmbeddedCorpus(Corpus):
    description = "the embedded default corpus (Python reference manual topics and standard-library docstrings)"

    def documents(self, rng: random.Random) -> Iterator[Document]:
        documents = embedded_documents()
        order = list(range(len(documents)))
        rng.shuffle(order)
        for index in order:
            yield list(documents[index])

    def fingerprint(self) -> str:
        return f"embedded:{sysconfig.get_python_version()}"


def _decode_error(path: Path, line_number: int, error: UnicodeDecodeError) -> UserInputError:
    return UserInputError(
        f"cannot decode {path} as UTF-8 (line {line_number}: {error.reason}); convert it to UTF-8 text"
    )


def _numbered_lines(path: Path, max_chars: int = -1) -> Iterator[tuple]:
    """(line number, line) of a UTF-8 file, streamed (a line cut at ``max_chars`` if that is given); a file that
    cannot be read or decoded is an error naming it (and the line)."""
    line_number = 0
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle if max_chars < 0 else iter(lambda: handle.readline(max_chars), "")
            for line_number, line in enumerate(lines, start=1):
                yield line_number, line
    except UnicodeDecodeError as error:
        raise _decode_error(path, line_number + 1, error) from None
    except OSError as error:
        raise UserInputError(f"cannot read {path}: {error.strerror or error}") from None


def check_first_records(path: Path, text_field: str, records: int = 100, max_chars: int = 1 << 20) -> None:
    """Read the first ``records`` lines of a --data file, so that a file that cannot be read, is binary, is not
    JSONL or lacks the text field is reported before any work (the tokenizer is trained on the whole corpus)."""
    jsonl = path.suffix.lower() in JSONL_SUFFIXES
    for line_number, line in _numbered_lines(path, max_chars):
        if "\x00" in line:
            raise UserInputError(f"{path} line {line_number} holds NUL bytes: a binary file, not text")
        if jsonl and line.endswith("\n") and line.strip():
            _jsonl_text(path, line_number, line, text_field)
        if line_number >= records:
            return


def text_file_documents(path: Path) -> Iterator[Document]:
    """Documents of a text file: blank lines separate documents."""
    document: Document = []
    for _, line in _numbered_lines(path):
        line = line.strip()
        if line:
            document.append(line)
        elif document:
            yield document
            document = []
    if document:
        yield document


def _jsonl_text(path: Path, line_number: int, line: str, text_field: str) -> str:
    """The ``text_field`` string of one JSONL record; anything else is an error naming the file and line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise UserInputError(f"{path} line {line_number} is not valid JSON: {error.msg}") from None
    if not isinstance(record, dict) or text_field not in record:
        raise UserInputError(
            f"{path} line {line_number} has no field {text_field!r}; choose the field with --text-field"
        )
    if not isinstance(record[text_field], str):
        raise UserInputError(
            f"{path} line {line_number}: field {text_field!r} must be a string, "
            f"got {type(record[text_field]).__name__}"
        )
    return record[text_field]


def jsonl_documents(path: Path, text_field: str) -> Iterator[Document]:
    """Documents of a JSONL file: the ``text_field`` string of each record."""
    for line_number, line in _numbered_lines(path):
        if line.strip():
            document = _clean_lines(_jsonl_text(path, line_number, line, text_field))
            if document:
                yield document


class FileCorpus(Corpus):
    """Text and JSONL files, read one after the other in an order reshuffled every epoch."""

    def __init__(self, files: Sequence[Path], text_field: str, description: str):
        self.files = list(files)
        self.text_field = text_field
        self.description = description

    def documents(self, rng: random.Random) -> Iterator[Document]:
        order = list(self.files)
        rng.shuffle(order)
        for path in order:
            if path.suffix.lower() in JSONL_SUFFIXES:
                yield from jsonl_documents(path, self.text_field)
            else:
                yield from text_file_documents(path)

    def fingerprint(self) -> str:
        stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in self.files]
        return json.dumps({"files": stats, "text_field": self.text_field})


class DiskDatasetCorpus(Corpus):
    """A Hugging Face ``datasets`` directory written by ``save_to_disk``; each row is one document."""

    def __init__(self, path: Path, text_field: str):
        try:
            import datasets
        except ImportError:
            raise UserInputError(
                f"{path} is a Hugging Face datasets directory, but the `datasets` package is not installed "
                "(pip install datasets)"
            ) from None
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            if "train" not in dataset:
                raise UserInputError(f"{path} holds splits {sorted(dataset)} but no 'train' split")
            dataset = dataset["train"]
        if text_field not in dataset.column_names:
            raise UserInputError(
                f"{path} has columns {dataset.column_names} but no {text_field!r}; choose one with --text-field"
            )
        self.dataset = dataset
        self.text_field = text_field
        self.description = f"the dataset in {path}"
        self._fingerprint = getattr(dataset, "_fingerprint", str(path.resolve()))

    def documents(self, rng: random.Random) -> Iterator[Document]:
        for row in self.dataset.select_columns([self.text_field]):  # streamed from the memory-mapped table
            document = _clean_lines(row[self.text_field] or "")
            if document:
                yield document

    def fingerprint(self) -> str:
        return f"dataset:{self._fingerprint}:{self.text_field}"


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def open_corpus(data: Optional[str], text_field: str = "text") -> Corpus:
    """The corpus named by ``--data``: None for the embedded one, else a file or a directory."""
    if data is None:
        return EmbeddedCorpus()
    path = Path(data).expanduser()
    if not path.exists():
        raise UserInputError(f"--data {data}: no such file or directory")
    if path.is_dir():
        if _is_saved_dataset(path):
            return DiskDatasetCorpus(path, text_field)
        files = sorted(
            p for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            suffixes = ", ".join(TEXT_SUFFIXES + JSONL_SUFFIXES)
            raise UserInputError(f"--data {data}: the directory holds no text files ({suffixes})")
        description = f"{len(files)} files in {path}"
    else:
        files = [path]
        description = str(path)
    if all(p.stat().st_size == 0 for p in files):
        raise UserInputError(f"--data {data}: empty (no text to train on)")
    for file in files:
        check_first_records(file, text_field)
    return FileCorpus(files, text_field, description)


def corpus_text(corpus: Corpus) -> Iterator[str]:
    """Every line of one epoch of ``corpus`` in its seed-0 order (for training a tokenizer)."""
    for document in corpus.documents(epoch_rng(0, 0, "documents")):
        yield from document


def document_blocks(corpus: Corpus, block_bytes: int = BLOCK_BYTES) -> Iterator[list]:
    """The documents of ``corpus`` in its fixed (seed-0) order, grouped into lists of about ``block_bytes`` of
    text."""
    block: list = []
    size = 0
    for document in corpus.documents(epoch_rng(0, 0, "documents")):
        block.append(document)
        size += sum(len(line) + 1 for line in document)
        if size >= block_bytes:
            yield block
            block, size = [], 0
    if block:
        yield block


_worker_state: dict = {}


def _call_in_worker(arguments: tuple):
    index, block = arguments
    return _worker_state["function"](index, block)


def _leave_signals_to_the_parent() -> None:
    """In a worker: Ctrl-C and SLURM's warning are the parent's to handle; SIGTERM (Pool.terminate) ends it."""
    for name in ("SIGINT", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked by the parent while it forked this worker


_STOP_SIGNALS = {getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name)}


def _fork_pool(workers: int):
    """A pool of ``workers`` forked processes. The stop signals are held back while it forks: one that arrived
    inside the fork's at-fork hooks (logging's lock release) would be printed with a traceback and ignored there;
    held back, it is delivered right after, to the run's own handler."""
    import multiprocessing

    held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        return multiprocessing.get_context("fork").Pool(workers, initializer=_leave_signals_to_the_parent)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def map_blocks(function: Callable, blocks: Iterable[list], workers: int) -> Iterator:
    """``function(index, block)`` for each block, yielded in block order: in this process (``workers`` 0) or in
    ``workers`` forked processes, which inherit ``function`` (it need not pickle; blocks and results do). At most
    two blocks per worker are in flight, so a corpus of any size streams through in bounded memory."""
    if workers <= 0:
        for index, block in enumerate(blocks):
            yield function(index, block)
        return
    import collections

    # A tokenizer that ran its own thread pool before a fork warns in every child; the workers are the parallelism.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _worker_state["function"] = function
    with _fork_pool(workers) as pool:
        in_flight: collections.deque = collections.deque()
        for index, block in enumerate(blocks):
            in_flight.append(pool.apply_async(_call_in_worker, ((index, block),)))
            if len(in_flight) >= 2 * workers:
                yield in_flight.popleft().get()
        while in_flight:
            yield in_flight.popleft().get()


# ----------------------------------------------------------------------------------------------- packing


@dataclass
class PackedSequence:
    input_ids: list
    token_type_ids: list


class SequencePacker:
    """ELECTRA's example builder: turns the tokenized lines of documents into ``[CLS] A [SEP] B [SEP]``."""

    def __init__(self, max_length: int, cls_id: int, sep_id: int, rng: random.Random, packing: str = "documents"):
        if packing not in PACKINGS:
            raise UserInputError(f"--packing must be one of {', '.join(PACKINGS)}, got {packing!r}")
        if max_length < MIN_SHORT_LENGTH:
            raise UserInputError(f"--max-length must be at least {MIN_SHORT_LENGTH}, got {max_length}")
        self.max_length = max_length
        self.cls_id = cls_id
        self.sep_id = sep_id
        self.rng = rng
        self.across_documents = packing == "full"
        self.target_length = max_length
        self.lines: list = []
        self.length = 0

    def add_line(self, token_ids: list) -> Iterator[PackedSequence]:
        """Add one tokenized line; yields a sequence whenever the target length is reached. A line that
        overflows the target is split, its rest starting the next sequence."""
        while token_ids:
            room = self.target_length - 3 - self.length  # 3: [CLS] and two [SEP]
            self.lines.append(token_ids[:room])
            self.length += len(self.lines[-1])
            token_ids = token_ids[room:]
            if self.length >= self.target_length - 3:
                yield self._build()

    def end_document(self) -> Iterator[PackedSequence]:
        """With ``packing="documents"`` sequences never cross documents: flush what is accumulated."""
        if not self.across_documents:
            yield from self.flush()

    def flush(self) -> Iterator[PackedSequence]:
        """The sequence accumulated so far, if any (at the end of the input)."""
        if self.lines:
            yield self._build()

    def _build(self) -> PackedSequence:
        if self.rng.random() < SINGLE_SEGMENT_PROB:
            first_target = self.max_length  # everything goes to the first segment
        else:
            first_target = (self.target_length - 3) // 2
        first: list = []
        second: list = []
        for line in self.lines:
            # A line joins the first segment while it fits, and with probability 1/2 when it overflows a
            # first segment that is still short; everything after goes to the second segment (the official
            # code may put a later short line back into the first segment, out of order; we keep the order).
            if not first or (
                not second
                and (len(first) + len(line) < first_target or (len(first) < first_target and self.rng.random() < 0.5))
            ):
                first += line
            else:
                second += line
        self.lines, self.length = [], 0
        if self.rng.random() < SHORT_SEQUENCE_PROB:
            self.target_length = self.rng.randint(MIN_SHORT_LENGTH, self.max_length)
        else:
            self.target_length = self.max_length
        input_ids = [self.cls_id] + first + [self.sep_id]
        token_type_ids = [0] * len(input_ids)
        if second:
            input_ids += second + [self.sep_id]
            token_type_ids += [1] * (len(second) + 1)
        return PackedSequence(input_ids, token_type_ids)


def pack_documents(
    documents: Iterable[Document],
    encode_lines: LineEncoder,
    packer: SequencePacker,
    documents_per_call: int = 64,
) -> Iterator[PackedSequence]:
    """Tokenize documents (a few dozen per tokenizer call, for speed) and pack them into sequences."""
    chunk: list = []

    def flush() -> Iterator[PackedSequence]:
        lines = [line for document in chunk for line in document]
        encoded = iter(encode_lines(lines)) if lines else iter(())
        for document in chunk:
            for _ in document:
                yield from packer.add_line(next(encoded))
            yield from packer.end_document()
        chunk.clear()

    for document in documents:
        chunk.append(document)
        if len(chunk) == documents_per_call:
            yield from flush()
    yield from flush()
    yield from packer.flush()


# ---------------------------------------------------------------------------------------------- batching (HF)


def collate(sequences: Sequence[PackedSequence], max_length: int, pad_id: int) -> dict:
    """Pad to ``max_length`` (fixed shapes: no recompilation, CUDA-graph friendly)."""
    input_ids = torch.full((len(sequences), max_length), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(sequences), max_length), dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), max_length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        length = len(sequence.input_ids)
        input_ids[row, :length] = torch.tensor(sequence.input_ids)
        token_type_ids[row, :length] = torch.tensor(sequence.token_type_ids)
        attention_mask[row, :length] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
