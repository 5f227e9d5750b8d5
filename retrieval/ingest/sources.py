"""Turn the paths a user gives into SourceDocuments (or Skips with a reason, never silence).

Walks folders recursively in sorted order, honours .gitignore files found in walked folders and
`exclude` globs (gitignore syntax), follows symlinked folders once (loops are detected by device
and inode), and decodes files as strict UTF-8 keeping newlines exactly as in the file so that
chunk offsets reproduce the file's text. A leading UTF-8 BOM is removed and offsets count from
the character after it.
"""
from __future__ import annotations

import hashlib
import html
import os
import posixpath
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pathspec

from retrieval.errors import InvalidInputError
from retrieval.ingest.documents.convert import FORMATS as DOCUMENT_FORMATS
from retrieval.ingest.documents.convert import document_items
from retrieval.ingest.documents.options import DocumentOptions
from retrieval.ingest.fsread import SWAPPED, escapes, open_nonblocking, read_error, read_regular
from retrieval.ingest.jsonl import jsonl_documents
from retrieval.types import Skip, SourceDocument

ALWAYS_SKIP_DIRS = frozenset({".git", ".hg", ".svn", ".venv", "__pycache__", "node_modules", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".tox"})
MARKDOWN_EXT = {".md", ".markdown", ".mdown", ".mkd"}
RST_EXT = {".rst", ".rest"}
TEXT_EXT = {".txt", ".text", ""}
HTML_EXT = {".html", ".htm", ".xhtml"}
JSONL_EXT = {".jsonl"}
CODE_EXT = {
    ".py": "python", ".pyi": "python", ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".tsx": "typescript", ".go": "go", ".rs": "rust", ".java": "java", ".kt": "kotlin", ".scala": "scala",
    ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp", ".cs": "csharp",
    ".rb": "ruby", ".php": "php", ".swift": "swift", ".m": "objc", ".lua": "lua", ".pl": "perl", ".r": "r", ".jl": "julia",
    ".sh": "shell", ".bash": "shell", ".zsh": "shell", ".fish": "shell", ".ps1": "powershell", ".sql": "sql",
    ".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json", ".ini": "ini", ".cfg": "ini", ".conf": "ini",
    ".xml": "xml", ".css": "css", ".scss": "css", ".tex": "latex", ".el": "lisp", ".clj": "clojure", ".hs": "haskell",
    ".ml": "ocaml", ".ex": "elixir", ".exs": "elixir", ".erl": "erlang", ".dart": "dart", ".vue": "vue", ".svelte": "svelte",
    ".ipynb": "json", ".proto": "protobuf", ".cmake": "cmake", ".mk": "make", ".gradle": "groovy", ".nix": "nix", ".zig": "zig",
}
NON_TEXT_EXT = {
    **dict.fromkeys(".png .jpg .jpeg .gif .bmp .ico .webp .svg .tif .tiff .heic .psd".split(), "image"),
    **dict.fromkeys(".zip .tar .gz .tgz .bz2 .xz .7z .rar .zst .whl .jar .egg".split(), "archive"),
    **dict.fromkeys(".pdf .doc .docx .xls .xlsx .ppt .pptx .odt .ods .odp .epub .rtf".split(), "office/PDF document"),
    **dict.fromkeys(".mp3 .mp4 .wav .flac .ogg .avi .mov .mkv .webm .m4a".split(), "audio/video"),
    **dict.fromkeys(".ttf .otf .woff .woff2 .eot".split(), "font"),
    **dict.fromkeys(
        ".so .dll .dylib .exe .o .a .pyc .pyo .class .bin .dat .npy .npz .pt .pth .ckpt .safetensors .gguf .onnx "
        ".parquet .arrow .feather .sqlite .sqlite3 .db .faiss .index .pkl .pickle .h5 .hdf5".split(),
        "binary data",
    ),
}
ALWAYS_SKIP_FILES = frozenset({".gitignore", ".DS_Store", "Thumbs.db", "desktop.ini"})
CODE_NAMES = {"Makefile": "make", "Dockerfile": "docker", "CMakeLists.txt": "cmake", "Justfile": "make"}
_MAGIC = [
    (b"%PDF", "PDF document"), (b"\x89PNG", "PNG image"), (b"\xff\xd8\xff", "JPEG image"), (b"GIF8", "GIF image"),
    (b"PK\x03\x04", "ZIP archive (docx/xlsx/jar/whl are zip files)"), (b"\x1f\x8b", "gzip archive"), (b"\x7fELF", "ELF executable"),
    (b"BZh", "bzip2 archive"), (b"\xfd7zXZ", "xz archive"), (b"7z\xbc\xaf", "7z archive"), (b"SQLite format 3", "SQLite database"),
    (b"\x93NUMPY", "numpy array"), (b"RIFF", "RIFF media file"), (b"OggS", "Ogg media file"), (b"ID3", "MP3 audio"),
    (b"\xd0\xcf\x11\xe0", "MS Office (OLE) document"), (b"\xca\xfe\xba\xbe", "Java class / Mach-O binary"), (b"MZ", "Windows executable"),
]


