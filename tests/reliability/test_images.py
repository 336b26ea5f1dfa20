"""Reliability: image files that are damaged, unusual or not files at all.

Every kind of image goes through three commands: `data validate` (a manifest of good rows plus
this one: the bad row is a counted skip in the JSON report, the file stays usable), `evaluate`
(the same manifest on a tiny backbone: `data.n_unreadable` in metrics.json counts it) and
`explain --image` (one image: a clear error naming the file, or maps for a readable one).
An unusual but readable image (16-bit, CMYK, 1x1, animated GIF, PNG named .jpg) is no skip.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.datasets.helpers import make_dicom
from tests.finetune.conftest import tiny_cnn  # noqa: F401
from tests.reliability.harness import Case, Outcome, run_case


@pytest.fixture(scope="module")
def backbone(tiny_cnn: Path) -> Path:  # noqa: F811 - the session's tiny CNN backbone directory
    return tiny_cnn


PROMPTS = (
    'version: "rel-1"\nmode: single_label\ntemplates: ["a photo of {label}"]\n'
    'classes:\n  pit: {names: ["a pit"]}\n  clean: {names: ["a clean surface"]}\n'
)
N_GOOD = 4  # good rows in every manifest (two per class, all in the test split)


def _png_bytes(size: tuple[int, int] = (40, 32), mode: str = "RGB", seed: int = 0) -> bytes:
    import io

    rng = np.random.RandomState(seed)
    arr = rng.randint(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(mode: str = "RGB") -> bytes:
    import io

    arr = np.random.RandomState(1).randint(0, 255, (48, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# --- builders: each writes one image-like thing into `d` and returns its file name -------------


def corrupt_jpeg(d: Path) -> str:
    data = bytearray(_jpeg_bytes())
    half = len(data) // 2
    noise = np.random.RandomState(7).randint(0, 256, len(data) - half - 2, dtype=np.uint8)
    data[half:-2] = noise.tobytes()  # entropy-coded data garbled, end-of-image marker kept
    (d / "corrupt.jpg").write_bytes(bytes(data))
    return "corrupt.jpg"


def truncated_jpeg(d: Path) -> str:
    (d / "cut.jpg").write_bytes(_jpeg_bytes()[:400])
    return "cut.jpg"


def corrupt_png(d: Path) -> str:
    data = bytearray(_png_bytes())
    idat = data.index(b"IDAT")
    data[idat + 20 : idat + 60] = b"\x00" * 40  # zlib stream and CRC broken
    (d / "corrupt.png").write_bytes(bytes(data))
    return "corrupt.png"


def truncated_png(d: Path) -> str:
    (d / "cut.png").write_bytes(_png_bytes()[:120])
    return "cut.png"


def zero_byte(d: Path) -> str:
    (d / "empty.png").write_bytes(b"")
    return "empty.png"


def text_as_png(d: Path) -> str:
    (d / "page.png").write_text("<html><body>404 Not Found</body></html>\n")
    return "page.png"


def png_named_jpg(d: Path) -> str:
    (d / "really_png.jpg").write_bytes(_png_bytes())
    return "really_png.jpg"


def png_16bit(d: Path) -> str:
    arr = (np.arange(40 * 32, dtype=np.uint16).reshape(32, 40) * 40).astype(np.uint16)
    Image.fromarray(arr).save(d / "deep.png")
    assert Image.open(d / "deep.png").mode.startswith("I")
    return "deep.png"


def cmyk_jpeg(d: Path) -> str:
    (d / "cmyk.jpg").write_bytes(_jpeg_bytes("CMYK"))
    assert Image.open(d / "cmyk.jpg").mode == "CMYK"
    return "cmyk.jpg"


def decompression_bomb(d: Path) -> str:
    """A 30 000 x 30 000 PNG header (900 MP) over a few bytes of data."""
    head = b"\x89PNG\r\n\x1a\n" + _chunk(
        b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    )
    body = _chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + _chunk(b"IEND", b"")
    (d / "bomb.png").write_bytes(head + body)
    return "bomb.png"


def one_pixel(d: Path) -> str:
    Image.new("RGB", (1, 1), (120, 30, 200)).save(d / "dot.png")
    return "dot.png"


def animated_gif(d: Path) -> str:
    frames = [Image.new("RGB", (32, 24), (i * 60, 255 - i * 60, 90)) for i in range(4)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(d / "anim.gif").n_frames == 4
    return "anim.gif"


def dicom_without_pixels(d: Path) -> str:
    make_dicom(d / "report.dcm", None)
    return "report.dcm"


def symlink_loop(d: Path) -> str:
    (d / "loop.png").symlink_to("loop.png")
    return "loop.png"


def directory(d: Path) -> str:
    (d / "folder.png").mkdir()
    return "folder.png"


def missing_file(d: Path) -> str:
    return "never_written.png"


def unreadable(d: Path) -> str:
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode: the permission case needs a normal user")
    (d / "locked.png").write_bytes(_png_bytes())
    (d / "locked.png").chmod(0)
    return "locked.png"


@dataclass(frozen=True)
class ImageKind:
    """One kind of image file; `reason` is the validate skip kind, None for a readable image."""

    name: str
    make: Callable[[Path], str]
    reason: str | None
    message: str  # regex of the error for explain --image (unused for readable images)


KINDS = [
    ImageKind(
        "corrupt_jpeg", corrupt_jpeg, "image_truncated", r"corrupt\.jpg.*(truncated|corrupt)"
    ),
    ImageKind("truncated_jpeg", truncated_jpeg, "image_truncated", r"cut\.jpg.*truncated"),
    ImageKind("corrupt_png", corrupt_png, "image_truncated", r"corrupt\.png.*(truncated|corrupt)"),
    ImageKind("truncated_png", truncated_png, "image_truncated", r"cut\.png.*truncated"),
    ImageKind("zero_byte", zero_byte, "image_empty", r"empty\.png.*zero-byte"),
    ImageKind("text_as_png", text_as_png, "image_not_image", r"page\.png.*not a recognised image"),
    ImageKind("png_named_jpg", png_named_jpg, None, ""),
    ImageKind("png_16bit", png_16bit, None, ""),
    ImageKind("cmyk_jpeg", cmyk_jpeg, None, ""),
    ImageKind(
        "decompression_bomb", decompression_bomb, "image_too_large", r"bomb\.png.*max_pixels"
    ),
    ImageKind("one_pixel", one_pixel, None, ""),
    ImageKind("animated_gif", animated_gif, None, ""),
    ImageKind(
        "dicom_no_pixels",
        dicom_without_pixels,
        "image_no_pixel_data",
        r"report\.dcm.*no pixel data",
    ),
    ImageKind(
        "symlink_loop",
        symlink_loop,
        "image_missing",
        r"loop\.png: a symbolic link whose target does not exist or that loops",
    ),
    ImageKind("directory", directory, "image_not_a_file", r"folder\.png.*not a regular file"),
    ImageKind("missing", missing_file, "image_missing", r"never_written\.png.*not found"),
    ImageKind("unreadable", unreadable, "image_decode", r"locked\.png.*permission"),
]
KIND_IDS = [k.name for k in KINDS]


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory) -> Path:
    """Four readable images and the prompt set, copied into every case's folder."""
    d = tmp_path_factory.mktemp("good")
    for i in range(N_GOOD):
        (d / f"g{i}.png").write_bytes(_png_bytes(seed=i))
    (d / "prompts.yaml").write_text(PROMPTS)
    return d


