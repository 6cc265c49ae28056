"""Names that cannot pass for one another: schema/names.py (and protocol's name rules)."""

from __future__ import annotations

import string
import unicodedata

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from schema import names as N
from schema import protocol as P
from schema.names import fold, is_name_text, name_problem, script_of


def is_name(value: str) -> bool:
    return is_name_text(value, P.ROOM_MAX)


# --- The attacks of the review, and their cousins ----------------------------------------

INVISIBLE_TAILS = [
    "\u034f",  # combining grapheme joiner
    "\u3164", "\u115f", "\u1160", "\uffa0",  # Hangul fillers
    "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff",  # zero-width space, ZWNJ, ZWJ...
    "\u00ad",  # soft hyphen
    "\ufe0f", "\ufe00",  # variation selectors
    "\U000e0041",  # a tag
    "\u17b4", "\u180b", "\u180e",  # Khmer inherent vowel, Mongolian selector and separator
    "\u200e", "\u202e", "\u2066",  # bidi marks and controls
    "\u061c",  # Arabic letter mark
    "\u2800",  # braille blank
    "\u0640",  # Arabic tatweel
]


@pytest.mark.parametrize("tail", INVISIBLE_TAILS, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize("where", ["end", "middle", "start"])
def test_invisible_characters_are_refused_anywhere(tail, where):
    name = {"end": "alice" + tail, "middle": "al" + tail + "ice", "start": tail + "alice"}
    assert not is_name(name[where])
    assert not P.is_nickname(name[where])
    assert not P.is_room_name(name[where])


@pytest.mark.parametrize("name", [
    "\u0430lice",  # Cyrillic а
    "alic\u0435",  # Cyrillic е
    "\u0430l\u0456\u0441\u0435",  # Cyrillic а і с е, Latin l
    "\u03b1lice",  # Greek α
    "bo\u03b2",  # Greek β
    "\u0391lice",  # Greek Α
    "Dм\u0438трий",  # Latin D in a Cyrillic name
    "al\u0456ce",
    "\u0430l\u0456c\u0435",
], ids=repr)
def test_mixing_latin_with_cyrillic_or_greek_is_refused(name):
    assert not is_name(name)
    assert "mixes scripts" in name_problem(name, P.NICK_MAX)


@pytest.mark.parametrize("name", [
    "\u0430\u04cf\u0456\u0441\u0435",  # аӏісе: whole-script Cyrillic, palochka for l
    "\u0410\u04c0\u0406\u0421\u0415",  # АӀІСЕ in capitals
    "ａｌｉｃｅ",  # full width
    "ＡＬＩＣＥ",
    "Alice", "ALICE", "aLiCe",
], ids=repr)
def test_single_script_imitations_are_names_but_fold_onto_alice(name):
    assert is_name(name)
    assert fold(name) == fold("alice") == "alice"


@pytest.mark.parametrize(("imitation", "original"), [
    ("\u0441\u043e\u0441\u043e", "coco"),  # Cyrillic сосо
    ("\u0440\u043e\u0440", "pop"),  # Cyrillic рор
    ("\u0422\u041e\u041c", "TOM"),  # Cyrillic ТОМ
    ("\u0412\u041e\u0412", "BOB"),  # Cyrillic ВОВ
    ("\u0405\u0415\u0425", "SEX"),  # Cyrillic ЅЕХ
    ("\u0458\u043e\u0435", "joe"),  # Cyrillic јое
    ("\u03ba\u03b1\u03c4\u03bf", "kato"),  # Greek κατο
    ("\u039d\u0395\u039f", "NEO"),  # Greek ΝΕΟ, capitals
    ("\u03b7\u03bf\u03bf\u03c1", "noop"),  # Greek ηοορ
    ("\u0585\u057d", "ou"),  # Armenian օս
    ("\u0131", "i"),  # Latin dotless i
], ids=repr)
def test_whole_script_look_alikes_fold_together(imitation, original):
    assert is_name(imitation) and is_name(original)
    assert fold(imitation) == fold(original)


def test_combining_marks_must_sit_on_a_letter_of_the_name():
    assert not is_name("e\u0301")  # not NFC: it is é, spelt otherwise
    assert is_name("\u00e9") and is_name("x\u0301")  # é; x with an acute has no precomposed
    assert not is_name("\u0301x")  # on nothing
    assert not is_name("1\u0301") and not is_name("_\u0301")  # on a digit, on punctuation
    assert not is_name("x\u0301\u0301")  # the same mark twice
    assert is_name("x\u0301\u0302\u0303\u0304") and not is_name("x\u0301\u0302\u0303\u0304\u0305")
    assert not is_name("x\u093f")  # a Devanagari vowel sign on a Latin letter
    assert not is_name("\u0915\u0e31")  # a Thai mark on a Devanagari letter
    assert not is_name("\u0628\u0301")  # a Latin accent on an Arabic letter
    assert not is_name("a\u064e")  # an Arabic vowel on a Latin letter
    assert is_name("\u0628\u064e")  # ... and on an Arabic one
    assert not is_name("x\u20dd")  # an enclosing circle
    assert not is_name("Zalgo" + "\u0336\u0337\u0338\u0335\u0334")


def test_names_must_be_nfc():
    assert not is_name("Zoe\u0308")  # decomposed Zoë
    assert is_name("Zo\u00eb")
    assert not is_name("\u212b")  # ANGSTROM SIGN: NFC makes it Å
    assert is_name("\u00c5")


@pytest.mark.parametrize("name", [
    "ᎪᏞᏆᏟᎬ",  # Cherokee that reads ALICE
    "ꓮꓡꓲꓚꓰ",  # Lisu
    "ᐯᗩᑭ",  # Canadian syllabics
    "ⵔⵔ",  # Tifinagh
    "ㄒㄚ",  # Bopomofo
    "ㅣㅣ", "ㅋㅋ", "\u1100\u1161\u11ff",  # Hangul jamo: syllables only
    "\u2f00",  # Kangxi radical one, NFKC's 一
    "\u2e80",  # CJK radical
    "ｶﾀｶﾅ",  # half-width katakana
    "𝐚𝐥𝐢𝐜𝐞",  # mathematical bold
    "ǀǃ",  # Latin click letters
    "ɑlice", "ɡeorge",  # IPA look-alikes
    "〇〇",  # ideographic number zero
    "☕", "😀bob", "bob❤",  # symbols and emoji
    "a·b",  # middle dot
    "ϲοοl",  # Greek lunate sigma
], ids=repr)
def test_scripts_and_characters_outside_the_table_are_refused(name):
    assert not is_name(name)


@pytest.mark.parametrize(("name", "ok"), [
    ("\u05d0\u05d1", True), ("\u05d0" + "1", True), ("1" + "\u05d0", False),
    ("\u0639\u0644\u06cc", True), ("_\u0639\u0644\u06cc", False), ("\u0639\u0644\u06cc_", False),
    ("\u0639\u0644\u06cc_\u0631\u0636\u0627", True), ("\u0639\u0644\u06cc\u06f1\u06f2", True),
    ("\u0639\u0644\u06cc\u0661", True), ("\u0661\u0639\u0644\u06cc", False),
    ("\u05e9\u05b8\u05c1", True),  # ending on a point (NSM)
], ids=repr)
def test_right_to_left_names_start_with_a_letter_and_end_with_a_letter_or_digit(name, ok):
    assert is_name(name) is ok


# --- Legitimate names --------------------------------------------------------------------

LEGIT = [
    # Latin
    "alice", "Bob", "b0b_the-1st", "a.b@c", "bob/2", "Zoë", "José", "Łukasz", "Øyvind",
    "Nguyễn", "Şükrü", "Əli", "Ɓello", "ɓello", "ŋoma", "Ærøskøbing", "straße",
    # Cyrillic
    "Дмитрий", "Мария", "Ёжик", "Їжак", "Дмитрий_2", "катя", "Наташа",
    # Greek
    "Σωκράτης", "Ἀριστοτέλης", "Νίκος", "Ελένη",
    # Armenian, Georgian, Hebrew, Arabic, Persian, Urdu, Thaana
    "Արամ", "Հայկ", "გიორგი", "דוד", "שָׁלוֹם", "علی", "محمد", "رضا", "پریسا", "ژاله",
    "عمران", "علی۱۲", "ދިވެހި",
    # Indic, South-East Asian, Ethiopic
    "राम", "क्षत्रिय", "রবি", "ਗੁਰਮੀਤ", "ગીતા", "ଓଡ଼ିଆ", "அருண்", "రాము", "ಕನ್ನಡ", "മലയാളം",
    "සිංහල", "สมชาย", "ສົມພອນ", "བོད", "မြန်မာ", "ខ្មែរ", "ሰላም",
    # CJK, and the mixes UTS #39 allows
    "张伟", "日本語", "さくら", "ナルト", "田中さん", "taro太郎", "ジョン・スミス", "らーめん",
    "김민준", "이서연", "kim김민준", "金김민준", "ｔａｒｏ",
]


@pytest.mark.parametrize("name", LEGIT)
def test_names_in_the_worlds_scripts_are_accepted(name):
    assert name_problem(name, P.NICK_MAX) is None
    assert P.is_nickname(name) and P.is_room_name(name)


def test_legitimate_names_stay_distinct():
    distinct = [n for n in LEGIT if n not in ("ɓello", "ｔａｒｏ")]  # Ɓello's, taro's twins
    folds = [fold(n) for n in distinct]
    assert len(set(folds)) == len(folds), [
        (a, b) for a in distinct for b in distinct if a < b and fold(a) == fold(b)]


def test_accents_are_not_folded_away():
    assert len({fold(n) for n in ("Zoë", "Zoe", "José", "Jose", "Jösé")}) == 5


def test_digits_and_letters_are_not_folded_together():
    # Monospace terminals tell these apart; see the module doc.
    assert len({fold(n) for n in ("bob", "b0b", "bo6")}) == 3
    assert len({fold(n) for n in ("all", "a11", "aII", "a||")}) == 4
    assert fold("rn") != fold("m")


def test_mixed_scripts_allowed_by_uts39_highly_restrictive():
    assert is_name("taro太郎さくらナルト")  # Latin + Han + Hiragana + Katakana
    assert is_name("kim김민준金")  # Latin + Han + Hangul
    assert not is_name("김민준さくら")  # Hangul + Hiragana: no such mix
    assert not is_name("Дмитрийαβ")  # Cyrillic + Greek
    assert not is_name("राम\u0e2a")  # Devanagari + Thai
    assert not is_name("علیדוד")  # Arabic + Hebrew


# --- Folding -----------------------------------------------------------------------------


def test_case_does_not_make_another_user_or_room():
    assert fold("Alice") == fold("alice") == fold("ALICE")
    assert fold("Lounge") == fold("lounge")
    assert fold("Дмитрий") == fold("ДМИТРИЙ") == fold("дмитрий")
    assert fold("STRASSE") == fold("straße")
    assert fold("Ελένη") == fold("ελένη")


def test_the_three_greek_letters_fold_by_their_look_in_each_case():
    # Η looks like H and η like n; Ν like N and ν like v; Υ like Y and υ like u.
    assert (fold("Η"), fold("η"), fold("Ν"), fold("ν"), fold("Υ"), fold("υ")) == (
        "h", "n", "n", "v", "y", "u")
    assert fold("ΗΟΡ") == fold("hop") and fold("ηοορ") == fold("noop")


def test_native_digits_fold_to_ascii():
    assert fold("علی۱") == fold("علی١") == fold("علی1")  # Persian, Arabic-Indic, ASCII
    assert fold("राम१") == fold("राम1")
    assert fold("太郎１") == fold("太郎1")


def test_arabic_and_persian_twins_fold_together():
    assert fold("علي") == fold("علی") == fold("على")  # Arabic yeh, Persian yeh, alef maksura
    assert fold("كريم") == fold("کریم")  # kaf, keheh
    assert fold("عَلِيّ") == fold("علی")  # harakat are optional


def test_hebrew_points_and_ligatures_fold_away():
    assert fold("שָׁלוֹם") == fold("שלום")
    assert fold("\u05f0") == fold("\u05d5\u05d5")


def test_katakana_that_are_ideographs_twins_fold_together():
    assert fold("カ") == fold("力")
    assert fold("エロ") == fold("工口")
    assert fold("ラーメン") == fold("ラ一メン")
    assert fold("ヘベ") == fold("へべ")  # katakana and hiragana he, voiced too


def test_full_width_and_compatibility_forms_fold_to_plain():
    assert fold("ｔａｒｏ１２") == "taro12"
    assert fold("Ǆemal") == fold("DŽemal")


def test_fold_is_cached_and_fast():
    fold.cache_clear()
    for name in LEGIT:
        fold(name)
    assert fold.cache_info().misses == len(set(LEGIT))
    for name in LEGIT:
        fold(name)
    assert fold.cache_info().hits >= len(LEGIT)


# --- Properties --------------------------------------------------------------------------

ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=40)  # surrogates too
ALPHABETS = [
    string.ascii_letters + string.digits + "_-.@!'",
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯіїєґӏӀѕј0123_",
    "αβγδεζηθικλμνξοπρστυφχψωςάέήίόύώΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩἀἁᾳ0-9",
    "ابپتثجچحخدذرزژسشصضطظعغفقکگلمنوهیيىكةءأإآؤئ\u064e\u064f\u0650\u0651۰۱۲٣٤_",
    "אבגדהוזחטיכךלמםנןסעפףצץקרשת\u05b8\u05bc\u05c1װ",
    "太郎日本語一力工口二八あいうえおかがきくへべアイウエオカガキクヘベーロ・々abc123",
    "김민준이서연가나다라마바사abc金",
    "कखगघचछजझटठडढणतथदधनपफबभमयरलवशषसह\u093e\u093f\u0940\u0941\u094d\u0902०१",
    "กขคงจฉชซญดตถทธนบปผพฟภมยรลวศษสหอฮ\u0e31\u0e34\u0e35\u0e48\u0e49ะาเแโ๑",
    "aeiouAEIOU\u0300\u0301\u0302\u0303\u0308\u0327\u034féëøłşıəɓŋÆǅ\u0131",
]
NAMEISH = st.sampled_from(ALPHABETS).flatmap(
    lambda alphabet: st.text(st.sampled_from(alphabet), min_size=1, max_size=P.ROOM_MAX))


