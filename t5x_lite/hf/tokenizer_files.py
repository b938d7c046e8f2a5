"""Hugging Face tokenizer files that encode and decode as the run's seqio vocabulary does.

- Byte vocabulary -> `ByT5Tokenizer`: pad 0, eos 1, unk 2, byte b is id b + 3; then
  the vocabulary's extra ids as special tokens `<extra_id_k>` at seqio's ids
  (`vocab_size - 1 - k`: ByT5's layout), then the model's ids past the vocabulary
  (its table is rounded up) as special tokens `<unused_j>`, so every id the model
  can emit decodes, and `skip_special_tokens=True` drops them as seqio drops them.
  Like every ByT5 tokenizer it appends EOS unless called with
  `add_special_tokens=False`; t5x_lite's tasks end each example with EOS as well.
- SentencePiece (BPE, byte fallback, identity normalization, no dummy prefix, as
  `vocabularies.py` trains it) -> `LlamaTokenizer` with a `tokenizer.json`: the same
  pieces and ids, BPE merges ranked by the SentencePiece scores, spaces as U+2581,
  no prefix space, no BOS or EOS added; the `.model` file is kept beside it. (T5's
  own tokenizer class is a Unigram model over whitespace-split words: it cannot
  encode as this BPE model does.) Extra ids are seqio's pieces `▁<extra_id_k>`, at
  ids `vocab_size - 1 - k`: added tokens ` <extra_id_k>` (with the space), matched
  in text and decoded as seqio matches and decodes them.

Both set `split_special_tokens`, so text that spells a special token ("</s>") is
encoded as text, as SentencePiece and seqio encode it. Other vocabularies or
SentencePiece settings raise a one-line ConfigError.
"""

from t5x_lite import storage
from t5x_lite.errors import ConfigError

_TOKENIZER_FILE_PATTERNS = ("tokenizer*", "special_tokens_map.json", "added_tokens.json",
                            "vocab.json", "merges.txt", "chat_template*", "spiece.model")


def write_tokenizer(vocabulary, directory: str, model_vocab_size: int) -> str:
    """Writes the tokenizer files for a seqio vocabulary; returns the tokenizer class."""
    import seqio
    if isinstance(vocabulary, seqio.ByteVocabulary):
        return _write_byte_tokenizer(vocabulary, directory, model_vocab_size)
    if isinstance(vocabulary, seqio.SentencePieceVocabulary):
        return _write_sentencepiece_tokenizer(vocabulary, directory)
    raise ConfigError(f"the run's vocabulary is a {type(vocabulary).__name__}; export-hf "
                      "writes tokenizers for byte and SentencePiece vocabularies only.")


def _extra_id_tokens(extra_ids: int, template: str = "<extra_id_{}>") -> list[str]:
    """The extra ids' tokens in id order: seqio numbers them down from the last id."""
    return [template.format(k) for k in reversed(range(extra_ids))]


def _write_byte_tokenizer(vocabulary, directory: str, model_vocab_size: int) -> str:
    from transformers import ByT5Tokenizer
    unused = [f"<unused_{j}>" for j in range(max(0, model_vocab_size - vocabulary.vocab_size))]
    ByT5Tokenizer(extra_ids=vocabulary.extra_ids,
                  additional_special_tokens=_extra_id_tokens(vocabulary.extra_ids) + unused,
                  split_special_tokens=True).save_pretrained(directory)
    return "ByT5Tokenizer"


