"""Offline WordNet and POS tagging for nlpaug's SynonymAug.

nlpaug's WordNet model needs nltk's `wordnet` corpus and `nltk.pos_tag` (the averaged perceptron
tagger); both normally come from `nltk.download()`, which fails offline, and nlpaug calls it on a
LookupError. Instead:
- `ensure_wordnet()` copies Debian's WordNet 3.0 (package wordnet-base, /usr/share/wordnet) into
  `$NLTK_DATA/corpora/wordnet/` and adds the two files nltk's reader needs but wordnet-base lacks:
  `lexnames` (a fixed table) and `index.sense` (derived from the data files);
- `pos_tag()` tags with textblob's bundled pattern tagger (its lexicon ships inside the wheel);
- `synonym_augmenter()` builds the SynonymAug with both wired in (and a stricter synonym choice).

NLTK_DATA defaults to <repo>/.cache/nltk_data, as in scripts/env.sh.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import nltk
import textblob.en
from nlpaug.augmenter.word import SynonymAug
from nlpaug.util import PartOfSpeech

from stages._io import MissingPackageError, atomic_path, write_atomic

DEBIAN_WORDNET = Path("/usr/share/wordnet")
DEFAULT_NLTK_DATA = Path(__file__).resolve().parents[1] / ".cache" / "nltk_data"
INSTALL_HINT = "sudo apt-get install wordnet-base (or, as root, apt-get install -y wordnet-base)"

# The files of wordnet-base that nltk's WordNetCorpusReader reads.
_WORDNET_FILES = tuple(
    f"{kind}.{pos}" for kind in ("index", "data") for pos in ("adj", "adv", "noun", "verb")
) + ("adj.exc", "adv.exc", "noun.exc", "verb.exc", "cntlist.rev")

# WordNet 3.0's 45 lexicographer files: number, name, syntactic category (1 noun, 2 verb,
# 3 adjective, 4 adverb); see lexnames(5WN). nltk asserts the numbers run 0..44 in order.
_LEXNAMES = (
    ["adj.all", "adj.pert", "adv.all"]
    + [f"noun.{n}" for n in (
        "Tops act animal artifact attribute body cognition communication event feeling food group "
        "location motive object person phenomenon plant possession process quantity relation shape "
        "state substance time").split()]
    + [f"verb.{n}" for n in (
        "body change cognition communication competition consumption contact creation emotion "
        "motion perception possession social stative weather").split()]
    + ["adj.ppl"]
)
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
LEXNAMES_TEXT = "".join(
    f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES)
)

# Penn tags whose words get synonyms: common nouns, verbs, adjectives, adverbs. nlpaug looks up
# every other tag (IN, PRP, CD, NNP, ...) in all parts of speech ("in" -> "inch", "John" ->
# "toilet"), which rarely keeps the meaning.
_CONTENT_TAGS = ("NN", "NNS", "VB", "VBD", "VBG", "VBN", "VBP", "VBZ", "JJ", "JJR", "JJS", "RB", "RBR", "RBS")


def nltk_data_dir() -> Path:
    # NLTK_DATA may be a path list, as nltk itself allows; the first entry is where we write.
    value = os.environ.get("NLTK_DATA", "").split(os.pathsep)[0]
    return Path(value) if value else DEFAULT_NLTK_DATA


def _is_copy(src: Path, dst: Path) -> bool:
    # copy2 keeps the modification time, so size + mtime identify an up-to-date copy.
    return dst.is_file() and (dst.stat().st_size, dst.stat().st_mtime) == (src.stat().st_size, src.stat().st_mtime)


_SS_TYPE_NUMBER = {"n": 1, "v": 2, "a": 3, "r": 4, "s": 5}


def _index_sense_lines(corpus: Path) -> list[str]:
    """index.sense (senseidx(5WN)) rebuilt from data.*, index.* and cntlist.rev.

    nltk's reader opens it at load time (to map WordNet versions) and for sense-key lookups. The
    result is byte-identical to Debian's wordnet-sense-index package, which wordnet-base lacks.
    A satellite adjective's head is the first word of the synset its similar-to ("&") pointer names.
    """
    synsets: dict[tuple[str, int], tuple[int, str, dict[str, int], list[int]]] = {}
    for pos in ("adj", "adv", "noun", "verb"):
        with open(corpus / f"data.{pos}", encoding="utf-8") as fp:
            for line in fp:
                if line.startswith("  "):  # licence header
                    continue
                fields = line.split(" | ", 1)[0].split()
                offset, lexfile, ss_type, n_words = int(fields[0]), int(fields[1]), fields[2], int(fields[3], 16)
                # Lower-cased word -> lex_id; when case variants collide ("Moon 1 moon 3") the
                # first one's key is the sense key, as in Princeton's index.sense.
                words: dict[str, int] = {}
                for i in range(n_words):
                    word = re.sub(r"\([^()]*\)$", "", fields[4 + 2 * i]).lower()
                    words.setdefault(word, int(fields[5 + 2 * i], 16))
                ptr_at = 4 + 2 * n_words
                similar = [
                    int(fields[ptr_at + 1 + 4 * i + 1])
                    for i in range(int(fields[ptr_at]))
                    if fields[ptr_at + 1 + 4 * i] == "&"
                ]
                synsets["a" if ss_type == "s" else ss_type, offset] = (lexfile, ss_type, words, similar)
    sense_number: dict[tuple[str, str, int], int] = {}
    for pos in ("adj", "adv", "noun", "verb"):
        with open(corpus / f"index.{pos}", encoding="utf-8") as fp:
            for line in fp:
                if line.startswith("  "):
                    continue
                fields = line.split()
                n_synsets = int(fields[2])
                for number, offset in enumerate(fields[-n_synsets:], start=1):
                    sense_number[fields[0], fields[1], int(offset)] = number
    tag_count = {}
    with open(corpus / "cntlist.rev", encoding="utf-8") as fp:
        for line in fp:
            key, _, count = line.split()
            # cntlist.rev keeps the head word's syntactic marker ("preceding(a)"); sense keys don't.
            tag_count[re.sub(r"\([^()]*\):", ":", key)] = count
    lines = []
    for (pos, offset), (lexfile, ss_type, words, similar) in synsets.items():
        head = ""
        if ss_type == "s":
            head_word, head_id = next(iter(synsets["a", similar[0]][2].items()))
            head = f"{head_word}:{head_id:02d}"
        for word, lex_id in words.items():
            key = f"{word}%{_SS_TYPE_NUMBER[ss_type]}:{lexfile:02d}:{lex_id:02d}:{head or ':'}"
            lines.append(f"{key} {offset:08d} {sense_number[word, pos, offset]} {tag_count.get(key, 0)}\n")
    # Byte order: nltk binary-searches this file.
    return sorted(lines, key=lambda line: line.encode())


def ensure_wordnet(data_dir: Path | None = None, source: Path = DEBIAN_WORDNET) -> Path:
    """Install WordNet 3.0 for nltk from Debian's files (idempotent); return the corpus directory."""
    missing = [name for name in _WORDNET_FILES if not (source / name).is_file()]
    if missing:
        raise MissingPackageError(f"WordNet 3.0 not found in {source} (missing {missing[0]}); install it: {INSTALL_HINT}")
    root = Path(data_dir) if data_dir is not None else nltk_data_dir()
    corpus = root / "corpora" / "wordnet"
    corpus.mkdir(parents=True, exist_ok=True)
    index_sense = corpus / "index.sense"
    stale = [name for name in _WORDNET_FILES if not _is_copy(source / name, corpus / name)]
    if stale:
        # index.sense is derived from these files; remove it first so that a run killed mid-way
        # rebuilds it next time.
        index_sense.unlink(missing_ok=True)
    for name in stale:
        # Real copies, not symlinks: the cache must survive the system files changing under it.
        with atomic_path(corpus / name) as tmp:
            shutil.copy2(source / name, tmp)
    if not index_sense.is_file():
        write_atomic(index_sense, "".join(_index_sense_lines(corpus)))
    lexnames = corpus / "lexnames"
    if not lexnames.is_file() or lexnames.read_text() != LEXNAMES_TEXT:
        write_atomic(lexnames, LEXNAMES_TEXT)
    # nltk reads NLTK_DATA once, at import; put the directory first on its search path directly.
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    from nltk.corpus import wordnet

    if not wordnet.synsets("dog"):
        raise RuntimeError(f"WordNet in {corpus} loads but finds no synsets for 'dog'; delete it and rerun")
    return corpus


