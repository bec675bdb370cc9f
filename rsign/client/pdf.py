"""PDF signing through pyHanko with the key in rsign (PAdES B-B, or B-T with a timestamp authority).

Many documents under one activation: every document's signature placeholder is written and its
CMS signed attributes (which carry the document's digest) are formed and hashed first; then one
Authorize (one one-time code) covers all those hashes, one SignHash signs them, and each document
is finished with its signature (pyHanko's interrupted signing). Needs the ``pdf`` extra.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from asn1crypto import algos, cms, x509
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.sign import fields, signers
from pyhanko.sign.fields import SigSeedSubFilter
from pyhanko.sign.signers.pdf_byterange import PreparedByteRangeDigest
from pyhanko.sign.signers.pdf_signer import PdfTBSDocument
from pyhanko.sign.timestamps import HTTPTimeStamper
from pyhanko_certvalidator.registry import SimpleCertificateStore
from pyhanko_certvalidator.sig_validate import DefaultSignatureValidator, SignatureValidationContext

from rsign.client.errors import BadServerAnswer
from rsign.client.stamp import Stamp, stamp_style

if TYPE_CHECKING:
    from rsign.client.errors import CodeAlreadyUsed
    from rsign.client.sdk import Client, Credential, Otp

__all__ = ["PdfOptions", "Stamp", "mechanism", "placeholder_size", "sign_pdf_files", "signer_name"]


@dataclass(frozen=True)
class PdfOptions:
    tsa_url: str | None = None  # PAdES B-T: a signature timestamp from this RFC 3161 authority
    stamp: Stamp | None = None  # a visible signature; invisible without
    scheme: str | None = None  # RSA_PKCS1_V15, RSA_PSS or ECDSA; from the key when None
    reason: str | None = None
    location: str | None = None


def mechanism(key_algorithm: str, scheme: str, md: str) -> algos.SignedDigestAlgorithm:
    """The CMS signatureAlgorithm for what rsign computes: the server's RSA_PSS is MGF1 with the
    same hash and a salt as long as the hash (rsign.v1's contract)."""
    if scheme == "ECDSA":
        if not key_algorithm.startswith("EC"):
            raise ValueError(f"ECDSA needs an EC key; this credential's key is {key_algorithm}")
        return algos.SignedDigestAlgorithm({"algorithm": f"{md}_ecdsa"})
    if not key_algorithm.startswith("RSA"):
        raise ValueError(f"{scheme} needs an RSA key; this credential's key is {key_algorithm}")
    if scheme == "RSA_PKCS1_V15":
        return algos.SignedDigestAlgorithm({"algorithm": f"{md}_rsa"})
    if scheme == "RSA_PSS":
        params = algos.RSASSAPSSParams(
            {
                "hash_algorithm": {"algorithm": md},
                "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": md}},
                "salt_length": hashlib.new(md).digest_size,
                "trailer_field": "trailer_field_bc",
            }
        )
        return algos.SignedDigestAlgorithm({"algorithm": "rsassa_pss", "parameters": params})
    raise ValueError(f"unknown signature scheme {scheme!r}")


def signer_name(cred: Credential) -> str:
    """The common name in the credential's certificate (the holder's name, or the seal's)."""
    if not cred.certificates:
        return cred.holder_user_id or cred.credential_id
    names = x509.Certificate.load(cred.certificates[0]).subject.native
    return str(names.get("common_name") or cred.holder_user_id)


def placeholder_size(cert: x509.Certificate) -> int:
    """Bytes the raw signature may take, for the placeholder pyHanko reserves before signing: the
    modulus length for RSA; for ECDSA the longest DER (r, s) pair (each integer may need a 0x00)."""
    key = cert.public_key
    if key.algorithm == "rsa":
        return int(key.byte_size)
    return 2 * (int(key.byte_size) + 3) + 2


@dataclass
class _Pending:
    """One document between its digest and its signature."""

    source: Path
    target: Path
    prepared: PreparedByteRangeDigest
    tbs: PdfTBSDocument
    output: IO[bytes]
    signed_attrs: cms.CMSAttributes
    to_sign: bytes  # the hash of the DER signed attributes: what rsign signs


