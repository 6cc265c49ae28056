"""Nicknames and room names that cannot pass for one another.

Two questions are answered here, for nicknames and room names alike:

* ``is_name_text(value, limit)``: may this string be a name at all?
* ``fold(name)``: the key under which names are unique. Two names with the same fold are
  the same name: one user, one room. The broker keys users, rooms and accounts by it and
  shows names as they were typed.

The threat (from a review): names that look exactly like someone else's, so a reader
cannot tell who is talking. Each of these logged in beside ``alice``:

* ``alice`` + U+034F COMBINING GRAPHEME JOINER: invisible, it looks exactly like her;
* ``аlice`` with U+0430 CYRILLIC SMALL LETTER A: mixed scripts, identical glyphs;
* ``alice`` + a Hangul filler (U+3164, U+115F, U+1160, U+FFA0): a blank "letter";
* and, though nobody tried it yet, ``аӏісе``, all Cyrillic (а, palochka ӏ for the l, і,
  с, е): one script, so no mixing rule refuses it, and still it reads alice.

The rule, after UTS #39 (Unicode Security Mechanisms) and UAX #31 (identifiers), kept
small enough to read and with no dependency: Python has ``unicodedata`` but no script
property, so the scripts live in a compact range table below.

A name (``is_name_text``) is
  1. today's rule: 1..limit code points, printable (``str.isprintable``: no controls, no
     format characters Cf such as ZWJ, ZWNJ, soft hyphen, bidi controls, no separators),
     no space, no comma, not starting with ``/`` or ``#!``;
  2. in NFC, the form every input method produces (so one text has one spelling);
  3. free of default-ignorable code points (they draw nothing: U+034F, variation
     selectors, Hangul fillers, Khmer inherent vowels, Mongolian selectors, tags...);
  4. made of allowed characters only: ASCII letters, digits and punctuation (the
     "Common" characters that go with any script; full-width digits too), and the
     letters, digits and combining marks of the scripts UAX #31 recommends for
     identifiers (Table 5): Latin, Greek, Cyrillic, Armenian, Hebrew, Arabic, Thaana,
     Devanagari, Bengali, Gurmukhi, Gujarati, Oriya, Tamil, Telugu, Kannada, Malayalam,
     Sinhala, Thai, Lao, Tibetan, Myanmar, Georgian, Ethiopic, Khmer, Han, Hiragana,
     Katakana, Hangul. Within them, only the modern letters: no IPA or phonetic
     extensions, no archaic Greek, no Hangul jamo (only the syllables U+AC00..U+D7A3, so
     no fillers and no lone ``ㅣ`` that reads as ``l``), no CJK radicals (they look like
     the ideographs), no half-width katakana, no Latin click letters (``ǀ`` is an ``l``).
     Other scripts, symbols and emoji are refused: Cherokee, Canadian syllabics, Lisu,
     Tifinagh and the like are where most Latin look-alikes live. Bopomofo is refused
     too (``ㄒ``, ``ㄚ``, ``ㄥ`` look like T, Y, L and it may be mixed with Latin);
  5. a combining mark sits on a letter of its own script (or, for the generic accents
     U+0300..U+036F, on a Latin, Greek or Cyrillic letter; for the kana voicing marks,
     on kana), at most 4 in a row, never the same mark twice in a row;
  6. one script, or a mix UTS #39 calls "highly restrictive": any subset of Latin + Han
     + Hiragana + Katakana (Japanese) or of Latin + Han + Hangul (Korean). Common
     characters go with anything. So ``Дмитрий`` and ``Dmitri_2`` pass, ``Dмитрий`` and
     ``аlice`` do not; ``taro太郎`` passes (CJK is double width in a terminal, so it
     cannot stand in for a Latin letter);
  7. if it has right-to-left letters (Hebrew, Arabic, Thaana), it starts with one and
     ends with one, a digit or a mark (the IDNA bidi rule, RFC 5893 §2): otherwise a
     terminal that reorders text can show ``1א`` and ``א1`` the same.

The fold (``fold``) is the uniqueness key. It is, repeated until it no longer changes:
  NFKC (full-width and other compatibility forms become plain: ``ａｌｉｃｅ`` -> alice),
  casefold (``Alice``, ``ALICE`` and ``alice`` are one user, and ``Lounge`` and
  ``lounge`` one room, as IRC does with its CASEMAPPING), then NFD, a skeleton mapping of
  the letters of other scripts that look like Latin ones (Cyrillic ``а е о р с у х і ј ѕ
  ӏ һ ԁ ԛ ԝ ...``, Greek ``α ο ρ ι κ χ ν υ η ...``, a few Armenian ones) and of a few
  confusables inside a script or an allowed mix (Arabic ``ي ى`` -> Persian ``ی`` and
  ``ك`` -> ``ک``; katakana ``ー カ エ ロ ニ ハ`` -> the ideographs ``一 力 工 口 二 八``,
  katakana ``ヘ`` -> hiragana ``へ``; Latin dotless ``ı`` -> ``i``), every decimal digit to
  its ASCII digit (``علی۱`` = ``علی١`` = ``علی1``), optional vowel points dropped
  (Arabic harakat, Hebrew niqqud), then NFC. So whole-script ``аӏісе`` folds to
  ``alice`` and is refused as taken (or registered) while she holds the name. A small
  letter maps to the Latin letter its capital looks like, if it does (Cyrillic ``в н м т``
  fold as ``b h m t`` after ``В Н М Т``), so case pairs fold together; but a case pair
  whose capital and small look like two different Latin letters (Greek ``Η``/``η`` like
  H/n, ``Ν``/``ν`` like N/v, ``Υ``/``υ`` like Y/u) maps each by its own look: those three
  are the only letters where fold is not case-insensitive. A fold is a key, never shown:
  it may mix scripts (``Дмитрий`` folds to ``дmиtpий``); it only needs to be equal for
  look-alikes.

Choices, and why:
  * Accents stay: ``Zoë`` is not ``Zoe`` and ``José`` is not ``Jose`` (they are spelt
    differently and look different; stripping them would merge real names). Vowel points
    in Arabic and Hebrew are optional in writing, so they are dropped.
  * ``0``/``o``, ``1``/``l``/``I``, ``rn``/``m`` are not folded: the clients are terminals,
    whose monospace fonts tell them apart (a slashed or dotted zero, a serifed I, ``rn``
    two cells wide), and folding them would merge ``bob1``/``bobl``, ``neo``/``ne0``.
  * ZWJ and ZWNJ are refused everywhere (they are Cf). Persian writers who use a ZWNJ
    inside a compound name write it without.
  * Refusing beats folding where a character has no honest use in a name (invisible
    ones, fillers, lone combining marks); folding beats refusing where both spellings
    are legitimate (``Alice``/``alice``, Cyrillic ``сом`` / Latin ``com``: the second to
    arrive is told the name is taken).
Not covered: look-alikes between two whole scripts other than Latin and
Cyrillic/Greek/Armenian (Thai/Lao, say), and within-script homoglyphs beyond those
listed; names in Unicode newer than this Python's ``unicodedata`` are unassigned to it
and refused as unprintable.
"""

