"""Cut a field into translatable pieces and put the translations back, keeping its structure.

A field becomes a :class:`Layout`: verbatim parts (fenced code blocks, code-like lines, markdown
prefixes such as ``1.`` / ``-`` / ``#``, blank lines, newlines, text without letters) and
:class:`Piece` objects, one per line or, for lines longer than ``max_chars``, per group of sentences.
Inside a piece, protected spans (inline code, URLs, e-mail addresses, placeholders, numbers) are
replaced by mask tokens (``<x0>``, ``<x1>``, ...) before a model sees the text, and restored after.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

PROTECT_PATTERNS: dict[str, str] = {
    "code": r"`[^`\n]+`",
    "url": r"(?:https?://|www\.)[^\s<>()\[\]]*[^\s<>()\[\].,;:!?'\"]",
    "email": r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+",
    "placeholder": r"\{\{[^{}\n]*\}\}|\$\{[^{}\n]*\}|\{[A-Za-z_0-9]*\}|%[sdif]|</?[A-Za-z][^<>\n]*>",
    "number": r"(?<![\w.,])[-+]?\d+(?:[.,:/]\d+)*%?(?![\w])",
}
PROTECT_KINDS = tuple(PROTECT_PATTERNS)

# A markdown line prefix: indentation, bullets, numbers ("1." "2)" "a)"), headings, quotes.
_PREFIX = re.compile(r"^(\s*(?:(?:[-*+•]|\d{1,3}[.)]|[A-Za-z][.)](?=\s)|#{1,6}|>)\s+)*)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_START = re.compile(
    r"^\s*(?:def|class|import|from\s+\S+\s+import|return|print\(|console\.|function|var|let|const|public|"
    r"private|static|#include|SELECT|INSERT|UPDATE|DELETE|CREATE)\b.*[(){}:;=]"
    r"|^\s*(?:import\s+[\w.]+(?:\s+as\s+\w+)?|from\s+[\w.]+\s+import\s+[\w., ]+)\s*$"
)
_CODE_CHARS = set("{}[]();=<>_\\/*&|$")
# A sentence ends at . ! ? … (plus closing quotes/brackets) before whitespace and a capital or digit.
_SENTENCE_END = re.compile(r"(?<=[.!?…])([\"'”’)\]]*)\s+(?=[\"'“‘(\[]?[A-Z0-9\x00])")
_ABBREV = re.compile(r"(?:\b(?:e\.g|i\.e|etc|vs|Mr|Mrs|Ms|Dr|Prof|St|No|Fig|approx|U\.S|a\.m|p\.m)\.|\b[A-Z]\.)$")
_LETTER = re.compile(r"[^\W\d_]")


def normalize(text: str) -> str:
    """The lookup form of a text: NFC, whitespace runs collapsed to one space, stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def has_letters(text: str) -> bool:
    return bool(_LETTER.search(text))


def protect_regex(kinds: list[str] | tuple[str, ...]) -> re.Pattern[str] | None:
    """One alternation of the chosen protected-span patterns (``None`` when none are chosen)."""
    unknown = sorted(set(kinds) - set(PROTECT_PATTERNS))
    if unknown:
        raise ValueError(f"unknown protect kinds {unknown}; expected some of {list(PROTECT_PATTERNS)}")
    return re.compile("|".join(f"(?:{PROTECT_PATTERNS[k]})" for k in PROTECT_PATTERNS if k in kinds)) if kinds else None


def looks_like_code(line: str) -> bool:
    """Heuristic for unfenced code lines (frequent in Alpaca outputs): keep them verbatim."""
    stripped = line.strip()
    if not stripped:
        return False
    if _CODE_START.match(line) or stripped[-1] in ";{}" or stripped.startswith(("//", "/*", "<?", "$ ")):
        return True
    return len(stripped) >= 8 and sum(c in _CODE_CHARS for c in stripped) / len(stripped) >= 0.15


@dataclass
class Piece:
    """One unit sent to a backend: ``text`` is the original, ``masked`` what a model sees."""

    text: str
    masked: str
    spans: list[str] = field(default_factory=list)