@given(ANY_TEXT, st.integers(0, 64))
@settings(max_examples=500)
def test_name_rules_never_raise_on_any_text(text, limit):
    assert isinstance(is_name_text(text, limit), bool)
    assert isinstance(P.is_nickname(text), bool) and isinstance(P.is_room_name(text), bool)
    problem = name_problem(text, limit)
    assert (problem is None) == is_name_text(text, limit)


@given(ANY_TEXT | NAMEISH)
@settings(max_examples=500)
def test_fold_never_raises_and_is_idempotent(text):
    key = fold(text)
    assert fold(key) == key


@given(NAMEISH)
@settings(max_examples=1000)
def test_the_fold_of_a_name_is_a_stable_clean_key(name):
    assume(is_name(name))
    key = fold(name)
    assert fold(key) == key
    assert key and key.isprintable() and " " not in key and "," not in key
    assert unicodedata.normalize("NFC", key) == key
    assert not any(N._ignorable(ord(c)) for c in key)
    assert fold(name.casefold()) == key or set(name) & set("ΗΝΥ")


@given(NAMEISH)
@settings(max_examples=500)
def test_case_never_matters_outside_the_three_greek_letters(name):
    assume(is_name(name) and not set(name) & set("ΗΝΥηνυ"))
    for variant in (name.upper(), name.lower(), name.swapcase()):
        if is_name(variant):
            assert fold(variant) == fold(name)