from __future__ import annotations

import unicodedata
from bisect import bisect_right
from functools import lru_cache

__all__ = ["fold", "is_name_text", "name_problem", "script_of"]

# --- Scripts -----------------------------------------------------------------------------

COMMON = "Common"  # goes with any script
INHERITED = "Inherited"  # a combining mark that takes its base letter's script

LATIN, GREEK, CYRILLIC, ARMENIAN = "Latin", "Greek", "Cyrillic", "Armenian"
HEBREW, ARABIC, THAANA = "Hebrew", "Arabic", "Thaana"
HAN, HIRAGANA, KATAKANA, HANGUL = "Han", "Hiragana", "Katakana", "Hangul"

# The mixes of scripts UTS #39 §5.2 "highly restrictive" allows (Bopomofo is refused).
_MIXES = (frozenset({LATIN, HAN, HIRAGANA, KATAKANA}), frozenset({LATIN, HAN, HANGUL}))

# Allowed characters, by script: inclusive code point ranges. Within a script range only
# letters, decimal digits and combining marks count (see _SCRIPT_CATEGORIES); the gaps
# are the characters left out on purpose. Checked against Unicode's Scripts.txt by
# tests/test_names.py where fontTools is installed.
_SCRIPT_RANGES: dict[str, tuple[tuple[int, int], ...]] = {
    LATIN: (
        (0x0041, 0x005A), (0x0061, 0x007A),
        (0x00C0, 0x00D6), (0x00D8, 0x00F6), (0x00F8, 0x0148),  # not U+0149 ŉ (-> ʼn)
        (0x014A, 0x0183),  # not U+0184/5 tone six (a b)
        (0x0186, 0x01A6),  # not U+01A7/8 tone two (a 2)
        (0x01A9, 0x01A9), (0x01AC, 0x01BA),  # not ƪ ƫ; not ƻ Ƽ ƽ ƾ ƿ (2, 5, 5, ?, p)
        (0x01C4, 0x01F6),  # not U+01C0..3 clicks ǀ ǁ ǂ ǃ (l, ll, +, !)
        (0x01F8, 0x0240),  # not Ƿ wynn (p)
        (0x0243, 0x024F),  # not Ɂ ɂ glottal stops (?)
        (0x1E00, 0x1EFF),  # Latin Extended Additional: Vietnamese, Welsh...
        (0xFF21, 0xFF3A), (0xFF41, 0xFF5A),  # full-width, as CJK input methods type it
    ),
    GREEK: (
        (0x0386, 0x0386), (0x0388, 0x038A), (0x038C, 0x038C), (0x038E, 0x03A1),
        (0x03A3, 0x03CE),  # modern Greek: no archaic letters, no symbols such as ϐ ϲ ϳ
        (0x1F00, 0x1FFF),  # polytonic
    ),
    CYRILLIC: ((0x0400, 0x0481), (0x048A, 0x052F)),  # not ҂ nor the Church Slavonic marks
    ARMENIAN: ((0x0531, 0x0556), (0x0560, 0x0588)),
    HEBREW: (
        (0x05B0, 0x05BD), (0x05BF, 0x05BF), (0x05C1, 0x05C2), (0x05C4, 0x05C5),
        (0x05C7, 0x05C7),  # vowel points (not the cantillation marks)
        (0x05D0, 0x05EA), (0x05EF, 0x05F2),
    ),
    ARABIC: (
        (0x0620, 0x063F),  # not U+0640 tatweel, a stretch that pads a name invisibly
        (0x0641, 0x0669),  # letters, harakat (Inherited in Scripts.txt), Arabic-Indic digits
        (0x066E, 0x06D3), (0x06D5, 0x06D5),  # not the Quranic marks U+06D6..06ED
        (0x06EE, 0x06FC), (0x06FF, 0x06FF),  # Persian digits U+06F0..06F9
        (0x0750, 0x077F),
    ),
    THAANA: ((0x0780, 0x07B1),),
    "Devanagari": ((0x0900, 0x0950), (0x0955, 0x0963), (0x0966, 0x097F)),  # not ॑ ॒ ॓ ॔ । ॥
    "Bengali": ((0x0980, 0x09FF),),
    "Gurmukhi": ((0x0A00, 0x0A7F),),
    "Gujarati": ((0x0A80, 0x0AFF),),
    "Oriya": ((0x0B00, 0x0B7F),),
    "Tamil": ((0x0B80, 0x0BFF),),
    "Telugu": ((0x0C00, 0x0C7F),),
    "Kannada": ((0x0C80, 0x0CFF),),
    "Malayalam": ((0x0D00, 0x0D7F),),
    "Sinhala": ((0x0D80, 0x0DFF),),
    "Thai": ((0x0E01, 0x0E3A), (0x0E40, 0x0E5B)),
    "Lao": ((0x0E80, 0x0EFF),),
    "Tibetan": ((0x0F00, 0x0FD4), (0x0FD9, 0x0FFF)),
    "Myanmar": ((0x1000, 0x109F),),
    "Georgian": ((0x10A0, 0x10FA), (0x10FD, 0x10FF), (0x1C90, 0x1CBF)),
    "Ethiopic": ((0x1200, 0x139F),),
    "Khmer": ((0x1780, 0x17B3), (0x17B6, 0x17FF)),  # not the invisible U+17B4/5
    HIRAGANA: ((0x3041, 0x3096), (0x309D, 0x309F)),
    # With the Common ・ and ー, which are used with kana only.
    KATAKANA: ((0x30A1, 0x30FF), (0x31F0, 0x31FF)),
    HAN: (
        (0x3005, 0x3005),  # 々 (not 〇, a circle, nor the Hangzhou numerals)
        (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF),
        (0x20000, 0x2A6DF), (0x2A700, 0x2EBEF), (0x30000, 0x323AF),
    ),
    HANGUL: ((0xAC00, 0xD7A3),),  # syllables only: no jamo, so no fillers
}
# Within a script, what a character may be: letters, decimal digits, combining marks.
_SCRIPT_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Nd", "Mn", "Mc"})
# Common: ASCII (today's rule) and full-width digits. Inherited: the generic accents and
# the kana voicing marks, with the scripts whose letters they may sit on.
_COMMON_RANGES = ((0x0021, 0x0040), (0x005B, 0x0060), (0x007B, 0x007E), (0xFF10, 0xFF19))
# Katakana's middle dot (Po) separates the parts of a foreign name: ジョン・スミス.
_ALSO_ALLOWED = frozenset({0x30FB})
_INHERITED: dict[str, tuple[tuple[int, int], frozenset[str]]] = {
    "accents": ((0x0300, 0x036F), frozenset({LATIN, GREEK, CYRILLIC})),
    "voicing": ((0x3099, 0x309A), frozenset({HIRAGANA, KATAKANA})),
}
_RTL = frozenset({HEBREW, ARABIC, THAANA})