def _case_dir(tmp: Path, good: Path, kind: ImageKind) -> tuple[Path, str]:
    import shutil

    d = tmp / "data"
    shutil.copytree(good, d)
    name = kind.make(d)
    rows = ["image,text,label,split"]
    for i in range(N_GOOD):
        label = ("pit", "clean")[i % 2]
        rows.append(f"g{i}.png,a {label} on metal,{label},test")
    rows.append(f"{name},a pit on metal,pit,test")
    (d / "m.csv").write_text("\n".join(rows) + "\n")
    return d, name


def _n_skipped(kind: ImageKind) -> int:
    return 0 if kind.reason is None else 1


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_data_validate(kind: ImageKind, good_dir: Path, tmp_path: Path, capsys) -> None:
    def build(tmp: Path) -> list[str]:
        d, _ = _case_dir(tmp, good_dir, kind)
        return ["data", "validate", d / "m.csv", "--backbone", "none", "--json", tmp / "r.json"]

    def check(tmp: Path, out: Outcome) -> None:
        report = json.loads((tmp / "r.json").read_text())
        assert report["n_rows"] == N_GOOD + 1
        assert report["n_skipped"] == _n_skipped(kind), report["skips"]
        assert report["n_usable"] == N_GOOD + 1 - _n_skipped(kind)
        if kind.reason:
            assert report["skips"] == {kind.reason: [N_GOOD + 1]}

    expect = r"USABLE" if kind.reason is None else rf"{kind.reason}: 1 \(rows {N_GOOD + 1}\)"
    run_case(Case(f"validate/{kind.name}", build, expect, code=0, check=check), tmp_path, capsys)


