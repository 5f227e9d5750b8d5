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
import json
import os
import posixpath
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pathspec

from retrieval.errors import InvalidInputError
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
_MALFORMED_LINES_REPORTED = 10


def file_hash(path: str | Path) -> str:
    """sha256 hex of a file's bytes, streamed (what SourceDocument.content_hash holds for a file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def kind_of(path: str) -> tuple[str, str | None]:
    """(kind, language) from a file name: markdown | rst | text | code | html | jsonl."""
    name = posixpath.basename(path)
    if name in CODE_NAMES:
        return "code", CODE_NAMES[name]
    ext = posixpath.splitext(name)[1].lower()
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


def _too_large(size: int, limit: int) -> str:
    return f"file is {size / 1e6:.1f} MB, over the {limit / 1e6:g} MB limit; split it or raise --max-file-mb"


def _read_error(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied; make the file readable (chmod +r) or exclude it"
    return f"cannot read file: {exc.strerror or exc}"


_TITLE = re.compile(r"<title\b[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)


def _html_title(text: str) -> str | None:
    """The <title>, found cheaply (re-indexing walks every file; the chunker parses HTML fully)."""
    m = _TITLE.search(text, 0, 1 << 20)
    title = " ".join(html.unescape(re.sub(r"<[^>]*>", "", m.group(1))).split()) if m else ""
    return title or None


def _jsonl_documents(source: str, data: bytes, max_record_bytes: int) -> Iterator[SourceDocument | Skip]:
    """One SourceDocument per BEIR record; line_offset is the record's 0-based line index."""
    bad = 0
    for index, raw in enumerate(data.split(b"\n")):
        line = raw.rstrip(b"\r")
        if not line.strip():
            continue
        problem = None
        record = None
        if len(line) > max_record_bytes:
            problem = f"record is {len(line) / 1e6:.1f} MB, over the {max_record_bytes / 1e6:g} MB limit"
        else:
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                problem = f"invalid UTF-8 at byte {exc.start} of the line"
            except json.JSONDecodeError as exc:
                problem = f"invalid JSON ({exc.msg} at column {exc.colno})"
        if record is not None and not problem:
            if not isinstance(record, dict):
                problem = "not a JSON object"
            elif not isinstance(record.get("text"), str):
                problem = 'no string "text" field (BEIR records look like {"_id": ..., "title": ..., "text": ...})'
            elif record.get("_id", record.get("id")) is None:
                problem = 'no "_id" field (BEIR records look like {"_id": ..., "title": ..., "text": ...})'
        if problem:
            bad += 1
            if bad <= _MALFORMED_LINES_REPORTED:
                yield Skip(source, f"line {index + 1}: {problem}; fix or remove the line")
            continue
        title = record.get("title")
        title = title.strip() or None if isinstance(title, str) else None
        text = record["text"]
        metadata: dict = {"line": index + 1}
        if not text.strip() and title:  # a record with only a title: index the title as its text
            text, title, metadata["text_from"] = title, None, "title"
        yield SourceDocument(
            source=source,
            text=text,
            kind="jsonl",
            content_hash=hashlib.sha256(line).hexdigest(),
            doc_id=str(record.get("_id", record.get("id"))),
            title=title,
            line_offset=index,
            metadata=metadata,
        )
    if bad > _MALFORMED_LINES_REPORTED:
        yield Skip(source, f"{bad - _MALFORMED_LINES_REPORTED} more malformed lines not listed; check the file with `jq -c . FILE`")