# Default_Ignorable_Code_Point (DerivedCoreProperties.txt): they draw nothing. Most are
# also outside the table, or Cf; this list is the belt to those braces.
_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
    (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)

MARKS_IN_A_ROW_MAX = 4


def _table() -> tuple[list[int], list[int], list[str]]:
    """The sorted, non-overlapping (start, end, script) ranges, as three parallel lists."""
    rows = [(lo, hi, script) for script, spans in _SCRIPT_RANGES.items() for lo, hi in spans]
    # The small letters of allowed Latin capitals that live in the IPA block (ɓ ɗ ɛ ə ɔ ŋ
    # of African languages and Azerbaijani), but not the rest of IPA (ɑ ɡ ɩ look-alikes).
    latin = _SCRIPT_RANGES[LATIN]
    for cp in range(0x0250, 0x02B0):
        upper = chr(cp).upper()
        if len(upper) == 1 and any(lo <= ord(upper) <= hi for lo, hi in latin):
            rows.append((cp, cp, LATIN))
    rows += [(lo, hi, COMMON) for lo, hi in _COMMON_RANGES]
    rows += [(lo, hi, INHERITED + ":" + group) for group, ((lo, hi), _) in _INHERITED.items()]
    rows.sort()
    for (_, hi, a), (lo, _, b) in zip(rows, rows[1:], strict=False):
        assert hi < lo, f"script ranges overlap: {a} and {b} at U+{lo:04X}"
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