def file_hash(path: str | Path) -> str:
    """sha256 hex of a file's bytes, streamed (what SourceDocument.content_hash holds for a file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def kind_of(path: str) -> tuple[str, str | None]:
    """(kind, language) from a file name: markdown | rst | text | code | html | jsonl | pdf | docx | pptx | notebook."""
    name = posixpath.basename(path)
    if name in CODE_NAMES:
        return "code", CODE_NAMES[name]
    ext = posixpath.splitext(name)[1].lower()
    if ext in DOCUMENT_FORMATS:
        return DOCUMENT_FORMATS[ext][0], None
    if ext in MARKDOWN_EXT:
        return "markdown", None
    if ext in RST_EXT:
        return "rst", None
    if ext in HTML_EXT:
        return "html", None
    if ext in JSONL_EXT:
        return "jsonl", None
    if ext in CODE_EXT:
        return "code", CODE_EXT[ext]
    return "text", None  # .txt, no extension, or unknown: indexed as text when it decodes as UTF-8


def _binary_reason(head: bytes) -> str | None:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16 text; re-encode the file as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return f"binary file ({what}); convert it to text first"
    if b"\x00" in head:
        return "binary file (contains NUL bytes)"
    return None


def _decode(data: bytes) -> tuple[str | None, str | None]:
    """(text, None) or (None, reason). Newlines are kept as they are; a leading BOM is removed."""
    reason = _binary_reason(data[:8192])
    if reason:
        return None, reason
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8 at byte {exc.start}; re-encode the file as UTF-8"
    return (text[1:] if text.startswith("\ufeff") else text), None


_TITLE = re.compile(r"<title\b[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)


def _html_title(text: str) -> str | None:
    """The <title>, found cheaply (re-indexing walks every file; the chunker parses HTML fully)."""
    m = _TITLE.search(text, 0, 1 << 20)
    title = " ".join(html.unescape(re.sub(r"<[^>]*>", "", m.group(1))).split()) if m else ""
    return title or None


def load_file(
    path: str | Path, source: str, max_file_bytes: int = 20_000_000, *, dir_fd: int | None = None, follow: bool = True,
    full_path: str | None = None, confine: Sequence[str] | None = None, documents: DocumentOptions | None = None,
) -> Iterator[SourceDocument | Skip]:
    """Read one file into SourceDocuments (a JSONL file gives one per record) or a Skip.

    JSONL files are records, not one document, so for them the size limit applies per record.
    `path` is relative to `dir_fd` when given; `follow=False` refuses a symlink there; with
    `confine` (real folders) a file whose real path lies outside them is never read.
    """
    kind, language = kind_of(source)
    ext = posixpath.splitext(source)[1].lower()
    if ext in DOCUMENT_FORMATS:  # PDF, office files, notebooks: converted (retrieval/ingest/documents)
        raw = read_regular(os.fspath(path), source, dir_fd=dir_fd, follow=follow, full_path=full_path or os.fspath(path),
                           max_bytes=max_file_bytes, confine=confine)
        yield from [raw] if isinstance(raw, Skip) else document_items(source, ext, raw, documents)
        return
    if ext in NON_TEXT_EXT:
        yield Skip(source, f"unsupported format ({NON_TEXT_EXT[ext]}, {ext}); convert it to text first or exclude it")
        return
    data = read_regular(os.fspath(path), source, dir_fd=dir_fd, follow=follow, full_path=full_path or os.fspath(path),
                         max_bytes=None if kind == "jsonl" else max_file_bytes, confine=confine)
    if isinstance(data, Skip):
        yield data
        return
    if kind == "jsonl":
        reason = _binary_reason(data[:8192])
        if reason:
            yield Skip(source, reason)
        else:
            yield from jsonl_documents(source, data, max_file_bytes)
        return
    text, reason = _decode(data)
    if reason or text is None:
        yield Skip(source, reason or "cannot decode")
        return
    metadata = {"language": language} if language else {}
    title = _html_title(text) if kind == "html" else None
    yield SourceDocument(source, text, kind, hashlib.sha256(data).hexdigest(), title=title, metadata=metadata)


class _Ignores:
    """The exclude globs plus every .gitignore met on the way down, deepest deciding first."""

    def __init__(self, exclude: Sequence[str]) -> None:
        try:
            self.exclude = pathspec.GitIgnoreSpec.from_lines([e for e in exclude if e.strip()])
        except Exception as exc:  # pathspec raises several types for bad patterns
            raise InvalidInputError(f"bad --exclude pattern: {exc}", "use gitignore syntax, e.g. --exclude '*.log' --exclude 'build/'") from exc

    @staticmethod
    def load(dir_fd: int) -> pathspec.GitIgnoreSpec | None:
        data = read_regular(".gitignore", ".gitignore", dir_fd=dir_fd, follow=True, full_path=".gitignore", max_bytes=1 << 24,
                             confine=None)
        if isinstance(data, Skip):
            return None
        try:
            return pathspec.GitIgnoreSpec.from_lines(data.decode("utf-8", errors="replace").splitlines())
        except Exception:  # a malformed .gitignore must not stop indexing
            return None

    def root_matches(self, root: str) -> bool:
        """True when a pattern already matches the folder the user named (e.g. `/tmp/build/proj`
        with --exclude 'build/'): then patterns are matched below the root only, since the user
        asked for that folder explicitly."""
        return bool(self.exclude.match_file(root.rstrip("/") + "/"))

    def ignored(
        self, rel: str, source: str | None, is_dir: bool, stack: list[tuple[str, pathspec.GitIgnoreSpec]]
    ) -> bool:
        suffix = "/" if is_dir else ""
        for candidate in (rel, source):
            if candidate and self.exclude.match_file(candidate + suffix):
                return True
        for base, spec in reversed(stack):  # deepest .gitignore first, like git
            sub = rel[len(base) + 1 :] if base else rel
            result = spec.check_file(sub + suffix)
            if result.include is not None:
                return bool(result.include)
        return False


def _join(root: str, rel: str) -> str:
    if not rel:
        return root
    return rel if root == "." else posixpath.join(root, rel)


def _list_dir(dir_fd: int) -> list[os.DirEntry]:
    """The entries of an open folder, sorted by name (a seam for the swap-race tests)."""
    return sorted(os.scandir(dir_fd), key=lambda e: e.name)


class _Walk:
    """One walk by folder descriptors: every entry is opened relative to its folder's descriptor, and
    an entry the listing showed as no link is opened with O_NOFOLLOW, so swapping a file or folder
    for a link mid-walk never leads outside. Links seen in the listing are followed (checked
    against `confine` when given)."""

    def __init__(self, root: str, ignores: _Ignores, max_file_bytes: int, confine: Sequence[str] | None,
                 documents: DocumentOptions | None = None) -> None:
        self.root, self.ignores, self.max_file_bytes, self.confine = root, ignores, max_file_bytes, confine
        self.documents = documents
        self.seen_dirs: set[tuple[int, int]] = set()
        self.match_source = not ignores.root_matches(root)
        self.stack: list[tuple[str, pathspec.GitIgnoreSpec]] = []

    def enter(self, name: str, parent_fd: int | None, directory: str, rel: str, follow: bool) -> Iterator[SourceDocument | Skip]:
        shown = _join(self.root, rel) or self.root
        try:
            fd = open_nonblocking(name, parent_fd, follow=follow, directory=True)
        except OSError as exc:
            reason = read_error(exc)
            yield Skip(shown, reason if reason == SWAPPED else f"cannot list folder: {reason}")
            return
        try:
            escaped = escapes(fd, directory, self.confine) if follow and self.confine is not None else None
            if escaped:
                yield Skip(shown, escaped)
            else:
                yield from self.visit(fd, directory, rel)
        finally:
            os.close(fd)

    def visit(self, dir_fd: int, directory: str, rel: str) -> Iterator[SourceDocument | Skip]:
        st = os.fstat(dir_fd)
        key = (st.st_dev, st.st_ino)
        if key in self.seen_dirs:
            return  # a symlink back to a folder already walked: a loop or a second name
        self.seen_dirs.add(key)
        spec = _Ignores.load(dir_fd)
        if spec is not None:
            self.stack.append((rel, spec))
        try:
            try:
                entries = _list_dir(dir_fd)
            except OSError as exc:
                yield Skip(_join(self.root, rel), f"cannot list folder: {read_error(exc)}")
                return
            for entry in entries:
                yield from self.child(entry, dir_fd, directory, rel)
        finally:
            if spec is not None:
                self.stack.pop()

    def child(self, entry: os.DirEntry, dir_fd: int, directory: str, rel: str) -> Iterator[SourceDocument | Skip]:
        child_rel = posixpath.join(rel, entry.name) if rel else entry.name
        source = _join(self.root, child_rel)
        full = os.path.join(directory, entry.name)
        try:
            is_link = entry.is_symlink()
            is_dir = entry.is_dir()  # follows symlinks
            is_file = entry.is_file()
        except OSError:
            is_link, is_dir, is_file = False, False, False
        shown = source if self.match_source else None
        if is_dir:
            if entry.name not in ALWAYS_SKIP_DIRS and not self.ignores.ignored(child_rel, shown, True, self.stack):
                yield from self.enter(entry.name, dir_fd, full, child_rel, follow=is_link)
        elif entry.name in ALWAYS_SKIP_FILES or self.ignores.ignored(child_rel, shown, False, self.stack):
            return
        elif is_file:
            yield from load_file(entry.name, source, self.max_file_bytes, dir_fd=dir_fd, follow=is_link, full_path=full,
                                 confine=self.confine, documents=self.documents)
        elif is_link:
            yield Skip(source, "broken symbolic link; fix or remove it")
        # sockets, fifos and devices met in a walk are not documents: passed over on purpose


def iter_sources(
    paths: Sequence[str | Path], exclude: Sequence[str] = (), max_file_bytes: int = 20_000_000,
    confine_to: Sequence[str | Path] | None = None, documents: DocumentOptions | None = None,
) -> Iterator[SourceDocument | Skip]:
    """Yield a SourceDocument for every indexable file under `paths`, a Skip for every file passed over.

    `source` is the path as given (normalised, forward slashes) joined with the walked relative
    path, never resolved through symlinks, so it is stable across runs from the same directory.
    Every path is checked before anything is yielded: a missing one raises InvalidInputError.
    `documents`: parse limits and OCR for PDF and office files.
    `confine_to` (the MCP server's allowed roots): no file whose real path is outside them is read,
    even one swapped for a symlink after the caller checked the tree. Without it links are followed
    wherever they point (the CLI: the user owns the tree).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise InvalidInputError("no paths to index", "give one or more files or folders, e.g. `knnrag index docs/`")
    if max_file_bytes <= 0:
        raise InvalidInputError(f"max file size {max_file_bytes} bytes is not positive", "use e.g. --max-file-mb 20")
    ignores = _Ignores([exclude] if isinstance(exclude, str) else list(exclude or ()))
    roots = []
    for given in paths:
        text = os.fspath(given)
        if not text or not os.path.exists(text):
            kind = "broken symbolic link" if text and os.path.islink(text) else "path not found"
            raise InvalidInputError(f"{kind}: {text!r}", f"check the spelling; relative paths start at {os.getcwd()}")
        roots.append((text, posixpath.normpath(text.replace(os.sep, "/"))))
    confine = None if confine_to is None else [os.path.realpath(os.fspath(r)) for r in confine_to]
    emitted: set[str] = set()
    for path, root in roots:
        if os.path.isdir(path):
            items = _Walk(root, ignores, max_file_bytes, confine, documents).enter(path, None, path, "", follow=True)
        elif ignores.ignored(posixpath.basename(root), root, False, []):
            continue  # a file named explicitly but excluded by --exclude
        else:
            items = load_file(path, root, max_file_bytes, confine=confine, documents=documents)
        current: set[str] = set()
        for item in items:
            if item.source in emitted:
                continue  # the same file reached through an earlier path (e.g. `index docs docs/a.md`)
            current.add(item.source)
            yield item
        emitted |= current
