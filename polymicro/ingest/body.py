"""Reading an ingest body: media type, content coding, size caps.

The raw body is capped by ``MAX_CONTENT_LENGTH`` (werkzeug answers 413 while reading);
the *decoded* body by ``INGEST_MAX_BODY_BYTES``.  Decompression runs in bounded steps
(``zlib``'s ``max_length``) and stops at the cap, so a gzip bomb (a few KiB inflating to
gigabytes) costs at most the cap in memory and time before its 413.  Snappy blocks carry
their decoded length in a header, which is checked before anything is inflated.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from polymicro.errors import DomainError

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_STEP = 1 << 20  # inflate at most 1 MiB per step


class Undecodable(DomainError):
    """The body cannot be read as the protocol's message (400)."""

    code = 400


class TooLarge(DomainError):
    code = 413


class UnsupportedMedia(DomainError):
    code = 415


@dataclass(frozen=True)
class Body:
    media_type: str  # PROTOBUF or JSON
    data: bytes  # decoded (decompressed) bytes


def media_type(content_type: str | None, accepted: tuple[str, ...]) -> str:
    """The body's media type if it is one of ``accepted``; else 415 naming them."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime in accepted:
        return mime
    shown = mime or "none"
    raise UnsupportedMedia(
        f"Content-Type {shown!r} is not accepted here; send {' or '.join(accepted)}."
    )


def decode_content(raw: bytes, encoding: str | None, cap: int) -> bytes:
    """``raw`` without its content coding (identity, gzip, deflate), at most ``cap``
    bytes once decoded (else :class:`TooLarge`)."""
    coding = (encoding or "identity").strip().lower()
    if coding in ("", "identity"):
        data = raw
    elif coding in ("gzip", "x-gzip"):
        data = _inflate(raw, cap, wbits=31)
    elif coding == "deflate":
        data = _inflate(raw, cap, wbits=47)  # zlib (RFC 1950) or gzip header, detected
    else:
        raise UnsupportedMedia(
            f"Content-Encoding {coding!r} is not supported; send gzip, deflate or none."
        )
    if len(data) > cap:
        raise TooLarge(_too_large(cap))
    return data


def _too_large(cap: int) -> str:
    return f"The body is larger than {cap} bytes once decompressed; send smaller batches."


def _inflate(raw: bytes, cap: int, wbits: int) -> bytes:
    """Inflate one or more concatenated members, never more than ``cap + 1`` bytes."""
    out = bytearray()
    pending = raw
    while True:
        inflater = zlib.decompressobj(wbits)
        chunk = pending
        try:
            while chunk:
                out += inflater.decompress(chunk, min(_STEP, cap + 1 - len(out)))
                if len(out) > cap:
                    raise TooLarge(_too_large(cap))
                chunk = inflater.unconsumed_tail
                if inflater.eof:
                    break
            if not inflater.eof:
                out += inflater.flush()  # output still held for input already consumed
                if len(out) > cap:
                    raise TooLarge(_too_large(cap))
        except zlib.error as exc:
            raise Undecodable(f"The body is not valid {_name(wbits)} data ({exc}).") from exc
        if not inflater.eof:
            raise Undecodable(f"The body is truncated {_name(wbits)} data.")
        pending = inflater.unused_data
        if not pending:
            return bytes(out)


def _name(wbits: int) -> str:
    return "gzip" if wbits == 31 else "deflate"


def snappy_block(raw: bytes, cap: int) -> bytes:
    """Decode a snappy block (Loki's protobuf pushes), refusing a declared size over
    ``cap`` before inflating anything."""
    import cramjam

    size, shift = 0, 0
    for index, byte in enumerate(raw[:10]):
        size |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
        if index == 9:
            raise Undecodable("The body is not valid snappy data (bad length header).")
    else:
        raise Undecodable("The body is not valid snappy data (empty).")
    if size > cap:
        raise TooLarge(_too_large(cap))
    try:
        return bytes(cramjam.snappy.decompress_raw(raw))
    except Exception as exc:  # cramjam raises its own DecompressionError
        raise Undecodable("The body is not valid snappy data.") from exc


def read(request, accepted: tuple[str, ...], cap: int, snappy_protobuf: bool = False) -> Body:
    """The request's body, decoded, if its media type is one of ``accepted``.

    ``snappy_protobuf``: a protobuf body is one snappy block (Loki's push format,
    sent without a ``Content-Encoding``)."""
    mime = media_type(request.headers.get("Content-Type"), accepted)
    raw = request.get_data(cache=False)
    if mime == PROTOBUF and snappy_protobuf:
        data = snappy_block(raw, cap) if raw else b""
    else:
        data = decode_content(raw, request.headers.get("Content-Encoding"), cap)
    return Body(mime, data)