_STARTS, _ENDS, _SCRIPTS = _table()
_IGNORABLE_STARTS = [lo for lo, _ in _IGNORABLE]


def script_of(char: str) -> str | None:
    """The script a character counts as in a name: a script name, ``"Common"``,
    ``"Inherited:<group>"``, or None if it is not allowed in names at all."""
    cp = ord(char)
    i = bisect_right(_STARTS, cp) - 1
    if i < 0 or cp > _ENDS[i]:
        return None
    return _SCRIPTS[i]


def _ignorable(cp: int) -> bool:
    i = bisect_right(_IGNORABLE_STARTS, cp) - 1
    return i >= 0 and cp <= _IGNORABLE[i][1]


# --- Validation --------------------------------------------------------------------------


def is_name_text(value: str, limit: int) -> bool:
    """May ``value`` be a name of at most ``limit`` characters? (The module doc's rule.)"""
    if not 0 < len(value) <= limit:
        return False
    if value.isascii():  # the common case, and nothing below can refuse plain ASCII
        return (value.isprintable() and " " not in value and "," not in value
                and not value.startswith(("/", "#!")))
    return _problem(value) is None


def name_problem(value: str, limit: int) -> str | None:
    """Why ``value`` is not a name (a short English phrase), or None if it is one."""
    if not 0 < len(value) <= limit:
        return f"must be 1 to {limit} characters"
    return _problem(value)


@lru_cache(maxsize=4096)
def _problem(value: str) -> str | None:
    if not value.isprintable():
        return "has an invisible or control character"
    if " " in value or "," in value:
        return "has a space or a comma"
    if value.startswith(("/", "#!")):
        return "starts with / or #!"
    if unicodedata.normalize("NFC", value) != value:
        return "is not in NFC (compose its accents)"
    scripts: set[str] = set()
    base: str | None = None  # script of the letter that marks would sit on
    marks, previous, rtl = 0, "", False
    for char in value:
        cp = ord(char)
        if _ignorable(cp):
            return f"has an invisible character (U+{cp:04X})"
        script = script_of(char)
        if script is None:
            return f"has a character not allowed in names (U+{cp:04X})"
        category = unicodedata.category(char)
        if category[0] == "M":
            if base is None:
                return f"has a combining mark on no letter (U+{cp:04X})"
            if char == previous:
                return f"repeats a combining mark (U+{cp:04X})"
            marks += 1
            if marks > MARKS_IN_A_ROW_MAX:
                return "has too many combining marks in a row"
            if script.startswith(INHERITED):
                allowed = _INHERITED[script.partition(":")[2]][1]
                if base not in allowed:
                    return f"has a combining mark that does not go with {base} (U+{cp:04X})"
            elif script != base:
                return f"has a {script} mark on a {base} letter (U+{cp:04X})"
        elif script == COMMON:
            base, marks = None, 0
        else:
            if category not in _SCRIPT_CATEGORIES and cp not in _ALSO_ALLOWED:
                return f"has a character not allowed in names (U+{cp:04X})"
            scripts.add(script)
            rtl = rtl or script in _RTL
            base, marks = (script if category[0] == "L" else None), 0
        previous = char
    if len(scripts) > 1 and not any(scripts <= mix for mix in _MIXES):
        return "mixes scripts: " + " and ".join(sorted(scripts))
    if rtl:
        if unicodedata.bidirectional(value[0]) not in ("R", "AL"):
            return "a right-to-left name must start with a letter"
        if unicodedata.bidirectional(value[-1]) not in ("R", "AL", "EN", "AN", "NSM"):
            return "a right-to-left name must end with a letter or a digit"
    return None


