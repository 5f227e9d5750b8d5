"""Hand-written PDF files for the document tests: text pages (Helvetica), an outline, and the
broken kinds a PDF reader meets (truncated, bytes flipped, a recursive page tree, a flate bomb,
an encryption dictionary that no empty password opens)."""
from __future__ import annotations

import zlib


def _esc(line: str) -> str:
    return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _assemble(objects: list[bytes], trailer_extra: str = "") -> bytes:
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R {trailer_extra}>>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def _stream(data: bytes, extra: str = "") -> bytes:
    return f"<< /Length {len(data)} {extra}>>\nstream\n".encode() + data + b"\nendstream"


def make_pdf(pages: list[list[str]], outline: list[tuple[str, int]] | None = None, encrypt: bool = False,
             content: bytes | None = None, content_extra: str = "") -> bytes:
    """A PDF with one page per list of lines; `outline`: (title, 0-based page) bookmarks."""
    n_pages = len(pages)
    first_page = 4  # 1 catalog, 2 pages, 3 font, then (page, content) pairs, then the outline
    kids = " ".join(f"{first_page + 2 * i} 0 R" for i in range(n_pages))
    outline_at = first_page + 2 * n_pages
    cat = "<< /Type /Catalog /Pages 2 0 R" + (f" /Outlines {outline_at} 0 R" if outline else "") + " >>"
    objs = [cat.encode(), f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode(),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"]
    for i, lines in enumerate(pages):
        ops = "BT /F1 11 Tf 14 TL 72 740 Td " + " ".join(f"({_esc(line)}) Tj T*" for line in lines) + " ET"
        objs.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
                    f"/Contents {first_page + 2 * i + 1} 0 R >>".encode())
        objs.append(_stream(content if content is not None else ops.encode("latin-1"), content_extra))
    if outline:
        items = [outline_at + 1 + k for k in range(len(outline))]
        objs.append(f"<< /Type /Outlines /First {items[0]} 0 R /Last {items[-1]} 0 R /Count {len(items)} >>".encode())
        for k, (title, page) in enumerate(outline):
            links = (f" /Prev {items[k - 1]} 0 R" if k else "") + (f" /Next {items[k + 1]} 0 R" if k + 1 < len(items) else "")
            objs.append(f"<< /Title ({_esc(title)}) /Parent {outline_at} 0 R /Dest [{first_page + 2 * page} 0 R /Fit]{links} >>".encode())
    extra = ""
    if encrypt:
        objs.append(b"<< /Filter /Standard /V 1 /R 2 /Length 40 /P -4 /O <" + b"41" * 32 + b"> /U <" + b"42" * 32 + b"> >>")
        extra = f"/Encrypt {len(objs)} 0 R /ID [<00112233445566778899aabbccddeeff> <00112233445566778899aabbccddeeff>] "
    return _assemble(objs, extra)


def recursive_pdf() -> bytes:
    """A page tree whose /Kids holds itself."""
    return _assemble([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [2 0 R 3 0 R] /Count 2 >>",
                      b"<< /Type /Pages /Parent 2 0 R /Kids [2 0 R 3 0 R] /Count 2 >>"])


def bomb_pdf(mib: int = 512) -> bytes:
    """One page whose content stream inflates to `mib` MiB of spaces."""
    z = zlib.compressobj(9)
    block = b" " * (1 << 20)
    data = b"".join(z.compress(block) for _ in range(mib)) + z.flush()
    return make_pdf([["x"]], content=data, content_extra="/Filter /FlateDecode ")


def flipped(data: bytes, seed: int = 0, share: float = 0.02) -> bytes:
    import random

    rnd = random.Random(seed)
    out = bytearray(data)
    for _ in range(max(1, int(len(out) * share))):
        i = rnd.randrange(16, len(out))
        out[i] ^= 1 << rnd.randrange(8)
    return bytes(out)