def _write_sentencepiece_tokenizer(vocabulary, directory: str) -> str:
    from tokenizers import AddedToken
    from transformers import LlamaTokenizer
    model_bytes = vocabulary.sp_model
    proto = _without_extra_ids(_parse_model(model_bytes), vocabulary.extra_ids)
    _check_sentencepiece(proto)
    ids = {piece.piece: index for index, piece in enumerate(proto.pieces)}
    spec = proto.trainer_spec

    def special(index: int):
        return proto.pieces[index].piece if index >= 0 else None

    tokenizer = LlamaTokenizer(
        vocab=ids, merges=_bpe_merges(proto, ids), bos_token=special(spec.bos_id),
        eos_token=special(spec.eos_id), unk_token=special(spec.unk_id),
        pad_token=special(spec.pad_id), add_bos_token=False, add_eos_token=False,
        add_prefix_space=False, legacy=False, split_special_tokens=True)
    tokenizer.add_tokens([AddedToken(token, normalized=False, special=False)
                          for token in _extra_id_tokens(vocabulary.extra_ids, " <extra_id_{}>")])
    tokenizer.save_pretrained(directory)
    storage.write_atomic(storage.join(directory, "tokenizer.model"), model_bytes)
    return "LlamaTokenizer"


def _parse_model(model_bytes: bytes):
    from sentencepiece import sentencepiece_model_pb2
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    return proto


def _without_extra_ids(proto, extra_ids: int):
    """The model without the `extra_ids` pieces seqio appends to it (user-defined
    `▁<extra_id_k>`, k counting down)."""
    if not extra_ids:
        return proto
    appended = [piece.piece for piece in proto.pieces[-extra_ids:]]
    if appended != _extra_id_tokens(extra_ids, "▁<extra_id_{}>"):
        raise ConfigError("the run's SentencePiece vocabulary does not end in seqio's extra "
                          "ids; export-hf cannot place them.")
    del proto.pieces[-extra_ids:]
    return proto


def _check_sentencepiece(proto) -> None:
    """Only settings whose encoding a Llama tokenizer reproduces exactly are accepted."""
    spec, normalizer = proto.trainer_spec, proto.normalizer_spec
    piece_type = type(proto.pieces[0]) if proto.pieces else None
    problems = {
        "the model is not BPE": spec.model_type != type(spec).BPE,
        "it has no byte fallback": not spec.byte_fallback,
        "it normalizes text": normalizer.name != "identity" or bool(
            normalizer.precompiled_charsmap),
        "it adds a dummy prefix": normalizer.add_dummy_prefix,
        "it removes extra whitespace": normalizer.remove_extra_whitespaces,
        "it does not escape whitespace": not normalizer.escape_whitespaces,
        "it treats whitespace as a suffix": spec.treat_whitespace_as_suffix,
        "it has user-defined or unused pieces": piece_type is not None and any(
            piece.type in (piece_type.USER_DEFINED, piece_type.UNUSED) for piece in proto.pieces),
    }
    found = [problem for problem, present in problems.items() if present]
    if found:
        raise ConfigError(f"the run's SentencePiece model cannot be exported exactly: "
                          f"{'; '.join(found)} (t5x_lite's build-vocab settings can).")


def _bpe_merges(proto, ids: dict[str, int]) -> list[tuple[str, str]]:
    """Every (left, right) pair of pieces that concatenates to a normal piece.

    SentencePiece's BPE merges the adjacent pair whose concatenation is the
    highest-scored piece; ranking the pairs by that piece's score (then by id)
    makes the HF BPE merge in the same order.
    """
    normal = type(proto.pieces[0]).NORMAL
    ranked = []
    for index, piece in enumerate(proto.pieces):
        if piece.type != normal:
            continue
        text = piece.piece
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            if left in ids and right in ids:
                ranked.append((-piece.score, index, ids[left], ids[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def copy_tokenizer_files(source: storage.PathLike, destination: storage.PathLike) -> list[str]:
    """Copies the HF tokenizer files found in `source`; returns their names."""
    source, destination = storage.path(source), storage.path(destination)
    names = sorted({file.name
                    for pattern in _TOKENIZER_FILE_PATTERNS
                    for file in source.glob(pattern)
                    if file.is_file()})
    for name in names:
        storage.write_atomic(destination / name, (source / name).read_bytes())
    return names