def pos_tag(tokens: list[str]) -> list[tuple[str, str]]:
    """Drop-in for nltk.pos_tag: Penn tags from textblob's offline pattern tagger, one per token."""
    if not tokens:
        return []
    # Tokens never contain spaces (they come from a tokenizer), so joining with spaces and tagging
    # without re-tokenizing keeps one tag per token. Guard anyway: a mismatch tags nothing.
    tagged = textblob.en.tag(" ".join(tokens), tokenize=False)
    if len(tagged) != len(tokens):
        return [(token, "") for token in tokens]
    return [(token, tag) for token, (_, tag) in zip(tokens, tagged, strict=True)]


def first_sense_synonyms(word: str, pos: str | None = None) -> list[str]:
    """Other lemmas of the word's most frequent WordNet sense (its first synset).

    nlpaug's own lookup samples the lemmas of every sense, so "eating" becomes "corrode" and "dog"
    "frump"; NLI labels rarely survive that. Names ("Isle_of_Man" for "man") and the word's own
    lemma ("eat" for "eating", which only breaks the grammar) are left out.
    """
    from nltk.corpus import wordnet

    senses = wordnet.synsets(word, pos=pos)
    if not senses:
        return []
    own = {word.lower(), wordnet.morphy(word.lower(), senses[0].pos()) or ""}
    return [name for name in senses[0].lemma_names() if name.islower() and name not in own]


class ContentSynonymAug(SynonymAug):
    """SynonymAug that draws only content words (`_CONTENT_TAGS`) that have a synonym, so the
    share `aug_p` of the sentence is really replaced (nlpaug does this check for PPDB only)."""

    def skip_aug(self, token_idxes, tokens):
        return [
            i for i in super().skip_aug(token_idxes, tokens)
            if tokens[i][1] in _CONTENT_TAGS
            and any(self.model.predict(tokens[i][0], pos=p) for p in PartOfSpeech.constituent2pos(tokens[i][1]))
        ]


def synonym_augmenter(
    aug_p: float, stopwords_regex: str | None = None, tokenizer=None, reverse_tokenizer=None
) -> SynonymAug:
    """A WordNet SynonymAug that works offline; sets up WordNet first (see `ensure_wordnet`)."""
    ensure_wordnet()
    aug = ContentSynonymAug(
        aug_src="wordnet", aug_p=aug_p, aug_min=1, aug_max=None, stopwords_regex=stopwords_regex,
        tokenizer=tokenizer, reverse_tokenizer=reverse_tokenizer,
    )
    # nlpaug's WordNet model calls nltk.pos_tag and looks synonyms up through these two methods;
    # override them on this instance only, so nltk and nlpaug themselves stay untouched.
    aug.model.pos_tag = pos_tag
    aug.model.predict = first_sense_synonyms
    return aug