def _evaluate_every_kind(
    tmp: Path, good_dir: Path, backbone: Path, kinds: list, *extra: str
) -> list[str]:
    """A manifest of the good images plus one file of every kind in `kinds`; the evaluate argv."""
    import shutil

    d = tmp / "data"
    shutil.copytree(good_dir, d)
    rows = ["image,text,label,split"]
    rows += [
        f"g{i}.png,a {('pit', 'clean')[i % 2]},{('pit', 'clean')[i % 2]},test"
        for i in range(N_GOOD)
    ]
    rows += [f"{k.make(d)},a pit on metal,pit,test" for k in kinds]
    (d / "m.csv").write_text("\n".join(rows) + "\n")
    return [
        "evaluate",
        backbone,
        "--data",
        d / "m.csv",
        "--prompts",
        d / "prompts.yaml",
        "--split",
        "test",
        "--out",
        tmp / "ev",
        "--n-boot",
        "0",
        "--no-shortcut-check",
        *extra,
    ]


def test_evaluate_counts_every_unreadable_image(
    good_dir: Path, backbone: Path, tmp_path: Path, capsys
) -> None:
    """One evaluation over a manifest holding every kind at once (one model load, not 17):
    each unreadable file is one counted skip, each readable one is evaluated."""
    kinds = [k for k in KINDS if k.name != "unreadable" or os.geteuid() != 0]
    n_bad = sum(_n_skipped(k) for k in kinds)

    def build(tmp: Path) -> list[str]:
        return _evaluate_every_kind(tmp, good_dir, backbone, kinds)

    def check(tmp: Path, out: Outcome) -> None:
        data = json.loads((tmp / "ev" / "metrics.json").read_text())["data"]
        assert data["n_rows"] == N_GOOD + len(kinds)
        assert data["n_unreadable"] == n_bad
        assert data["n_evaluated"] == N_GOOD + len(kinds) - n_bad
        predictions = (tmp / "ev" / "predictions.csv").read_text().splitlines()
        assert len(predictions) == 1 + data["n_evaluated"]

    expect = rf"{N_GOOD + len(kinds) - n_bad} images of split test \({n_bad} unreadable image\(s\) skipped\)"
    run_case(Case("evaluate/every_kind", build, expect, code=0, check=check), tmp_path, capsys)


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_explain_image(
    kind: ImageKind, good_dir: Path, backbone: Path, tmp_path: Path, capsys
) -> None:
    def build(tmp: Path) -> list[str]:
        d, name = _case_dir(tmp, good_dir, kind)
        return ["explain", backbone, "--image", d / name, "--text", "a pit", "--out", tmp / "ex"]

    def check(tmp: Path, out: Outcome) -> None:
        written = (tmp / "ex" / "index.json").is_file()
        assert written == (kind.reason is None), "maps exactly for a readable image"

    if kind.reason is None:
        case = Case(f"explain/{kind.name}", build, r"index\.json|wrote", code=0, check=check)
    else:
        case = Case(f"explain/{kind.name}", build, kind.message, code=2, check=check)
    run_case(case, tmp_path, capsys)


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_data_validate_geometry_report(
    kind: ImageKind, good_dir: Path, tmp_path: Path, capsys
) -> None:
    """The geometry report reads image headers only (`--no-images --image-size`): a file whose
    header cannot be read is counted in the report, never a traceback; readable ones are measured."""

    def build(tmp: Path) -> list[str]:
        d, _ = _case_dir(tmp, good_dir, kind)
        return [
            "data",
            "validate",
            d / "m.csv",
            "--backbone",
            "none",
            "--no-images",
            "--image-size",
            "64",
            "--json",
            tmp / "r.json",
        ]

    def check(tmp: Path, out: Outcome) -> None:
        report = json.loads((tmp / "r.json").read_text())
        for geometry in report[
            "geometry"
        ]:  # every row is measured, listed as a problem, or skipped
            accounted = geometry["total"]["n_images"] + sum(geometry["n_problems"].values())
            assert accounted == N_GOOD + 1, (geometry, report["skips"])
        if kind.name in ("symlink_loop", "directory", "missing"):
            assert report["skips"] == {kind.reason: [N_GOOD + 1]}  # found without decoding

    expect = r"geometry: fit letterbox at 64 px"
    run_case(Case(f"geometry/{kind.name}", build, expect, code=0, check=check), tmp_path, capsys)


