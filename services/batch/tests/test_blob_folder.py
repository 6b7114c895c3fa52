"""A remote folder is an Azure Blob Storage container path, listed and downloaded.

Against a real HTTP server on loopback that stands in for Azure Blob Storage (a
third-party service): it answers the anonymous List Blobs call as Azure's REST reference
documents it (`EnumerationResults/Blobs/Blob/Name`, `Properties/Content-Length`,
`Metadata`, a page at a time with `NextMarker`) and serves each blob. Loopback is
allowed by listing it, as an operator would in SLUICE_BATCH_URL_ALLOW.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.etree import ElementTree

import pytest

from sluice.batch.blob_folder import Folder, download_folder, locate
from sluice.batch.fetch import FetchError, UrlPolicy

LOOPBACK = UrlPolicy.parse("127.0.0.1")
NOT_A_CONTAINER = (
    r"a remote folder must be an Azure Blob Storage container path "
    r"\(https://<account>\.blob\.core\.windows\.net/<container>/<folder>\) "
    r"that allows anonymous listing: "
)


@dataclass(frozen=True)
class Stored:
    """A blob of the stand-in: its bytes, whether it is an ADLS Gen2 directory
    (`hdi_isfolder`), and the size its listing claims if not its real one."""

    body: bytes = b""
    directory: bool = False
    listed_size: int | None = None


class BlobStandIn:
    """Container `data` of an account on `host`: List Blobs `page_size` blobs a page, Get
    Blob for each; a file's GET is redirected to `redirect_files_to` when given. Records
    each request's path and x-ms-version header."""

    def __init__(
        self,
        host: str,
        blobs: dict[str, Stored],
        page_size: int = 2,
        redirect_files_to: str | None = None,
    ):
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append((self.path, self.headers.get("x-ms-version")))
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                container, _, name = unquote(parts.path).lstrip("/").partition("/")
                if container != "data":
                    self.answer(
                        404,
                        b"<?xml version='1.0'?><Error><Code>ContainerNotFound</Code>"
                        b"<Message>The specified container does not exist.</Message></Error>",
                    )
                elif query.get("comp") == "list" and query.get("restype") == "container":
                    self.answer(200, outer.page(query.get("prefix", ""), query.get("marker")))
                elif redirect_files_to:
                    self.send_response(302)
                    self.send_header("Location", redirect_files_to)
                    self.end_headers()
                elif name in blobs:
                    self.answer(200, blobs[name].body, "application/octet-stream")
                else:
                    self.answer(
                        404, b"<?xml version='1.0'?><Error><Code>BlobNotFound</Code></Error>"
                    )

            def answer(self, status: int, body: bytes, kind: str = "application/xml") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.blobs = blobs
        self.page_size = page_size
        self.http = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, args=(0.05,), daemon=True).start()

    def page(self, prefix: str, marker: str | None) -> bytes:
        """One page of List Blobs' answer; the marker is opaque to clients (here an index)."""
        names = sorted(n for n in self.blobs if n.startswith(prefix))
        start = int(marker or 0)
        end = start + self.page_size
        root = ElementTree.Element(
            "EnumerationResults", ServiceEndpoint=f"{self.url}/", ContainerName="data"
        )
        ElementTree.SubElement(root, "Prefix").text = prefix
        listed = ElementTree.SubElement(root, "Blobs")
        for name in names[start:end]:
            stored = self.blobs[name]
            blob = ElementTree.SubElement(listed, "Blob")
            ElementTree.SubElement(blob, "Name").text = name
            properties = ElementTree.SubElement(blob, "Properties")
            size = stored.listed_size if stored.listed_size is not None else len(stored.body)
            ElementTree.SubElement(properties, "Content-Length").text = str(size)
            ElementTree.SubElement(properties, "BlobType").text = "BlockBlob"
            metadata = ElementTree.SubElement(blob, "Metadata")
            if stored.directory:
                ElementTree.SubElement(metadata, "hdi_isfolder").text = "true"
        ElementTree.SubElement(root, "NextMarker").text = str(end) if end < len(names) else ""
        body: bytes = ElementTree.tostring(root, xml_declaration=True, encoding="utf-8")
        return body

    def listings(self) -> list[str]:
        return [path for path, _ in self.requests if "comp=list" in path]

    def files(self) -> list[str]:
        return [path for path, _ in self.requests if "comp=list" not in path]


