"""Translation: every UI string goes through `_()` (Python's gettext, no extra dependency).

Catalogues live in kiosk/app/translations/<lang>/LC_MESSAGES/messages.mo; a missing one falls back to the
English source strings. `python -m kiosk.app.i18n` writes messages.pot from the Python modules and the
station templates (`_("...")` calls), ready for msginit/msgmerge and msgfmt.
"""

from __future__ import annotations

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


_CALL = re.compile(r"""\b_\(\s*(?P<q>["'])(?P<text>(?:\\.|(?!(?P=q)).)*)(?P=q)""", re.S)


def extract(paths: list[Path]) -> str:
    """A messages.pot for every `_("literal")` in `paths` (Python and Jinja alike)."""
    found: dict[str, list[str]] = {}
    for path in paths:
        text = path.read_text(encoding="utf-8")
        for match in _CALL.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.setdefault(match.group("text"), []).append(f"{path.relative_to(_ROOT)}:{line}")
    out = ['msgid ""', 'msgstr ""', '"Content-Type: text/plain; charset=UTF-8\\n"', ""]
    for message, places in found.items():
        out.append("#: " + " ".join(places))
        out.append(f'msgid "{message}"')
        out.append('msgstr ""')
        out.append("")
    return "\n".join(out)


def main() -> None:
    sources = sorted((_ROOT / "kiosk" / "app").glob("*.py"))
    sources += sorted((_ROOT / "web" / "templates" / "station").glob("*.html"))
    target = LOCALE_DIR / "messages.pot"
    target.write_text(extract(sources), encoding="utf-8")
    print(f"wrote {target} from {len(sources)} files", file=sys.stderr)


if __name__ == "__main__":
    main()
