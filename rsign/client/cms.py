"""Detached CMS signatures (``.p7s``) over any files, with the key in rsign: the same flow as for
PDFs (all signed attributes first, then one Authorize and one SignHash), for documents that are
not PDFs. Verify with ``openssl cms -verify -binary -inform DER -in F.p7s -content F -CAfile root.pem``.
Needs the ``pdf`` extra (pyHanko builds the CMS)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rsign.client.pdf import PdfOptions, SigningContext, write_atomically

if TYPE_CHECKING:
    from rsign.client.sdk import Client, Otp


def sign_detached(
    client: Client, credential_id: str, files: Sequence[Path], otp: Otp, out_dir: Path, scheme: str | None = None
) -> list[Path]:
    """``out_dir/NAME.p7s`` for each file (at most the credential's multisign files per call)."""
    cred = client.credential(credential_id)
    if len(files) > max(1, cred.multisign):
        raise ValueError(f"at most {cred.multisign} files per one-time code with this credential")
    ctx = SigningContext(cred, PdfOptions(scheme=scheme))
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [out_dir / f"{f.name}.p7s" for f in files]

    async def run() -> None:
        attrs = []
        for f in files:
            digest = hashlib.new(ctx.md, f.read_bytes()).digest()
            # content type "data", signing time and message digest: CMS (RFC 5652) signed attributes
            attrs.append(await ctx.signer(0).signed_attrs(digest, ctx.md, is_pdf_sig=False))
        hashes = [hashlib.new(ctx.md, a.dump()).digest() for a in attrs]
        auth = client.authorize_with(credential_id, hashes, otp, ctx.md.upper())
        signatures = client.sign_hash(credential_id, auth, hashes, ctx.scheme, ctx.md.upper())
        for target, a, sig in zip(targets, attrs, signatures, strict=True):
            content = await ctx.signer(sig).async_sign_prescribed_attributes(ctx.md, signed_attrs=a)
            write_atomically(target, content.dump())

    asyncio.run(run())
    return targets
