"""A remote folder: an Azure Blob Storage container path, listed anonymously, then downloaded.

Azure's batch endpoints read a `uri_folder` over https from Azure Storage only (Blob
Storage, and ADLS Gen2 through the same account's blob endpoint), so a folder URL is
`https://<account>.blob.core.windows.net/<container>/<folder>`: a container, then a prefix
of its blob names. The folder's files are what Blob Storage's List Blobs call answers for
that prefix (a public container answers it without credentials), each downloaded by
`fetch.download` to its path under the folder. The listing requests go through the same
guard (`fetch.read`), so a folder URL can no more aim the platform at itself than a file
URL can.

A folder is read as a local one is (`inputs.list_folder`): files sorted by their path
under it, hidden ones (a segment starting with `.`) skipped. How many files it may have
is checked while listing, before anything is downloaded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote, urlencode, urlparse
from xml.etree import ElementTree

from sluice.batch.fetch import MAX_DOWNLOAD_BYTES, Answer, FetchError, UrlPolicy, download, read

# x-ms-version: without it an anonymous request gets the account's default version, which
# can be older than the listing format read here.
API_VERSION = "2021-08-06"
MAX_LISTING_BYTES = 16 << 20  # a page of 5,000 blobs is a few MB
MAX_PAGES = 1_000  # Azure answers up to 5,000 blobs a page: a job's files take far fewer
DOWNLOADS_AT_ONCE = 8
# A whole folder, as listed (each file is also held to fetch.MAX_DOWNLOAD_BYTES): one
# invoke cannot fill the platform's disk.
MAX_FOLDER_BYTES = 16 << 30
SHAPE = "https://<account>.blob.core.windows.net/<container>/<folder>"
ADLS_SUFFIX = ".dfs.core.windows.net"
BLOB_SUFFIX = ".blob.core.windows.net"


@dataclass(frozen=True)
class Blob:
    """A file of the folder: its path under the folder, and its size if the listing gave it."""

    path: str
    size: int | None


@dataclass(frozen=True)
class Folder:
    """Where a folder URL's blobs are: the container's URL and the prefix of their names."""

    container: str
    prefix: str


async def download_folder(
    url: str, scratch: Path, policy: UrlPolicy, *, max_files: int
) -> list[Path]:
    """The files under the Blob Storage folder `url`, downloaded into `scratch` at their
    paths under the folder, sorted by those paths; refused when there are none or more
    than `max_files`."""
    folder = locate(url)
    listed = await list_blobs(url, folder, policy, max_files=max_files)
    blobs = sorted(listed, key=lambda blob: blob.path)
    _check(url, folder, blobs)
    return await _download_all(folder, blobs, scratch, policy)


def locate(url: str) -> Folder:
    """`https://a.blob.core.windows.net/c/x/y` as container `.../c` and prefix `x/y/`; an
    ADLS Gen2 URL (`a.dfs.core.windows.net`) as the same account's blob endpoint."""
    parts = urlparse(url)
    if parts.query or parts.fragment:
        raise FetchError(
            f"input {url}: a remote folder is read anonymously; give its URL without a "
            "query (?...) or fragment (#...)"
        )
    container, _, folder = unquote(parts.path).strip("/").partition("/")
    if not container:
        raise _not_a_container(url, "the URL names no container")
    host = parts.netloc
    if host.lower().endswith(ADLS_SUFFIX):
        host = host[: -len(ADLS_SUFFIX)] + BLOB_SUFFIX
    prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
    return Folder(f"{parts.scheme}://{host}/{quote(container)}", prefix)


async def list_blobs(url: str, folder: Folder, policy: UrlPolicy, *, max_files: int) -> list[Blob]:
    """Every file under `folder`, page after page (List Blobs' NextMarker)."""
    found: list[Blob] = []
    marker = ""
    for _ in range(MAX_PAGES):
        query = {"restype": "container", "comp": "list", "include": "metadata"}
        query["prefix"] = folder.prefix
        if marker:
            query["marker"] = marker
        answer = await read(
            f"{folder.container}?{urlencode(query)}",
            policy,
            headers=[("x-ms-version", API_VERSION)],
            limit=MAX_LISTING_BYTES,
            what=f"input {url} (listing its container)",
        )
        page = _page(url, answer)
        found.extend(_files(url, folder, page))
        if len(found) > max_files:
            raise FetchError(
                f"input {url} has more than {max_files} files; a job takes at most {max_files}"
            )
        marker = page.findtext("NextMarker") or ""
        if not marker:
            return found
    raise FetchError(f"input {url}: its listing did not end after {MAX_PAGES} pages")


def _not_a_container(url: str, what: str) -> FetchError:
    return FetchError(
        f"input {url}: a remote folder must be an Azure Blob Storage container path ({SHAPE}) "
        f"that allows anonymous listing: {what}"
    )


def _page(url: str, answer: Answer) -> ElementTree.Element:
    """A page of List Blobs' answer, or why it is not one."""
    if answer.status != 200:
        code = _error_code(answer.body)
        raise _not_a_container(
            url, f"listing it answered HTTP {answer.status}{f' ({code})' if code else ''}"
        )
    what = answer.content_type or "no content type"
    try:
        root = _parse(answer.body)
    except ElementTree.ParseError as exc:
        raise _not_a_container(url, f"listing it answered {what}, not XML ({exc})") from None
    if root.tag != "EnumerationResults":
        raise _not_a_container(
            url, f"listing it answered {what} <{root.tag}>, not List Blobs' <EnumerationResults>"
        )
    return root


