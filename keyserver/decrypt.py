"""`keyserver decrypt`: open a sealed report on a workstation with a user API token.

Everything happens in memory until the bundle has been authenticated and validated; only then is it
written, all at once, into a new directory. A tampered or foreign file writes nothing.
"""

from __future__ import annotations

import io
from pathlib import Path

from kiosk import keyserver_client
from kiosk.sealing import rncryptor
from kiosk.sealing.sealed_file import InvalidSealedFile, decrypt_payload, read_sealed


class DecryptError(RuntimeError):
    pass


def decrypt_file(sealed_path: Path, out_dir: Path, *, url: str, token: str) -> list[Path]:
    # Imported here: the bundle module pulls in the report renderers, which the server itself never needs.
    from kiosk.report.bundle import InvalidBundle, extract_bundle, read_bundle

    try:
        with open(sealed_path, "rb") as source:
            sealed = read_sealed(source)
            if sealed.header.encryption != "envelope" or sealed.wrapped_key is None:
                raise DecryptError("this report is passphrase-sealed; the key server holds no key for it")
            try:
                data_key = keyserver_client.unwrap(url, token, sealed.header, sealed.wrapped_key)
            except keyserver_client.KeyServerError as exc:
                raise DecryptError(f"the key server refused: {exc.message} ({exc.reason})") from exc
            plaintext = io.BytesIO()
            decrypt_payload(source, sealed, plaintext, data_key=data_key)
        entries = read_bundle(plaintext.getvalue())
    except OSError as exc:
        raise DecryptError(f"cannot read {sealed_path}: {exc.strerror or exc}") from exc
    except InvalidSealedFile as exc:
        raise DecryptError(f"refusing a damaged or altered file: {exc}") from exc
    except rncryptor.InvalidMessage as exc:
        raise DecryptError(f"refusing a damaged or altered file: {exc}") from exc
    except InvalidBundle as exc:
        raise DecryptError(f"the decrypted report is not valid: {exc}") from exc
    try:
        return extract_bundle(entries, out_dir)
    except FileExistsError as exc:
        raise DecryptError(str(exc)) from exc