def load_file(path: str | Path, source: str, max_file_bytes: int = 20_000_000) -> Iterator[SourceDocument | Skip]:
    """Read one file into SourceDocuments (a JSONL file gives one per record) or a Skip.

    JSONL files are records, not one document, so for them the size limit applies per record.
    """
    kind, language = kind_of(source)
    ext = posixpath.splitext(source)[1].lower()
    if ext in NON_TEXT_EXT:
        yield Skip(source, f"unsupported format ({NON_TEXT_EXT[ext]}, {ext}); convert it to text first or exclude it")
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        yield Skip(source, "broken symbolic link or file vanished during the walk")
        return
    except OSError as exc:
        yield Skip(source, _read_error(exc))
        return
    if st.st_size > max_file_bytes and kind != "jsonl":
        yield Skip(source, _too_large(st.st_size, max_file_bytes))
        return
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        yield Skip(source, _read_error(exc))
        return
    if kind == "jsonl":
        reason = _binary_reason(data[:8192])
        if reason:
            yield Skip(source, reason)
        else:
            yield from _jsonl_documents(source, data, max_file_bytes)
        return
    text, reason = _decode(data)
    if reason:
        yield Skip(source, reason)
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
    def load(directory: str) -> pathspec.GitIgnoreSpec | None:
        try:
            with open(os.path.join(directory, ".gitignore"), encoding="utf-8", errors="replace") as fh:
                return pathspec.GitIgnoreSpec.from_lines(fh.read().splitlines())
        except OSError:
            return None
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


def _walk(root_path: str, root: str, ignores: _Ignores, max_file_bytes: int) -> Iterator[SourceDocument | Skip]:
    seen_dirs: set[tuple[int, int]] = set()
    match_source = not ignores.root_matches(root)
    stack: list[tuple[str, pathspec.GitIgnoreSpec]] = []

    def visit(directory: str, rel: str) -> Iterator[SourceDocument | Skip]:
        try:
            st = os.stat(directory)
        except OSError as exc:
            yield Skip(_join(root, rel) or root, _read_error(exc))
            return
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            return  # a symlink back to a folder already walked: a loop or a second name
        seen_dirs.add(key)
        spec = _Ignores.load(directory)
        if spec is not None:
            stack.append((rel, spec))
        try:
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError as exc:
                yield Skip(_join(root, rel), f"cannot list folder: {_read_error(exc)}")
                return
            for entry in entries:
                child_rel = posixpath.join(rel, entry.name) if rel else entry.name
                source = _join(root, child_rel)
                try:
                    is_dir = entry.is_dir()  # follows symlinks
                    is_file = entry.is_file()
                except OSError:
                    is_dir = is_file = False
                if is_dir:
                    if entry.name in ALWAYS_SKIP_DIRS or ignores.ignored(child_rel, match_source and source, True, stack):
                        continue
                    yield from visit(entry.path, child_rel)
                elif entry.name in ALWAYS_SKIP_FILES or ignores.ignored(child_rel, match_source and source, False, stack):
                    continue
                elif is_file:
                    yield from load_file(entry.path, source, max_file_bytes)
                elif entry.is_symlink():
                    yield Skip(source, "broken symbolic link; fix or remove it")
                # sockets, fifos and devices are not documents: passed over on purpose
        finally:
            if spec is not None:
                stack.pop()

    yield from visit(root_path, "")


def iter_sources(
    paths: Sequence[str | Path], exclude: Sequence[str] = (), max_file_bytes: int = 20_000_000
) -> Iterator[SourceDocument | Skip]:
    """Yield a SourceDocument for every indexable file under `paths`, a Skip for every file passed over.

    `source` is the path as given (normalised, forward slashes) joined with the walked relative
    path, never resolved through symlinks, so it is stable across runs from the same directory.
    Every path is checked before anything is yielded: a missing one raises InvalidInputError.
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
    emitted: set[str] = set()
    for path, root in roots:
        if os.path.isdir(path):
            items = _walk(path, root, ignores, max_file_bytes)
        elif ignores.ignored(posixpath.basename(root), root, False, []):
            continue  # a file named explicitly but excluded by --exclude
        else:
            items = load_file(path, root, max_file_bytes)
        current: set[str] = set()
        for item in items:
            if item.source in emitted:
                continue  # the same file reached through an earlier path (e.g. `index docs docs/a.md`)
            current.add(item.source)
            yield item
        emitted |= current