def _parse(body: bytes) -> ElementTree.Element:
    # The standard library's parser, as defusedxml is not a dependency: ElementTree never
    # fetches external entities or DTDs, and expat from 2.4.1 on (pyexpat here is 2.5)
    # refuses entity-expansion bombs ("billion laughs"); an answer is at most
    # MAX_LISTING_BYTES anyway.
    return ElementTree.fromstring(body)  # noqa: S314 - safe here, as said above


def _error_code(body: bytes) -> str:
    """Azure Storage's error code (`<Error><Code>`), e.g. PublicAccessNotPermitted, if any."""
    try:
        root = _parse(body)
    except ElementTree.ParseError:
        return ""
    return (root.findtext("Code") or "") if root.tag == "Error" else ""


def _files(url: str, folder: Folder, page: ElementTree.Element) -> Iterator[Blob]:
    for entry in page.iterfind("Blobs/Blob"):
        name = _name(entry)
        if not name.startswith(folder.prefix):
            raise _not_a_container(url, f"listing it answered {name!r}, not under the folder")
        path = name[len(folder.prefix) :]
        size = _size(url, entry)
        if _folder_marker(path, size, entry) or _hidden(path):
            continue
        if "" in path.split("/"):  # `a//b`: no file can have that path
            raise FetchError(f"input {url}: blob {name!r} has an empty segment in its name")
        yield Blob(path, size)


def _name(entry: ElementTree.Element) -> str:
    element = entry.find("Name")
    name = (element.text or "") if element is not None else ""
    # A name with characters XML cannot carry comes percent-encoded, and says so.
    return unquote(name) if element is not None and element.get("Encoded") == "true" else name


def _size(url: str, entry: ElementTree.Element) -> int | None:
    text = entry.findtext("Properties/Content-Length")
    try:
        return int(text) if text else None
    except ValueError:
        raise _not_a_container(url, f"listing it answered a Content-Length of {text!r}") from None


def _folder_marker(path: str, size: int | None, entry: ElementTree.Element) -> bool:
    """A blob that stands for a folder, not a file: the folder itself, a name ending with
    `/`, or an empty blob with `hdi_isfolder` (ADLS Gen2's directories, tools' folders)."""
    if not path or path.endswith("/"):
        return True
    return size == 0 and (entry.findtext("Metadata/hdi_isfolder") or "").lower() == "true"


def _hidden(path: str) -> bool:
    """Skipped as in a local folder (inputs.list_folder): a segment starting with `.`."""
    return any(part.startswith(".") for part in path.split("/"))


def _check(url: str, folder: Folder, blobs: list[Blob]) -> None:
    """Refuse, before anything is downloaded, what could not be downloaded whole."""
    if not blobs:
        raise FetchError(
            f"no files under {url}: its container lists no blob named {folder.prefix}... "
            "(folder markers and hidden files aside)"
        )
    folders = {str(parent) for blob in blobs for parent in PurePosixPath(blob.path).parents}
    seen: set[str] = set()
    total = 0
    for blob in blobs:
        if blob.path in seen:
            raise _not_a_container(url, f"listing it answered {blob.path!r} twice")
        seen.add(blob.path)
        total += blob.size or 0
        if total > MAX_FOLDER_BYTES:
            raise FetchError(
                f"input {url}: its files are over {MAX_FOLDER_BYTES} bytes together, the "
                "limit for a remote folder; split the job's input"
            )
        if blob.path in folders:
            raise FetchError(
                f"input {url}: {blob.path!r} is both a file and a folder there (blobs "
                f"{blob.path!r} and {blob.path + '/...'!r}); a folder on disk cannot hold both"
            )
        if blob.size is not None and blob.size > MAX_DOWNLOAD_BYTES:
            raise FetchError(
                f"input {url}: {blob.path} is {blob.size} bytes; the limit is "
                f"{MAX_DOWNLOAD_BYTES} per file"
            )


async def _download_all(
    folder: Folder, blobs: list[Blob], scratch: Path, policy: UrlPolicy
) -> list[Path]:
    """Download `blobs` a few at a time; the first failure stops the others."""
    files: list[Path] = [scratch / blob.path for blob in blobs]
    pending = iter(enumerate(blobs))  # shared: each blob is taken by one worker

    async def worker() -> None:
        for index, blob in pending:
            files[index] = await _download_one(folder, blob, files[index], policy)

    first: Exception | None = None
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(DOWNLOADS_AT_ONCE, len(blobs))):
                group.create_task(worker())
    except* FetchError as failed:
        # Raised after the block: before Python 3.11.4, one raised in an except* clause
        # came out wrapped in an ExceptionGroup.
        first = failed.exceptions[0]
    if first is not None:
        raise first from None
    return files


async def _download_one(folder: Folder, blob: Blob, target: Path, policy: UrlPolicy) -> Path:
    try:
        if blob.size == 0:
            return _empty_file(target)
        # download() names the file after the URL's last segment, in the folder it is given.
        return await download(
            f"{folder.container}/{quote(folder.prefix + blob.path)}", target.parent, policy
        )
    except (OSError, ValueError) as exc:  # a name no file can have, a full disk
        where = f"{folder.container}/{folder.prefix}"
        raise FetchError(f"input {where}: {blob.path!r} cannot be written: {exc}") from None


def _empty_file(target: Path) -> Path:
    """An empty blob, written without a request: download() refuses an empty answer (an
    empty single input is a mistake), but an empty file in a folder is data, as it is in a
    local folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.touch()
    return target