class SigningContext:
    """What signing with one credential needs: certificate chain, scheme, digest, placeholder size."""

    def __init__(self, cred: Credential, opts: PdfOptions) -> None:
        self.cred = cred
        self.opts = opts
        self.scheme = opts.scheme or cred.default_scheme
        self.md = cred.default_hash.lower()
        certs = [x509.Certificate.load(c) for c in cred.certificates]
        if not certs:
            raise ValueError(f"credential {cred.credential_id} has no certificate")
        self.cert = certs[0]
        self.registry = SimpleCertificateStore.from_certs(certs[1:])
        self.mech = mechanism(cred.key_algorithm, self.scheme, self.md)
        self.timestamper = HTTPTimeStamper(opts.tsa_url) if opts.tsa_url else None

    def signer(self, signature: bytes | int) -> signers.ExternalSigner:
        return signers.ExternalSigner(self.cert, self.registry, signature, signature_mechanism=self.mech)

    async def prepare(self, source: Path, target: Path) -> _Pending:
        with source.open("rb") as f:
            writer = IncrementalPdfFileWriter(f, strict=False)
            names = {name for name, _, _ in fields.enumerate_sig_fields(writer)}
            field = next(f"Signature{i}" for i in range(1, len(names) + 2) if f"Signature{i}" not in names)
            meta = signers.PdfSignatureMetadata(
                field_name=field,
                md_algorithm=self.md,
                subfilter=SigSeedSubFilter.PADES,
                reason=self.opts.reason,
                location=self.opts.location,
            )
            stamp = self.opts.stamp
            pdf_signer = signers.PdfSigner(
                meta,
                signer=self.signer(placeholder_size(self.cert)),
                timestamper=self.timestamper,
                stamp_style=stamp_style(stamp) if stamp else None,
                new_field_spec=fields.SigFieldSpec(field, on_page=stamp.page, box=stamp.box) if stamp else None,
            )
            text: dict[str, Any] | None = stamp.text_params() if stamp else None
            prepared, tbs, output = await pdf_signer.async_digest_doc_for_signing(writer, appearance_text_params=text)
        attrs = await self.signer(0).signed_attrs(prepared.document_digest, self.md, use_pades=True)
        to_sign = hashlib.new(self.md, attrs.dump()).digest()
        return _Pending(source, target, prepared, tbs, output, attrs, to_sign)

    def check(self, pending: Sequence[_Pending], signatures: Sequence[bytes]) -> None:
        """Each signature verifies over its document's signed attributes with the credential's
        certificate, before any document is finished: a broken or hostile server cannot make the
        client write a signed file whose signature is wrong."""
        if len(signatures) != len(pending):
            raise BadServerAnswer(
                f"the server returned {len(signatures)} signatures for {len(pending)} documents; nothing was written"
            )
        context = SignatureValidationContext(contextual_md_algorithm=self.md)
        for p, signature in zip(pending, signatures, strict=True):
            try:
                DefaultSignatureValidator().validate_signature(
                    signature, p.signed_attrs.dump(), self.cert.public_key, self.mech, context
                )
            except Exception:  # InvalidSignature, or bytes that are no signature at all (pyca's errors)
                raise BadServerAnswer(
                    f"the server's signature for {p.source.name} does not verify against credential"
                    f" {self.cred.credential_id}'s certificate; nothing was written for its group"
                ) from None

    async def finish(self, p: _Pending, signature: bytes) -> None:
        cms_obj = await self.signer(signature).async_sign_prescribed_attributes(
            self.md, signed_attrs=p.signed_attrs, timestamper=self.timestamper
        )
        await PdfTBSDocument.async_finish_signing(
            p.output, p.prepared, cms_obj, post_sign_instr=p.tbs.post_sign_instructions
        )
        p.output.seek(0)
        write_atomically(p.target, p.output.read())


def write_atomically(target: Path, data: bytes) -> None:
    # Never a half-written signed file under the final name.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def targets_for(files: Sequence[Path], out_dir: Path) -> list[Path]:
    """Where each signed file goes: its name, in ``out_dir``; never over an input."""
    targets = [out_dir / f.name for f in files]
    if len(set(targets)) != len(targets):
        raise ValueError("two input files have the same name; they would be signed into the same output file")
    inputs = {f.resolve() for f in files}
    for t in targets:
        if t.resolve() in inputs:
            raise ValueError(f"{t} is an input file: choose another output directory")
    return targets


def sign_pdf_files(
    client: Client,
    credential_id: str,
    files: Sequence[Path],
    otp: Otp,
    out_dir: Path,
    opts: PdfOptions,
    progress: Callable[[str, int, int], None] | None = None,
    on_used_code: Callable[[CodeAlreadyUsed], None] | None = None,
) -> list[Path]:
    """See ``Client.sign_pdfs``. ``progress(stage, done, total)``: stage is "prepare", "authorize",
    "sign" or "finish"; a group of ``multisign`` documents goes through all four before the next."""
    if not files:
        return []
    cred = client.credential(credential_id)
    ctx = SigningContext(cred, opts)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = targets_for(files, out_dir)
    report = progress or (lambda stage, done, total: None)
    per = max(1, cred.multisign)
    if not callable(otp) and len(files) > per:
        raise ValueError(
            f"{len(files)} documents need {-(-len(files) // per)} one-time codes (this credential signs at most"
            f" {per} per code): pass otp as a function that returns the next code"
        )

    async def run() -> None:
        done = 0
        for start in range(0, len(files), per):
            group = list(zip(files[start : start + per], targets[start : start + per], strict=True))
            pending = []
            for source, target in group:
                pending.append(await ctx.prepare(source, target))
                report("prepare", done + len(pending), len(files))
            hashes = [p.to_sign for p in pending]
            report("authorize", done, len(files))
            auth = client.authorize_with(credential_id, hashes, otp, ctx.md.upper(), on_used_code)
            report("sign", done, len(files))
            signatures = client.sign_hash(credential_id, auth, hashes, ctx.scheme, ctx.md.upper())
            ctx.check(pending, signatures)
            for p, sig in zip(pending, signatures, strict=True):
                await ctx.finish(p, sig)
                done += 1
                report("finish", done, len(files))

    asyncio.run(run())
    return targets
