"""A deterministic WordPiece vocabulary trainer (the BPE-style algorithm of BERT's and ELECTRA's tokenizers).

The ``tokenizers`` library's ``WordPieceTrainer`` is not reproducible: it gives the ``##`` pieces ids in the
iteration order of a randomly seeded hash map, and equally frequent merges are then chosen by those ids, so
the same corpus gives a different vocabulary in every process (huggingface/tokenizers#1794). A run with the
same ``--seed`` must be the same run, so the vocabulary is learned here, with every choice ordered:

* words are counted after BERT's normalisation (lower case, accents stripped) and pre-tokenisation;
* the vocabulary starts with the special tokens, then every character (sorted), then ``##`` + every character
  that occurs inside a word (sorted);
* each word starts as its characters (``w ##o ##r ##d``); the most frequent adjacent pair is merged into a new
  piece (``w`` + ``##o`` -> ``wo``), ties going to the pair whose pieces sort first, until the vocabulary has
  ``vocab_size`` pieces or no pair is left.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from typing import Iterable

PREFIX = "##"


def count_words(lines: Iterable[str], normalizer, pre_tokenizer) -> Counter:
    """How often each pre-tokenised word occurs in ``lines`` (``tokenizers`` normaliser and pre-tokeniser)."""
    counts: Counter = Counter()
    for line in lines:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)))
    return counts


def learn_vocabulary(word_counts: dict, vocab_size: int, special_tokens: list) -> list:
    """The pieces of a WordPiece vocabulary, in id order, learned from ``word_counts`` (see the module doc).

    The vocabulary keeps every character of the corpus even if that makes it longer than ``vocab_size``."""
    words = sorted(word for word in word_counts if word)
    counts = [word_counts[word] for word in words]
    splits = [[word[0]] + [PREFIX + character for character in word[1:]] for word in words]
    vocabulary = list(dict.fromkeys(special_tokens))
    characters = sorted({character for word in words for character in word})
    inner = sorted({piece for split in splits for piece in split[1:]})
    vocabulary += [piece for piece in characters + inner if piece not in vocabulary]
    known = set(vocabulary)

    # Frequency of every adjacent pair of pieces (weighted by word count) and the words it occurs in.
    pair_counts: defaultdict = defaultdict(int)
    words_with: defaultdict = defaultdict(set)
    for index, (split, count) in enumerate(zip(splits, counts)):
        for pair in zip(split, split[1:]):
            pair_counts[pair] += count
            words_with[pair].add(index)
    # Max-heap on (count, then the smallest pair); entries whose count has since changed are skipped when popped.
    heap = [(-count, first, second) for (first, second), count in pair_counts.items()]
    heapq.heapify(heap)
    while len(vocabulary) < vocab_size and heap:
        negative_count, first, second = heapq.heappop(heap)
        pair = (first, second)
        if pair_counts.get(pair, 0) != -negative_count or negative_count == 0:
            continue  # stale entry
        merged = first + second[len(PREFIX):]  # the second piece never starts a word, so it has the prefix
        if merged not in known:
            vocabulary.append(merged)
            known.add(merged)
        changed = set()
        for index in sorted(words_with.pop(pair, ())):
            split, count = splits[index], counts[index]
            joined, position = [], 0
            while position < len(split):
                if position + 1 < len(split) and split[position] == first and split[position + 1] == second:
                    joined.append(merged)
                    position += 2
                else:
                    joined.append(split[position])
                    position += 1
            old_pairs, new_pairs = list(zip(split, split[1:])), list(zip(joined, joined[1:]))
            for old in old_pairs:
                pair_counts[old] -= count
            for new in new_pairs:
                pair_counts[new] += count
                words_with[new].add(index)
            changed.update(old_pairs, new_pairs)
            splits[index] = joined
        pair_counts.pop(pair, None)
        for other in sorted(changed - {pair}):
            if pair_counts[other] > 0:
                heapq.heappush(heap, (-pair_counts[other], *other))
    return vocabulary