SAMPLE = {
    "mnist/sample/": Stored(),  # a folder marker, as tools write them
    "mnist/sample/b.png": Stored(b"bee"),
    "mnist/sample/a.png": Stored(b"ay"),
    "mnist/sample/sub": Stored(directory=True),  # an ADLS Gen2 directory
    "mnist/sample/sub/c d.png": Stored(b"see"),
    "mnist/sample/sub/empty.txt": Stored(),  # an empty file, not a marker
    "mnist/sample/.amlignore": Stored(b"hidden"),
    "mnist/sample2/x.png": Stored(b"another folder"),
    "mnist/top.png": Stored(b"above the folder"),
    "mnist/markers/": Stored(),  # a folder of nothing but a marker and a hidden file
    "mnist/markers/.keep": Stored(b"hidden"),
}


@pytest.fixture
def azure() -> Iterator[BlobStandIn]:
    server = BlobStandIn("127.0.0.1", SAMPLE)
    yield server
    server.http.shutdown()


async def test_a_folder_is_its_blobs_page_by_page_at_their_paths(
    azure: BlobStandIn, tmp_path: Path
) -> None:
    files = await download_folder(
        f"{azure.url}/data/mnist/sample", tmp_path, LOOPBACK, max_files=10
    )
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "a.png",
        "b.png",
        "sub/c d.png",
        "sub/empty.txt",
    ]
    assert [f.read_bytes() for f in files] == [b"ay", b"bee", b"see", b""]
    # 7 blobs under the prefix at 2 a page: 4 listing requests, each following NextMarker
    # and saying its version; then one GET per non-empty file, the name URL-encoded.
    assert len(azure.listings()) == 4
    assert all("prefix=mnist%2Fsample%2F" in path for path in azure.listings())
    assert [("marker=" in path) for path in azure.listings()] == [False, True, True, True]
    assert all(version for path, version in azure.requests if "comp=list" in path)
    assert sorted(azure.files()) == [
        "/data/mnist/sample/a.png",
        "/data/mnist/sample/b.png",
        f"/data/mnist/sample/sub/{quote('c d.png')}",
    ]
    # The same folder again: the same files in the same order.
    again = await download_folder(
        f"{azure.url}/data/mnist/sample/", tmp_path / "again", LOOPBACK, max_files=10
    )
    assert [f.relative_to(tmp_path / "again") for f in again] == [
        f.relative_to(tmp_path) for f in files
    ]


async def test_loopback_is_refused_unless_listed_for_the_listing_and_each_file(
    azure: BlobStandIn, tmp_path: Path
) -> None:
    with pytest.raises(FetchError, match=r"a loopback address: .*SLUICE_BATCH_URL_ALLOW"):
        await download_folder(f"{azure.url}/data/mnist/sample", tmp_path, UrlPolicy(), max_files=10)
    assert azure.requests == []  # refused before connecting
    # A listed account whose files redirect to an unlisted address gets nothing from there.
    listed = BlobStandIn("127.0.0.2", SAMPLE, redirect_files_to=f"{azure.url}/data/mnist/top.png")
    try:
        with pytest.raises(FetchError, match=r"redirected to .*127\.0\.0\.1 is a loopback"):
            await download_folder(
                f"{listed.url}/data/mnist/sample", tmp_path, UrlPolicy.parse("127.0.0.2"),
                max_files=10,
            )  # fmt: skip
    finally:
        listed.http.shutdown()
    assert listed.listings() and listed.files()
    assert azure.requests == []