def test_evaluate_tiled_counts_every_unreadable_image(
    good_dir: Path, backbone: Path, tmp_path: Path, capsys
) -> None:
    """The same manifest scored with `--fit tile` (a 1x1 image, a 30000-px header): one counted
    skip per unreadable file, the readable ones tiled."""
    kinds = [k for k in KINDS if k.name != "unreadable" or os.geteuid() != 0]
    n_bad = sum(_n_skipped(k) for k in kinds)

    def build(tmp: Path) -> list[str]:
        return _evaluate_every_kind(tmp, good_dir, backbone, kinds, "--fit", "tile")

    def check(tmp: Path, out: Outcome) -> None:
        data = json.loads((tmp / "ev" / "metrics.json").read_text())["data"]
        assert data["n_unreadable"] == n_bad and data["n_evaluated"] == N_GOOD + len(kinds) - n_bad

    expect = rf"images of split test \({n_bad} unreadable image\(s\) skipped\)"
    run_case(Case("evaluate_tile/every_kind", build, expect, code=0, check=check), tmp_path, capsys)


def _region_case(flag: str, value: Callable[[Path], str]):
    def build(tmp: Path, good: Path, bb: Path) -> list[str]:
        import shutil

        d = tmp / "data"
        shutil.copytree(good, d)
        v = value(d)
        return [
            "explain",
            bb,
            "--image",
            d / "g0.png",
            "--text",
            "a pit",
            flag,
            d / v if flag == "--mask" else v,
            "--check-localisation",
            "--out",
            tmp / "ex",
        ]

    return build


REGIONS = [
    Case(
        "mask_symlink_loop",
        _region_case("--mask", symlink_loop),
        r"loop\.png: a symbolic link whose target does not exist or that loops",
    ),
    Case(
        "mask_decompression_bomb",
        _region_case("--mask", decompression_bomb),
        r"bomb\.png: .*max_pixels",
    ),
    Case("mask_truncated", _region_case("--mask", truncated_png), r"cut\.png: .*truncated"),
    Case(
        "mask_is_directory",
        _region_case("--mask", directory),
        r"folder\.png: is not a regular file",
    ),
    Case(
        "boxes_three_values",
        _region_case("--boxes", lambda d: "[[1, 2, 3]]"),
        r"a box needs four finite numbers.*\[1, 2, 3\]",
    ),
    Case(
        "boxes_not_a_list", _region_case("--boxes", lambda d: "5"), r"boxes must be a list.*got 5"
    ),
    Case(
        "boxes_with_nan",
        _region_case("--boxes", lambda d: '[[1, 2, "nan", 4]]'),
        r"a box needs four finite numbers",
    ),
    Case("boxes_not_json", _region_case("--boxes", lambda d: "[[1,2"), r"--boxes must be JSON"),
]


@pytest.mark.parametrize("case", REGIONS, ids=[c.name for c in REGIONS])
def test_explain_region(case: Case, good_dir: Path, backbone: Path, tmp_path: Path, capsys) -> None:
    """--mask / --boxes for --check-localisation: a bad file or value is a clear error."""
    c = Case(case.name, lambda tmp: case.build(tmp, good_dir, backbone), case.expect, case.code)
    run_case(c, tmp_path, capsys)


def test_explain_manifest_counts_every_unreadable_image(
    good_dir: Path, backbone: Path, tmp_path: Path, capsys
) -> None:
    """Batch mode over a manifest holding every kind: each unreadable image is a counted skip in
    index.json, each readable one is explained."""
    kinds = [k for k in KINDS if k.name != "unreadable" or os.geteuid() != 0]
    n_bad = sum(_n_skipped(k) for k in kinds)

    def build(tmp: Path) -> list[str]:
        import shutil

        d = tmp / "data"
        shutil.copytree(good_dir, d)
        rows = ["image,text,label,split", "g0.png,a pit,pit,test"]
        rows += [f"{k.make(d)},a pit on metal,pit,test" for k in kinds]
        (d / "m.csv").write_text("\n".join(rows) + "\n")
        return [
            "explain",
            backbone,
            "--manifest",
            d / "m.csv",
            "--split",
            "test",
            "--out",
            tmp / "ex",
        ]

    def check(tmp: Path, out: Outcome) -> None:
        index = json.loads((tmp / "ex" / "index.json").read_text())
        assert len(index["skipped"]) == n_bad, index["skipped"]
        assert len({item["image"] for item in index["items"]}) == 1 + len(kinds) - n_bad

    run_case(
        Case("explain_manifest/every_kind", build, rf"skipped {n_bad} rows", code=0, check=check),
        tmp_path,
        capsys,
    )
