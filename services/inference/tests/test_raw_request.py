"""`@rawhttp` scripts with `AMLRequest`/`AMLResponse` as in azureml-inference-server-http.

The two servers run Azure's own binary-payloads samples unchanged
(azureml-examples `cli/endpoints/online/managed/binary-payloads/code/`), called
the way its README does: `curl -F "file=@input.jpg"` and
`curl -F "file[]=@a.jpg" -F "file[]=@b.jpg"`. The unit tests cover the rest of
the request and response surface scripts use.
"""

from __future__ import annotations

import io
import json

import httpx
import pytest
from PIL import Image

from sluice.common.supervisor import Supervisor
from sluice.inference.compat import AMLRequest, AMLResponse
from sluice.inference.output import encode
from sluice.testing.inference import Server, start_server, write_script

SINGLE_FILE_TO_FILE = """
from azureml.contrib.services.aml_request import AMLRequest, rawhttp
from azureml.contrib.services.aml_response import AMLResponse
from PIL import Image
import io

default_resize = (128, 128)


def init():
    pass


@rawhttp
def run(req: AMLRequest):
    try:
        data = req.files.getlist("file")[0]
    except IndexError:
        return AMLResponse("No file uploaded", status_code=422)

    img = Image.open(data.stream)
    img = img.resize(default_resize)

    output = io.BytesIO()
    img.save(output, format="JPEG")
    resp = AMLResponse(message=output.getvalue(), status_code=200)
    resp.mimetype = "image/jpg"

    return resp
"""

MULTI_FILE_TO_JSON = """
from azureml.contrib.services.aml_request import AMLRequest, rawhttp
from PIL import Image


def init():
    pass


@rawhttp
def run(req: AMLRequest):
    files = req.files.getlist("file[]")
    sizes = [{"filename": f.filename, "size": Image.open(f.stream).size} for f in files]
    return {"response": sizes}
"""


def jpeg(size: tuple[int, int], colour: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def single(module_supervisor: Supervisor, tmp_path_factory: pytest.TempPathFactory) -> Server:
    code = write_script(tmp_path_factory.mktemp("single"), SINGLE_FILE_TO_FILE)
    return start_server(module_supervisor, "single-file", code=code)


@pytest.fixture(scope="module")
def multi(module_supervisor: Supervisor, tmp_path_factory: pytest.TempPathFactory) -> Server:
    code = write_script(tmp_path_factory.mktemp("multi"), MULTI_FILE_TO_JSON)
    return start_server(module_supervisor, "multi-file", code=code)


@pytest.mark.integration
def test_image_in_image_out(single: Server) -> None:
    url = f"http://127.0.0.1:{single.port}/score"
    reply = httpx.post(url, files={"file": ("input.jpg", jpeg((300, 200)), "image/jpeg")})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "image/jpg"
    assert reply.headers["x-ms-run-function-failed"] == "False"
    assert Image.open(io.BytesIO(reply.content)).size == (128, 128)
    empty = httpx.post(url, data={"not-a-file": "x"})
    assert (empty.status_code, empty.text) == (422, "No file uploaded")


@pytest.mark.integration
def test_several_files_in_json_out(multi: Server) -> None:
    url = f"http://127.0.0.1:{multi.port}/score"
    files = [
        ("file[]", ("a.jpg", jpeg((10, 20)), "image/jpeg")),
        ("file[]", ("b.jpg", jpeg((30, 40), "blue"), "image/jpeg")),
    ]
    reply = httpx.post(url, files=files)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "response": [
            {"filename": "a.jpg", "size": [10, 20]},
            {"filename": "b.jpg", "size": [30, 40]},
        ]
    }


def request(**kwargs: object) -> AMLRequest:
    built = httpx.Request(kwargs.pop("method", "POST"), kwargs.pop("url"), **kwargs)  # type: ignore[arg-type]
    target = built.url.raw_path
    headers = [(k.lower(), v) for k, v in built.headers.raw]
    return AMLRequest.from_http(built.method, target, headers, built.read())


def test_form_fields_files_and_query_arguments() -> None:
    req = request(
        url="http://x/score?top=3&tag=a&tag=b",
        data={"threshold": "0.5"},
        files={"doc": ("notes.txt", b"hello", "text/plain")},
    )
    assert req.mimetype == "multipart/form-data"
    assert req.form["threshold"] == "0.5"
    upload = req.files["doc"]
    assert (upload.filename, upload.mimetype, upload.read()) == (
        "notes.txt",
        "text/plain",
        b"hello",
    )
    assert req.args["top"] == "3" and req.args.getlist("tag") == ["a", "b"]
    assert (req.method, req.path, req.full_path) == ("POST", "/score", "/score?top=3&tag=a&tag=b")


def test_body_stream_json_and_headers() -> None:
    req = request(url="http://x/score", content=b'{"a": [1, 2]}',
                  headers={"Content-Type": "application/json", "X-Trace": "t1"})  # fmt: skip
    assert req.get_json() == {"a": [1, 2]} and req.json == {"a": [1, 2]}
    assert req.get_data() == b'{"a": [1, 2]}' and req.get_data(as_text=True) == '{"a": [1, 2]}'
    assert req.headers["x-trace"] == "t1" and req.headers.get("X-TRACE") == "t1"
    assert req.content_type == "application/json" and req.content_length == 13
    streamed = request(url="http://x/score", content=b"\x89PNG raw bytes",
                       headers={"Content-Type": "image/png"})  # fmt: skip
    assert streamed.stream.read() == b"\x89PNG raw bytes"
    assert streamed.mimetype == "image/png"
    quoted = request(url="http://x/a%20b/score")
    assert quoted.path == "/a b/score"


def test_aml_response_as_azure_builds_it() -> None:
    text = encode(AMLResponse("hello", 201, {"x-a": "1"}))
    assert text.status == 201 and text.body == b"hello"
    assert (b"content-type", b"text/html; charset=utf-8") in text.headers
    assert (b"x-a", b"1") in text.headers
    assert (b"x-ms-run-function-failed", b"False") in text.headers
    as_json = encode(AMLResponse({"k": [1]}, 200, json_str=True, run_function_failed=True))
    assert json.loads(as_json.body) == {"k": [1]}
    assert (b"content-type", b"application/json") in as_json.headers
    assert (b"x-ms-run-function-failed", b"True") in as_json.headers
    assert encode(AMLResponse(None, 200)).body == b"{}"
    repeated = encode(AMLResponse("", 200, {"x-tags": "a, b"}))
    assert [v for k, v in repeated.headers if k == b"x-tags"] == [b"a", b"b"]
    image = AMLResponse(b"\xff\xd8jpeg", 200)
    image.mimetype = "image/jpeg"
    assert (b"content-type", b"image/jpeg") in encode(image).headers
    image.content_type = "image/png"
    assert (b"content-type", b"image/png") in encode(image).headers


def test_a_tuple_sets_the_status_only_when_it_reads_as_one() -> None:
    assert encode(({"error": "bad"}, 400)).status == 400
    with_headers = encode(("made", 201, {"x-a": "1"}))
    assert with_headers.status == 201 and (b"x-a", b"1") in with_headers.headers
    # Not an HTTP status, or no headers in third place: the tuple is the answer's data.
    for data in (("cat", 1), ("cat", True), ("cat", 87), ("cat", 200, 0.5), ("cat", 1000)):
        reply = encode(data)
        assert reply.status == 200 and json.loads(reply.body) == list(data), data