# --- Folding -----------------------------------------------------------------------------

# Letters of other scripts that look like Latin ones, as casefold leaves them (small),
# mapped to the Latin letter that their capital looks like where it looks like one (so a
# case pair folds together), else to what the small letter looks like.
_LOOKALIKES = {
    # Cyrillic
    "а": "a", "в": "b", "г": "r", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o",
    "п": "n", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ь": "b", "ѕ": "s",
    "і": "i", "ј": "j", "ѡ": "w", "ѵ": "v", "һ": "h", "ӏ": "l", "ү": "y", "ԁ": "d",
    "ԛ": "q", "ԝ": "w", "ӕ": "æ", "ә": "ə", "ө": "ɵ", "ҽ": "e",
    # Greek (η, ν, υ by their small look: see _CAPITALS)
    "α": "a", "β": "b", "γ": "y", "ε": "e", "ζ": "z", "η": "n", "ι": "i", "κ": "k",
    "μ": "m", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w",
    # Armenian
    "օ": "o", "ս": "u", "հ": "h", "ո": "n", "զ": "q", "ց": "g", "տ": "s", "լ": "l",
    # Latin
    "ı": "i", "ɩ": "i", "ǝ": "ə",
    # Arabic: Arabic yeh and alef maksura look like Persian yeh (by position), kaf like
    # keheh, Kurdish ae like heh
    "ي": "ی", "ى": "ی", "ك": "ک", "ە": "ه",
    # Hebrew: the Yiddish ligatures are their two letters
    "װ": "וו", "ױ": "וי", "ײ": "יי",
    # Katakana that are ideographs' twins, and the one that is hiragana's
    "ー": "一", "カ": "力", "エ": "工", "ロ": "口", "ニ": "二", "ハ": "八", "タ": "夕",
    "ト": "卜", "オ": "才", "ヌ": "又", "ム": "厶", "ヒ": "匕", "メ": "乂", "ヨ": "彐",
    "ヘ": "へ",
}
# Capitals whose look differs from their small letter's: mapped before casefold.
_CAPITALS = str.maketrans({"Η": "h", "Ν": "n", "Υ": "y"})
# Optional vowel points: Arabic harakat and superscript alef, Hebrew niqqud.
_POINTS = [*range(0x064B, 0x0653), *range(0x0656, 0x0660), 0x0670,
           *range(0x05B0, 0x05BE), 0x05BF, 0x05C1, 0x05C2, 0x05C4, 0x05C5, 0x05C7]


def _skeleton_table() -> dict[int, str | None]:
    table: dict[int, str | None] = {ord(k): v for k, v in _LOOKALIKES.items()}
    table.update(dict.fromkeys(_POINTS))
    for script, spans in _SCRIPT_RANGES.items():
        if script == HAN:
            continue  # no digits there, and 90,000 code points to look at
        for lo, hi in spans:
            for cp in range(lo, hi + 1):
                char = chr(cp)
                if unicodedata.category(char) == "Nd" and cp > 0x7F:
                    table[cp] = str(unicodedata.decimal(char))
    return table


_SKELETON = _skeleton_table()


@lru_cache(maxsize=16384)
def fold(name: str) -> str:
    """The key under which ``name`` is unique (the module doc says how). Idempotent:
    ``fold(fold(n)) == fold(n)``. Meant for valid names; any text folds without error."""
    key = name
    for _ in range(8):  # NFKC and casefold settle in a pass or two
        again = _fold_once(key)
        if again == key:
            break
        key = again
    return key


def _fold_once(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_CAPITALS)
    text = unicodedata.normalize("NFKC", text.casefold())
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", text).translate(_SKELETON))