async def test_what_is_not_a_blob_container_says_what_a_folder_must_be(
    azure: BlobStandIn, tmp_path: Path
) -> None:
    """An ordinary web server answers its HTML page; Azure answers its error code."""
    (tmp_path / "www" / "data").mkdir(parents=True)
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    web = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=web.serve_forever, args=(0.05,), daemon=True).start()
    try:
        url = f"http://127.0.0.1:{web.server_address[1]}/data/folder"
        with pytest.raises(FetchError, match=NOT_A_CONTAINER + r"listing it answered text/html"):
            await download_folder(url, tmp_path / "s", LOOPBACK, max_files=10)
    finally:
        web.shutdown()
    with pytest.raises(FetchError, match=NOT_A_CONTAINER + r".*HTTP 404 \(ContainerNotFound\)"):
        await download_folder(f"{azure.url}/nodata/mnist", tmp_path / "s", LOOPBACK, max_files=10)


async def test_an_empty_folder_is_refused_naming_it(azure: BlobStandIn, tmp_path: Path) -> None:
    for folder in ("mnist/nothing", "mnist/markers"):
        url = f"{azure.url}/data/{folder}"
        with pytest.raises(FetchError, match=f"no files under {url}"):
            await download_folder(url, tmp_path, LOOPBACK, max_files=10)
    assert azure.files() == []


@pytest.mark.parametrize(
    ("blobs", "message"),
    [
        (
            {f"f/{i}.csv": Stored(b"x") for i in range(5)},
            "has more than 3 files; a job takes at most 3",
        ),
        ({"f/big.csv": Stored(b"x", listed_size=2 << 30)}, r"big\.csv is 2147483648 bytes"),
        (
            {"f/a": Stored(b"x"), "f/a/b.csv": Stored(b"x")},
            "'a' is both a file and a folder there",
        ),
    ],
)
async def test_what_cannot_be_downloaded_whole_is_refused_before_any_download(
    tmp_path: Path, blobs: dict[str, Stored], message: str
) -> None:
    server = BlobStandIn("127.0.0.1", blobs)
    try:
        with pytest.raises(FetchError, match=message):
            await download_folder(f"{server.url}/data/f", tmp_path, LOOPBACK, max_files=3)
    finally:
        server.http.shutdown()
    assert server.files() == []
    assert len(server.listings()) <= 2  # too many files: refused once the count is over


def test_a_folder_url_is_a_container_and_a_prefix() -> None:
    account = "https://acct.blob.core.windows.net"
    assert locate(f"{account}/data/mnist/sample") == Folder(f"{account}/data", "mnist/sample/")
    assert locate(f"{account}/data/") == Folder(f"{account}/data", "")
    assert locate(f"{account}/my%20data/a%20b/") == Folder(f"{account}/my%20data", "a b/")
    # ADLS Gen2: the same account's blob endpoint lists it.
    assert locate("https://acct.dfs.core.windows.net/fs/dir") == Folder(f"{account}/fs", "dir/")
    with pytest.raises(FetchError, match="names no container"):
        locate(f"{account}/")
    with pytest.raises(FetchError, match=r"without a query"):
        locate(f"{account}/data/x?sv=2021&sig=secret")


async def test_a_folder_over_its_total_limit_or_with_an_unwritable_name_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Together the files may not exceed MAX_FOLDER_BYTES (refused before any download); a
    name no file can have (a 300-character segment) is a FetchError naming it, not an
    error of the service."""
    from sluice.batch import blob_folder

    monkeypatch.setattr(blob_folder, "MAX_FOLDER_BYTES", 5)
    server = BlobStandIn("127.0.0.1", {"f/a.csv": Stored(b"abc"), "f/b.csv": Stored(b"def")})
    try:
        with pytest.raises(FetchError, match="over 5 bytes together"):
            await download_folder(f"{server.url}/data/f", tmp_path, LOOPBACK, max_files=3)
    finally:
        server.http.shutdown()
    assert server.files() == []
    monkeypatch.undo()
    long = "n" * 300 + ".csv"
    server = BlobStandIn("127.0.0.1", {f"f/{long}": Stored(b"x")})
    try:
        with pytest.raises(FetchError, match="cannot be written"):
            await download_folder(f"{server.url}/data/f", tmp_path, LOOPBACK, max_files=3)
    finally:
        server.http.shutdown()