@given(st.text(st.characters(max_codepoint=0x7F), max_size=25))
def test_the_ascii_fast_path_agrees_with_the_full_rule(text):
    full = 0 < len(text) <= P.NICK_MAX and N._problem(text) is None
    assert is_name_text(text, P.NICK_MAX) is full


def test_every_allowed_character_folds_to_a_clean_stable_key():
    """All of the table (one ideograph in 50): as a name, or after a letter it may follow."""
    bases = ("", "a", "\u05d0", "\u0628", "\u0915", "\u3042")
    checked = 0
    for lo, hi, script in zip(N._STARTS, N._ENDS, N._SCRIPTS, strict=True):
        for cp in range(lo, hi + 1, 50 if script == "Han" else 1):
            name = next((b + chr(cp) for b in bases if is_name(b + chr(cp))), None)
            if name is None:
                continue
            checked += 1
            key = fold.__wrapped__(name)
            assert key.isprintable() and " " not in key and "," not in key, hex(cp)
            assert fold.__wrapped__(key) == key, hex(cp)
            assert unicodedata.normalize("NFC", key) == key, hex(cp)
    assert checked > 15_000


def test_old_rule_still_holds_for_every_name():
    # Whatever the old rule refused, the new one refuses too.
    for bad in ["", "x" * 21, "a b", "a,b", "/bob", "#!bob", "a\u00a0b", "a\u200bb", "a\x00"]:
        assert not P.is_nickname(bad)


# --- The script table itself -------------------------------------------------------------


def test_script_table_agrees_with_unicode_scripts():
    """Every allowed character's script, as the table says, is its Unicode Script or one
    of its Script_Extensions (fontTools ships Scripts.txt; it comes with matplotlib)."""
    F = pytest.importorskip("fontTools.unicodedata")
    wrong = []
    for lo, hi, script in zip(N._STARTS, N._ENDS, N._SCRIPTS, strict=True):
        mine = script.partition(":")[0]
        for cp in range(lo, hi + 1):
            char = chr(cp)
            if unicodedata.category(char) == "Cn":
                continue
            theirs = {F.script_name(F.script(char))} | {
                F.script_name(s) for s in F.script_extension(char)}
            if mine not in theirs:
                wrong.append(f"U+{cp:04X} {mine} {theirs}")
    assert not wrong, wrong[:20]


def test_script_of():
    assert script_of("a") == "Latin" and script_of("а") == "Cyrillic"
    assert script_of("1") == "Common" and script_of("\u0301").startswith("Inherited")
    assert script_of("\u3164") is None and script_of("Ꮮ") is None
