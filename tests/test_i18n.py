"""kiosk.app.i18n: the shipped messages.pot is a fresh extraction; `_()` and `ngettext()` calls in Python
and Jinja both reach it; and a catalogue made from it (msginit/msgfmt, as docs/station.md says) loads."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kiosk import config as kiosk_config
from kiosk.app import create_app, i18n

POT = i18n.LOCALE_DIR / "messages.pot"


def test_the_shipped_pot_is_a_fresh_extraction() -> None:
    assert POT.read_text(encoding="utf-8") == i18n.extract(i18n.sources()), (
        "kiosk/app/translations/messages.pot is stale: run `python -m kiosk.app.i18n` and commit it"
    )


def test_the_pot_has_the_templates_plural_messages() -> None:
    text = POT.read_text(encoding="utf-8")
    assert (
        '#, python-format\nmsgid "%(num)d recipient"\nmsgid_plural "%(num)d recipients"\n'
        'msgstr[0] ""\nmsgstr[1] ""\n' in text
    )
    assert 'msgid_plural "%(num)s photos sealed and queued for %(where)s."' in text
    assert "kiosk/app/i18n.py" not in text, "the extractor's own docstrings are not UI text"


def test_python_and_jinja_calls(tmp_path: Path) -> None:
    module = tmp_path / "screen.py"
    module.write_text(
        '"""Docs may show _("not a message") and ngettext("a", "b", n)."""\n'
        "from kiosk.app import i18n\n"
        "from kiosk.app.i18n import _, ngettext\n"
        "\n"
        "def f(n, name):\n"
        '    a = _("Joined " "by Python")\n'
        "    b = i18n._('It\\'s \"quoted\"\\tand\\nsplit', x=1)\n"
        '    c = ngettext("%(num)d file", "%(num)d files", n)\n'
        "    d = _(name)  # not a literal: nothing to extract\n"
        '    e = _(f"{name}")\n'
        '    return _("Shared"), a, b, c, d, e\n',
        encoding="utf-8",
    )
    template = tmp_path / "page.html"
    template.write_text(
        "<p>{{ _('Shared') }}</p>\n"
        '<p>{{ ngettext("%(num)s photo for %(where)s", "%(num)s photos for %(where)s", n, where=w) }}</p>\n'
        '<p>{{ _(label) }} {{ _("Photo %(n)s", n=loop.index) }}</p>\n',
        encoding="utf-8",
    )
    pot = i18n.extract([module, template])
    entries = pot.split("\n\n")
    assert entries[0] == 'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"'
    assert entries[1:] == [
        f'#: {module}:6\nmsgid "Joined by Python"\nmsgstr ""',
        f'#: {module}:7\nmsgid "It\'s \\"quoted\\"\\tand\\nsplit"\nmsgstr ""',
        f'#: {module}:8\n#, python-format\nmsgid "%(num)d file"\nmsgid_plural "%(num)d files"\n'
        'msgstr[0] ""\nmsgstr[1] ""',
        f'#: {module}:11 {template}:1\nmsgid "Shared"\nmsgstr ""',
        f'#: {template}:2\n#, python-format\nmsgid "%(num)s photo for %(where)s"\n'
        'msgid_plural "%(num)s photos for %(where)s"\nmsgstr[0] ""\nmsgstr[1] ""',
        f'#: {template}:3\n#, python-format\nmsgid "Photo %(n)s"\nmsgstr ""\n',
    ]


def test_one_message_cannot_be_both_plain_and_plural(tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text('{{ _("%(num)s photo") }} {{ ngettext("%(num)s photo", "%(num)s photos", n) }}\n')
    with pytest.raises(ValueError, match="with and without"):
        i18n.extract([page])


def test_the_apps_templates_fill_in_plurals_and_escape_their_values(tmp_path: Path) -> None:
    """Jinja's newstyle ngettext formats (and escapes) itself: the app must give it the unformatted form."""
    config = tmp_path / "kiosk.toml"
    config.write_text(
        f'[station]\nid = "s1"\ndata_dir = "{tmp_path / "data"}"\n\n[[destination]]\nname = "share"\n'
        f'type = "folder"\npath = "{tmp_path}"\nencryption = "passphrase"\n'
        f'passphrase_file = "{tmp_path / "k"}"\n'
    )
    app = create_app(kiosk_config.load(config), start=False)
    try:
        render = app.jinja_env.from_string
        photos = render(
            '{{ ngettext("%(num)s photo sealed and queued for %(where)s.", '
            '"%(num)s photos sealed and queued for %(where)s.", n, where=where) }}'
        )
        assert (
            photos.render(n=1, where="<b>Share</b>")
            == "1 photo sealed and queued for &lt;b&gt;Share&lt;/b&gt;."
        )
        assert photos.render(n=3, where="Share") == "3 photos sealed and queued for Share."
        recipients = render('{{ ngettext("%(num)d recipient", "%(num)d recipients", n) }}')
        assert [recipients.render(n=n) for n in (1, 2)] == ["1 recipient", "2 recipients"]
    finally:
        app.extensions["station"].stop()
    assert i18n.ngettext("%(num)d file", "%(num)d files", 2) == "2 files", "Python callers get num filled in"


@pytest.mark.skipif(shutil.which("msgfmt") is None, reason="GNU gettext's msgfmt is not installed")
def test_a_catalogue_made_from_the_pot_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The docs' recipe (a .po from the .pot, msgfmt to .mo, [ui] language) with a French plural rule."""
    header = (
        'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n'
        '"Language: fr\\n"\n"Plural-Forms: nplurals=2; plural=(n > 1);\\n"\n'
    )
    po = POT.read_text(encoding="utf-8").split("\n\n", 1)[1]
    po = po.replace(
        'msgid "%(num)d recipient"\nmsgid_plural "%(num)d recipients"\nmsgstr[0] ""\nmsgstr[1] ""',
        'msgid "%(num)d recipient"\nmsgid_plural "%(num)d recipients"\n'
        'msgstr[0] "%(num)d destinataire"\nmsgstr[1] "%(num)d destinataires"',
    )
    po = po.replace('msgid "Wrong PIN."\nmsgstr ""', 'msgid "Wrong PIN."\nmsgstr "Code PIN erroné."')
    folder = tmp_path / "fr" / "LC_MESSAGES"
    folder.mkdir(parents=True)
    (folder / "messages.po").write_text(header + "\n" + po, encoding="utf-8")
    done = subprocess.run(
        ["msgfmt", "--check-format", "-o", str(folder / "messages.mo"), str(folder / "messages.po")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr

    monkeypatch.setattr(i18n, "LOCALE_DIR", tmp_path)
    monkeypatch.setattr(i18n, "_translations", i18n._translations)  # restored after the test
    i18n.setup("fr")
    assert i18n._("Wrong PIN.") == "Code PIN erroné."
    assert [i18n.ngettext("%(num)d recipient", "%(num)d recipients", n) for n in (0, 1, 2)] == [
        "0 destinataire",
        "1 destinataire",
        "2 destinataires",
    ]
    assert i18n._("Yes") == "Yes", "untranslated messages stay English"
