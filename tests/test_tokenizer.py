"""The deterministic WordPiece trainer: the merges it must make, and the same vocabulary whatever the order."""

import random

from electra_fast.tokenizer import TRAINED_SPECIAL_TOKENS, train_wordpiece
from electra_fast.wordpiece import learn_vocabulary

SPECIALS = ["[PAD]", "[UNK]"]


def test_merges_the_most_frequent_pair_and_breaks_ties_by_order():
    # Pairs: (a, ##a) 3, (##a, ##b) 3, (a, ##b) 2. The tie goes to the pair that sorts first ("##a" < "a"):
    # ##ab; then (a, ##ab) 3 -> aab; then (a, ##b) 2 -> ab.
    vocabulary = learn_vocabulary({"aab": 3, "ab": 2}, 100, SPECIALS)
    assert vocabulary == SPECIALS + ["a", "b", "##a", "##b", "##ab", "aab", "ab"]
    assert learn_vocabulary({"aab": 3, "ab": 2}, 7, SPECIALS) == vocabulary[:7]
    # The alphabet is kept whole even when it alone is longer than the vocabulary asked for.
    assert learn_vocabulary({"aab": 3, "ab": 2}, 3, SPECIALS) == vocabulary[:6]


def test_the_vocabulary_does_not_depend_on_the_order_words_arrive_in():
    generator = random.Random(0)
    words = {"".join(generator.choice("abcde") for _ in range(generator.randint(1, 7))): generator.randint(1, 4)
             for _ in range(300)}
    reference = learn_vocabulary(words, 120, SPECIALS)
    assert len(reference) == 120 and len(set(reference)) == 120
    for _ in range(3):
        shuffled = list(words.items())
        generator.shuffle(shuffled)
        assert learn_vocabulary(dict(shuffled), 120, SPECIALS) == reference


def test_trained_tokenizer_covers_its_corpus():
    lines = ["The discriminator detects replaced tokens.", "A generator proposes them; ÉLECTRA-style!"] * 5
    tokenizer = train_wordpiece(lines, 60)
    assert tokenizer.convert_ids_to_tokens(list(range(5))) == TRAINED_SPECIAL_TOKENS
    for line in lines:
        ids = tokenizer(line, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        normalised = line.lower().replace("é", "e")  # uncased, accents stripped
        assert tokenizer.decode(ids).replace(" ", "") == normalised.replace(" ", "")
