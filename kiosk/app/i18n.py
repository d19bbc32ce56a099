"""Translation: every UI string goes through `_()` (Python's gettext, no extra dependency).

Catalogues live in kiosk/app/translations/<lang>/LC_MESSAGES/messages.mo; a missing one falls back to the
English source strings. `python -m kiosk.app.i18n` writes messages.pot from the Python modules and the
station templates (`_("...")` and `ngettext("...", "...", n)` calls), ready for msginit/msgmerge and msgfmt.
"""

from __future__ import annotations

import ast
import gettext
import re
import sys
from pathlib import Path
from typing import Any

LOCALE_DIR = Path(__file__).resolve().parent / "translations"
_ROOT = Path(__file__).resolve().parents[2]
_translations: gettext.NullTranslations = gettext.NullTranslations()


def setup(language: str) -> None:
    global _translations
    _translations = gettext.translation("messages", LOCALE_DIR, languages=[language], fallback=True)


def _(text: str, **values: Any) -> str:
    translated = _translations.gettext(text)
    return translated % values if values else translated


def ngettext(singular: str, plural: str, n: int, **values: Any) -> str:
    translated = _translations.ngettext(singular, plural, n)
    return translated % {"num": n, **values}  # num is always there: most plurals show the count


def template_ngettext(singular: str, plural: str, n: int) -> str:
    """The form for `n`, not yet formatted: Jinja's newstyle ngettext fills in %(num)s and the call's other
    values itself, escaping them (formatting here first fails on those values: KeyError)."""
    return _translations.ngettext(singular, plural, n)


_FORMAT = re.compile(r"%\(\w+\)")
Message = tuple[int, str, str | None]  # line, msgid, msgid_plural (None: not a plural message)


def _python_messages(text: str) -> list[Message]:
    """`_("...")` and `ngettext("...", "...", n)` calls (also as `i18n._`), literal arguments only."""
    found: list[tuple[int, int, str, str | None]] = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        texts = [
            a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else None for a in node.args
        ]
        if name == "_" and texts[:1] and texts[0] is not None:
            found.append((node.lineno, node.col_offset, texts[0], None))
        elif name == "ngettext" and len(texts) >= 2 and texts[0] is not None and texts[1] is not None:
            found.append((node.lineno, node.col_offset, texts[0], texts[1]))
    return [(line, message, plural) for line, _col, message, plural in sorted(found)]


def _jinja_messages(text: str) -> list[Message]:
    """The same calls in a Jinja template, found by Jinja's own parser."""
    from jinja2 import Environment
    from jinja2.ext import extract_from_ast

    tree = Environment(extensions=["jinja2.ext.i18n"], autoescape=True).parse(text)
    found: list[Message] = []
    for line, function, strings in extract_from_ast(tree, gettext_functions=("_", "ngettext")):
        texts = strings if isinstance(strings, tuple) else (strings,)
        if function == "_" and isinstance(texts[0], str):
            found.append((line, texts[0], None))
        elif (
            function == "ngettext"
            and len(texts) >= 2
            and isinstance(texts[0], str)
            and isinstance(texts[1], str)
        ):
            found.append((line, texts[0], texts[1]))
    return found


def _po(text: str) -> str:
    """`text` as a PO string (one line; msgfmt and Python's gettext read these escapes)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r") + '"'


def extract(paths: list[Path]) -> str:
    """A messages.pot for every `_("literal")` and `ngettext("singular", "plural", n)` in `paths` (Python
    and Jinja templates), in the order first seen. A plural message gets msgid_plural, msgstr[0] and [1]."""
    found: dict[str, tuple[str | None, list[str]]] = {}  # msgid -> (msgid_plural, places)
    for path in paths:
        text = path.read_text(encoding="utf-8")
        messages = _python_messages(text) if path.suffix == ".py" else _jinja_messages(text)
        for line, message, plural in messages:
            place = f"{path.relative_to(_ROOT) if path.is_relative_to(_ROOT) else path}:{line}"
            known = found.setdefault(message, (plural, []))
            if known[0] != plural:
                raise ValueError(f"{place}: {message!r} is used with and without the same plural form")
            known[1].append(place)
    out = ['msgid ""', 'msgstr ""', '"Content-Type: text/plain; charset=UTF-8\\n"', ""]
    for message, (plural, places) in found.items():
        out.append("#: " + " ".join(places))
        if _FORMAT.search(message + (plural or "")):
            out.append("#, python-format")  # msgfmt --check then holds translations to the same %(name)s
        out.append(f"msgid {_po(message)}")
        if plural is None:
            out.append('msgstr ""')
        else:
            out += [f"msgid_plural {_po(plural)}", 'msgstr[0] ""', 'msgstr[1] ""']
        out.append("")
    return "\n".join(out)


def sources() -> list[Path]:
    """The files `main` extracts from: the app's Python modules and the station templates."""
    found = sorted((_ROOT / "kiosk" / "app").glob("*.py"))
    return found + sorted((_ROOT / "web" / "templates" / "station").glob("*.html"))


def main() -> None:
    files = sources()
    target = LOCALE_DIR / "messages.pot"
    target.write_text(extract(files), encoding="utf-8")
    print(f"wrote {target} from {len(files)} files", file=sys.stderr)


if __name__ == "__main__":
    main()