class Masker:
    """Replace protected spans with numbered tokens and put them back."""

    def __init__(self, protect: list[str] | tuple[str, ...], mask: str = "<x{i}>"):
        if "{i}" not in mask:
            raise ValueError(f"mask {mask!r} must contain '{{i}}'")
        self.regex = protect_regex(protect)
        self.mask = mask
        before, after = mask.split("{i}", 1)
        loose = lambda s: r"\s*".join(re.escape(c) for c in s.strip())  # noqa: E731 (models add spaces)
        self.token_re = re.compile(loose(before) + r"\s*(\d+)\s*" + loose(after), re.IGNORECASE)

    def spans(self, text: str) -> list[str]:
        """The protected spans of ``text``, in order."""
        return [m.group(0) for m in self.regex.finditer(text)] if self.regex else []

    def piece(self, text: str) -> Piece:
        if not self.regex:
            return Piece(text, text)
        spans: list[str] = []

        def sub(m: re.Match[str]) -> str:
            spans.append(m.group(0))
            return self.mask.format(i=len(spans) - 1)

        return Piece(text, self.regex.sub(sub, text), spans)

    def unmask(self, piece: Piece, translated: str) -> tuple[str, bool]:
        """Restore the spans in a translation of ``piece.masked``; ``ok`` is False if tokens broke."""
        if not piece.spans:
            return translated, True
        seen: list[int] = []

        def sub(m: re.Match[str]) -> str:
            i = int(m.group(1))
            seen.append(i)
            return piece.spans[i] if i < len(piece.spans) else m.group(0)

        restored = self.token_re.sub(sub, translated)
        return restored, sorted(seen) == list(range(len(piece.spans)))


@dataclass
class Layout:
    """A field as verbatim strings and pieces, in order; ``join`` rebuilds it from translations."""

    parts: list[str | Piece]

    @property
    def pieces(self) -> list[Piece]:
        return [p for p in self.parts if isinstance(p, Piece)]

    def join(self, translations: list[str]) -> str:
        it = iter(translations)
        return "".join(p if isinstance(p, str) else next(it) for p in self.parts)


class Segmenter:
    """Split fields into layouts (see the module docstring)."""

    def __init__(self, max_chars: int = 400, protect: list[str] | tuple[str, ...] = PROTECT_KINDS,
                 mask: str = "<x{i}>"):
        self.max_chars = max_chars
        self.masker = Masker(protect, mask)

    def split(self, text: str) -> Layout:
        parts: list[str | Piece] = []
        in_fence = False
        for line in text.splitlines(keepends=True):
            body = line.rstrip("\r\n")
            newline = line[len(body):]
            if _FENCE.match(body):
                in_fence = not in_fence
                parts.append(line)
            elif in_fence or looks_like_code(body):
                parts.append(line)
            else:
                parts.extend(self._line(body))
                if newline:
                    parts.append(newline)
        return Layout(_merge_strings(parts))

    def _line(self, line: str) -> list[str | Piece]:
        prefix = _PREFIX.match(line).group(1)
        rest = line[len(prefix):]
        content = rest.rstrip()
        trailing = rest[len(content):]
        bare = self.masker.regex.sub(" ", content) if self.masker.regex else content
        if not has_letters(bare):
            return [line]
        out: list[str | Piece] = [prefix]
        for i, chunk in enumerate(self._chunks(content)):
            if i:
                out.append(" ")
            out.append(self.masker.piece(chunk))
        out.append(trailing)
        return out

    def _chunks(self, content: str) -> list[str]:
        """The line itself, or its sentences packed greedily into chunks of at most ``max_chars``."""
        if len(content) <= self.max_chars:
            return [content]
        # Protected spans (URLs, decimals) must not be cut: hide them while looking for sentence ends.
        hidden = self.masker.regex.sub(lambda m: "\x00" * len(m.group(0)), content) if self.masker.regex else content
        cuts, start = [], 0
        for m in _SENTENCE_END.finditer(hidden):
            if not _ABBREV.search(hidden[start:m.start()]):
                cuts.append((start, m.end(1)))
                start = m.end()
        sentences = [content[a:b].strip() for a, b in cuts] + [content[start:].strip()]
        chunks: list[str] = []
        for s in filter(None, sentences):
            if chunks and len(chunks[-1]) + 1 + len(s) <= self.max_chars:
                chunks[-1] += " " + s
            else:
                chunks.append(s)
        return chunks


def _merge_strings(parts: list[str | Piece]) -> list[str | Piece]:
    out: list[str | Piece] = []
    for p in parts:
        if isinstance(p, str):
            if not p:
                continue
            if out and isinstance(out[-1], str):
                out[-1] += p
                continue
        out.append(p)
    return out
