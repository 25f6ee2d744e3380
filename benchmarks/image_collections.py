"""Build the benchmark suite of real, public image collections (issue 13), one plain folder each.

    python benchmarks/image_collections.py --out /work/collections
    python benchmarks/image_collections.py --out DIR --only emoji faces --max 500
    python benchmarks/image_collections.py --list

Every collection comes from packages the ordinary clients fetch by name from
the registries this project may use: `apt-get download` (Debian) and
`npm pack` (npm). The archives land in a cache folder (--cache); nothing is
installed on the system and no other host is contacted. Each image is read
straight out of its archive (a .deb's data tar, an npm tarball, and the
archives nested in them: Qt resource files, zip-based .pk3 and .sh3f), then:

- decoded with Pillow; one that does not decode is dropped ("unreadable");
- dropped when its shorter side is below the collection's minimum ("tiny"),
  or when it is blank or flat: fully transparent, or a luminance standard
  deviation under 2 of 255 once composited on white ("flat");
- dropped when its decoded pixels equal an earlier image's ("duplicate");
- written under a readable name as it was (PNG and JPEG bytes are copied
  unchanged), unless it is in another format or its longer side is over
  2,048 px: then it is re-encoded (PNG where it has transparency, else JPEG
  quality 92), downscaled to 2,048 px where larger.

--max N keeps N of the admitted images, chosen by a hash of their source
path, so the choice is the same on every run and mixes the sub-folders.

DIR/NAME/SOURCE.json records the packages and versions, the licence, how the
images were extracted and filtered, the counts, and the source path of every
file; DIR/NAME/.licences/ holds each package's copyright or licence file.
A collection is built in DIR/.NAME.partial and renamed into place; an
existing DIR/NAME is replaced only when it holds a SOURCE.json, i.e. when
this script wrote it. benchmarks/COLLECTIONS.md describes the collections.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageStat

#: Longest side written unchanged; larger images are downscaled to it.
MAX_SIDE_PX = 2048
#: Luminance standard deviation (0-255) under which an image counts as flat.
FLAT_STD = 2.0
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gridtsne" / "collections"


@dataclass(frozen=True)
class Source:
    """One package: registry "debian" or "npm", its name and the version the suite was built from."""

    registry: str
    package: str
    version: str


@dataclass(frozen=True)
class Candidate:
    """One image as found: where it came from, the name to write it under, its bytes."""

    label: str
    name: str
    data: bytes


@dataclass(frozen=True)
class Collection:
    name: str
    kind: str
    description: str
    licence: str
    sources: tuple[Source, ...]
    extraction: str
    extract: Callable[[dict[str, Archive]], Iterator[Candidate]]
    min_side_px: int = 32


# --------------------------------------------------------------------------- fetching


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True)


def _deb_version(path: Path) -> str:
    return _run(["dpkg-deb", "-f", str(path), "Version"], path.parent).stdout.strip()


def _fetch_deb(source: Source, cache: Path) -> tuple[Path, str]:
    folder = cache / "debian"
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.glob(f"{source.package}_*.deb")):
        if _deb_version(path) == source.version:
            return path, source.version
    before = set(folder.glob(f"{source.package}_*.deb"))
    done = _run(["apt-get", "download", f"{source.package}={source.version}"], folder)
    if done.returncode != 0:
        # A Debian point release can replace a version; the newer one is recorded in SOURCE.json.
        print(f"  {source.package} {source.version} not offered; taking apt's candidate", file=sys.stderr)
        done = _run(["apt-get", "download", source.package], folder)
    if done.returncode != 0:
        raise SystemExit(
            f"apt-get download {source.package} failed (run `apt-get update` first?):\n{done.stderr.strip()}"
        )
    new = set(folder.glob(f"{source.package}_*.deb")) - before
    path = max(new or before, key=lambda p: p.stat().st_mtime)
    return path, _deb_version(path)


def _fetch_npm(source: Source, cache: Path) -> tuple[Path, str]:
    folder = cache / "npm"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{source.package.lstrip('@').replace('/', '-')}-{source.version}.tgz"
    if path.exists():
        return path, source.version
    done = _run(["npm", "pack", f"{source.package}@{source.version}", "--json", "--silent"], folder)
    if done.returncode != 0:
        raise SystemExit(f"npm pack {source.package}@{source.version} failed:\n{done.stderr.strip()}")
    packed = json.loads(done.stdout)[0]
    return folder / packed["filename"], packed["version"]


def fetch(source: Source, cache: Path) -> Archive:
    """The package's archive from the cache, fetched with the registry's own client when missing."""
    path, version = (_fetch_deb if source.registry == "debian" else _fetch_npm)(source, cache)
    return Archive(source, version, path)


# --------------------------------------------------------------------------- reading archives


def _is_licence(registry: str, name: str) -> bool:
    if registry == "debian":
        return re.fullmatch(r"usr/share/doc/[^/]+/copyright", name) is not None
    return re.fullmatch(r"package/(LICEN[CS]E|COPYING)[^/]*", name, re.IGNORECASE) is not None


@dataclass
class Archive:
    """A fetched package; reading its members also keeps its licence file(s) for the collection."""

    source: Source
    version: str
    path: Path
    licences: dict[str, bytes] = field(default_factory=dict)

    def members(self, wanted: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
        """(path, bytes) of each file in the package whose path `wanted` accepts, in archive order."""
        if self.source.registry == "debian":
            process = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(self.path)], stdout=subprocess.PIPE)
            stream = process.stdout
        else:
            process, stream = None, open(self.path, "rb")
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    name = member.name.removeprefix("./")
                    licence, taken = _is_licence(self.source.registry, name), wanted(name)
                    if not member.isfile() or not (licence or taken):
                        continue
                    data = tar.extractfile(member).read()  # a stream: each member can be read once
                    if licence:
                        self.licences[name] = data
                    if taken:
                        yield name, data
        finally:
            stream.close()
            if process is not None and process.wait() != 0:
                raise SystemExit(f"dpkg-deb could not read {self.path}; delete it from the cache")


def zip_members(blob: bytes, wanted: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        for name in archive.namelist():
            if not name.endswith("/") and wanted(name):
                yield name, archive.read(name)


def qt_resource_members(blob: bytes) -> Iterator[tuple[str, bytes]]:
    """Files in a compiled Qt resource (.rcc): header, tree of 14- or 22-byte nodes, names, data."""
    if blob[:4] != b"qres":
        raise ValueError("not a Qt resource file")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    node_size = 14 if version == 1 else 22

    def name_at(offset: int) -> str:
        (length,) = struct.unpack(">H", blob[names + offset : names + offset + 2])
        return blob[names + offset + 6 : names + offset + 6 + 2 * length].decode("utf-16-be")

    def walk(node: int, prefix: str) -> Iterator[tuple[str, bytes]]:
        base = tree + node * node_size
        name_offset, flags = struct.unpack(">IH", blob[base : base + 6])
        path = prefix + name_at(name_offset) if node else ""
        if flags & 2:  # a directory: count and first child
            count, first = struct.unpack(">II", blob[base + 6 : base + 14])
            for child in range(first, first + count):
                yield from walk(child, f"{path}/" if node else "")
            return
        (offset,) = struct.unpack(">I", blob[base + 10 : base + 14])
        (length,) = struct.unpack(">I", blob[data + offset : data + offset + 4])
        raw = blob[data + offset + 4 : data + offset + 4 + length]
        if flags & 4:
            raise ValueError(f"{path}: zstd-compressed Qt resources are not supported")
        yield path, zlib.decompress(raw[4:]) if flags & 1 else raw

    yield from walk(0, "")


def _stem(path: str) -> str:
    return path.rsplit("/", 1)[-1].rsplit(".", 1)[0]


# --------------------------------------------------------------------------- the collections

_GCOMPRIS_PHOTOS = re.compile(
    r"gcompris/src/activities/("
    r"categorization/resource/images/(fishes|monuments|others|renewable|tools)"
    r"|explore_monuments/resource/\w+|explore_world_animals/resource/animals"
    r"|explore_farm_animals/resource/animals|erase/resource|leftright/resource"
    r")/[^/]+\.(webp|jpe?g|png)"
)
_GCOMPRIS_RCC = ("categorization", "explore_monuments", "explore_world_animals", "explore_farm_animals")
_GCOMPRIS_RCC += ("erase", "leftright")
# Photographs among the wallpapers (the others are renders and abstract art), chosen by eye.
_WALLPAPER_PHOTOS = {
    "lomiri-wallpapers-16.04": "Bridge Dragonfly Picture_0B Picture_1A Wine aitzgorri free friends life "
    "picosdeeuropa seeding sunset",
    "lomiri-wallpapers-20.04": "Kleiber",
    "plasma-workspace-wallpapers": "BytheWater ColdRipple DarkestHour EveningGlow FallenLeaf Grey Kite "
    "OneStandsOut Path summer_1am",
}


def photos(archives: dict[str, Archive]) -> Iterator[Candidate]:
    def wanted_rcc(name: str) -> bool:
        return name.endswith(".rcc") and _stem(name) in _GCOMPRIS_RCC

    for rcc_path, blob in archives["gcompris-qt-data"].members(wanted_rcc):
        for path, data in qt_resource_members(blob):
            if match := _GCOMPRIS_PHOTOS.fullmatch(path):
                folder = match.group(1).split("/")[0]
                yield Candidate(
                    f"gcompris-qt-data:{rcc_path}!{path}", f"gcompris-{folder}-{_stem(path)}", data
                )
    for package, stems in _WALLPAPER_PHOTOS.items():
        keep = set(stems.split())

        def wanted(name: str, keep=keep, package=package) -> bool:
            if package == "plasma-workspace-wallpapers":  # one picture per wallpaper: its largest size
                parts = name.split("/")
                return len(parts) == 7 and parts[3] in keep and parts[5] == "images"
            return name.startswith("usr/share/backgrounds/") and _stem(name).split("_by_")[0] in keep

        found = {}
        for path, data in archives[package].members(wanted):
            title = path.split("/")[3] if package.startswith("plasma") else _stem(path).split("_by_")[0]
            if title not in found or len(data) > len(found[title][1]):
                found[title] = (path, data)
        for title, (path, data) in sorted(found.items()):
            yield Candidate(f"{package}:{path}", f"wallpaper-{title}", data)
    for path, data in archives["mate-backgrounds"].members(
        lambda name: re.fullmatch(r"usr/share/backgrounds/mate/nature/[^/]+\.jpg", name) is not None
    ):
        yield Candidate(f"mate-backgrounds:{path}", f"wallpaper-{_stem(path)}", data)


def products(archives: dict[str, Archive]) -> Iterator[Candidate]:
    for catalogue_path, blob in archives["sweethome3d-furniture"].members(lambda n: n.endswith(".sh3f")):
        catalogue = _stem(catalogue_path)
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            properties = archive.read("PluginFurnitureCatalog.properties").decode("latin-1")
            for line in properties.splitlines():
                if match := re.fullmatch(r"icon#(\d+)\s*=\s*/?(\S+)", line.strip()):
                    icon = match.group(2)
                    yield Candidate(
                        f"sweethome3d-furniture:{catalogue_path}!{icon}",
                        f"{catalogue}-{_stem(icon)}",
                        archive.read(icon),
                    )


# Tux Paint's stamps outside these folders are mostly photographs; these are drawn or lettering.
_TUXPAINT_DRAWN = re.compile(r"cartoon|/symbols/|/roadsigns/|/flags/|_(back|mirror|flip)\.png$")


def objects(archives: dict[str, Archive]) -> Iterator[Candidate]:
    def wanted(name: str) -> bool:
        return (
            name.startswith("usr/share/tuxpaint/stamps/")
            and name.endswith(".png")
            and not _TUXPAINT_DRAWN.search(name)
        )

    for path, data in archives["tuxpaint-stamps-default"].members(wanted):
        folder = path.split("/")[4]
        yield Candidate(f"tuxpaint-stamps-default:{path}", f"{folder}-{_stem(path)}", data)


def emoji(archives: dict[str, Archive]) -> Iterator[Candidate]:
    files = dict(
        archives["emoji-datasource-twitter"].members(
            lambda n: n == "package/emoji.json" or n.startswith("package/img/twitter/64/")
        )
    )
    # One image per emoji: the skin-tone variants are nested entries and the "Component" category
    # holds the bare skin-tone and hair swatches, so neither is taken.
    for entry in sorted(json.loads(files["package/emoji.json"]), key=lambda e: e["sort_order"]):
        if entry.get("has_img_twitter") and entry["category"] != "Component":
            path = f"package/img/twitter/64/{entry['image']}"
            yield Candidate(f"emoji-datasource-twitter:{path}", entry["short_name"], files[path])


def clipart(archives: dict[str, Archive]) -> Iterator[Candidate]:
    root = "usr/share/games/pysiogame/res/images/art4apps/"
    for path, data in archives["pysiogame"].members(lambda n: n.startswith(root) and n.endswith(".jpg")):
        folder = path[len(root) :].split("/")[0]
        yield Candidate(f"pysiogame:{path}", f"{folder}-{_stem(path)}", data)


def faces(archives: dict[str, Archive]) -> Iterator[Candidate]:
    for path, data in archives["fake-avatars"].members(
        lambda n: re.fullmatch(r"package/avatars/png/\d+\.png", n) is not None
    ):
        yield Candidate(f"fake-avatars:{path}", f"face-{int(_stem(path)):03d}", data)


def portraits(archives: dict[str, Archive]) -> Iterator[Candidate]:
    root = "usr/share/games/wesnoth/1.16/data/core/images/portraits/"
    for path, data in archives["wesnoth-1.16-data"].members(
        lambda n: n.startswith(root) and n.endswith(".png")
    ):
        yield Candidate(f"wesnoth-1.16-data:{path}", path[len(root) : -4].replace("/", "-"), data)


# Normal, specular, gloss and height maps are not pictures of a surface; tex_common holds
# editor-only textures (clip, trigger, nodraw).
_UFOAI_MAPS = re.compile(r"_(nm|sm|gm|hm)\.\w+$|^textures/tex_common/")


def textures(archives: dict[str, Archive]) -> Iterator[Candidate]:
    for pk3_path, blob in archives["ufoai-textures"].members(lambda n: n.endswith(".pk3")):

        def wanted(name: str) -> bool:
            return re.search(r"\.(jpe?g|png|tga)$", name) is not None and not _UFOAI_MAPS.search(name)

        for path, data in zip_members(blob, wanted):
            folder = path.split("/")[1].removeprefix("tex_")
            yield Candidate(f"ufoai-textures:{pk3_path}!{path}", f"{folder}-{_stem(path)}", data)


# Openclipart's special/ holds no clip-art subjects: templates (CD covers and label, a poster, a
# gift certificate), a border example, gradients and seamless patterns. shapes/stars/ is 1,375 star
# polygons drawn by a program, one per point count and step (star_NNptKKstep.png): thin rings that
# look alike, a fifth of the collection if kept; its three drawn stars are kept.
_OPENCLIPART_LEFT_OUT = re.compile(r"special/|shapes/stars/star_\d+pt\d+step\.png$")


def openclipart(archives: dict[str, Archive]) -> Iterator[Candidate]:
    root = "usr/share/openclipart/png/"

    def wanted(name: str) -> bool:
        return (
            name.startswith(root)
            and name.endswith(".png")
            and not _OPENCLIPART_LEFT_OUT.match(name[len(root) :])
        )

    for path, data in archives["openclipart-png"].members(wanted):
        yield Candidate(f"openclipart-png:{path}", path[len(root) : -4].replace("/", "-"), data)


def _debs(*pairs: str) -> tuple[Source, ...]:
    return tuple(Source("debian", *pair.split(" ")) for pair in pairs)


COLLECTIONS = (
    Collection(
        "photos",
        "camera photos",
        "Photographs: animals, fish, monuments, tools, energy plants, hands (GCompris-qt's activities) "
        "and the photographic desktop wallpapers of Lomiri, Plasma and MATE (landscapes, plants, close-ups).",
        "Free licences per file, listed in each package's debian/copyright (.licences/): GCompris images "
        "GPL-3+, CC-BY-SA, CC-BY or public domain; wallpapers CC-BY-4.0, CC-BY-SA-3.0/4.0, CC0, GPL-2+.",
        _debs(
            "gcompris-qt-data 3.1-2",
            "lomiri-wallpapers-16.04 20.04.0-2",
            "lomiri-wallpapers-20.04 20.04.0-2",
            "plasma-workspace-wallpapers 4:5.27.5-2",
            "mate-backgrounds 1.26.0-1",
        ),
        "GCompris: WebP files read out of the activities' compiled Qt resources (rcc/*.rcc), in the "
        "photo folders of categorization, explore_monuments, explore_world_animals, "
        "explore_farm_animals, erase and leftright; WebP re-encoded as JPEG. Wallpapers: an allow-list "
        "of the photographic ones (largest size of each), MATE's nature/*.jpg; downscaled to 2,048 px.",
        photos,
        min_side_px=64,
    ),
    Collection(
        "products",
        "product images (catalogue renders)",
        "Sweet Home 3D's furniture catalogue: one 128 px catalogue picture per item (sofas, chairs, "
        "lamps, appliances, kitchenware, plants, electronics) rendered from its 3-D model on "
        "transparency, as a shop shows products. Renders, not photographs: no package here ships real "
        "product photos (see COLLECTIONS.md).",
        "CC0-1.0 (BlendSwap-CC-0), CC-BY-3.0 (BlendSwap-CC-BY, KatorLegaz, Reallusion) and "
        "CC-BY-3.0-US (Scopia), per debian/copyright.",
        _debs("sweethome3d-furniture 1.8-1"),
        "Each catalogue .sh3f (a zip) under usr/share/sweethome3d/furniture/: the icon#N images named in "
        "its PluginFurnitureCatalog.properties.",
        products,
    ),
    Collection(
        "objects",
        "object photos (cut-outs)",
        "Tux Paint's photographic stamps: single objects photographed and cut out on transparency "
        "(fruit, vegetables, flowers, clothes, hats, tools, dishes, instruments, vehicles, animals).",
        "GPL-2 (debian/copyright of tuxpaint-stamps-default).",
        _debs("tuxpaint-stamps-default 2022.06.04-1"),
        "usr/share/tuxpaint/stamps/**/*.png, leaving out the drawn stamps (cartoon folders, symbols, road "
        "signs, flags) and the pre-mirrored or back-view variants.",
        objects,
    ),
    Collection(
        "emoji",
        "icons / emoji",
        "Twemoji (Twitter's emoji), 64 px PNG, one per emoji of emoji-datasource's list: smileys, "
        "people, animals, food, places, activities, objects, symbols, flags.",
        "Graphics CC-BY-4.0 (Twitter, Inc and other contributors); the emoji-datasource package MIT.",
        (Source("npm", "emoji-datasource-twitter", "16.0.0"),),
        "package/img/twitter/64/<image> for each top-level entry of package/emoji.json with "
        "has_img_twitter, except the 'Component' category; skin-tone variants (nested) not taken.",
        emoji,
        min_side_px=16,
    ),
    Collection(
        "clipart",
        "clip-art / drawings",
        "Art4Apps' coloured drawings of words for children (animals, actions, food, jobs, clothes, body, "
        "sport, transport, nature), as shipped by the educational game pysiogame.",
        "CC-BY-SA (Art4Apps by Smart4Kids, per pysiogame's CREDITS); package GPL-3+.",
        _debs("pysiogame 4.20.01-1"),
        "usr/share/games/pysiogame/res/images/art4apps/**/*.jpg.",
        clipart,
    ),
    Collection(
        "faces",
        "faces / portraits (photo-real)",
        "Head-and-shoulder portraits of people who do not exist, generated by NVIDIA's StyleGAN2 "
        "(curated examples) and resized to 256 x 256 by the fake-avatars package.",
        "Package MIT; the pictures are NVIDIA's StyleGAN2 examples, which NVIDIA released for "
        "non-commercial use: fine for a benchmark, not for shipping.",
        (Source("npm", "fake-avatars", "1.1.0"),),
        "package/avatars/png/*.png (the same pictures are also in webp/).",
        faces,
    ),
    Collection(
        "portraits",
        "portraits (painted)",
        "Battle for Wesnoth's painted character portraits: humans, elves, dwarves, orcs, undead, "
        "drakes, merfolk and monsters, on transparency.",
        "GPL-2+ (Wesnoth's art; debian/copyright of wesnoth-1.16-data).",
        _debs("wesnoth-1.16-data 1:1.16.9-1"),
        "usr/share/games/wesnoth/1.16/data/core/images/portraits/**/*.png.",
        portraits,
    ),
    Collection(
        "textures",
        "textures / surfaces",
        "UFO: Alien Invasion's textures: brick, concrete, wood, metal, stone, grass, carpet, streets, "
        "doors, crates, signs, alien surfaces; mostly photographic.",
        "GPL-2+ for most; some CC-BY-3.0, CC-BY-SA-3.0, GPL-3+, Expat or public domain, per file in "
        "debian/copyright.",
        _debs("ufoai-textures 2.5-2"),
        "Images in usr/share/games/ufoai/base/0textures.pk3 (a zip) under textures/, except normal, "
        "specular, gloss and height maps (*_nm, *_sm, *_gm, *_hm) and tex_common (editor textures).",
        textures,
    ),
    Collection(
        "openclipart",
        "clip-art / icons / flags (large)",
        "The Open Clip Art Library's PNG renders as Debian ships them, filed by subject: animals, "
        "people, food, plants, buildings, transport, tools, office, music, games and playing cards, "
        "desktop icon themes, flags, map and other symbols, arrows and shapes; drawn, mostly on "
        "transparency, in many styles.",
        "Public domain: debian/copyright of openclipart-png gives the Creative Commons Public Domain "
        "Dedication (Copyright-Only Dedication or Public Domain Certification) for the whole library. "
        "It names no authors (upstream's per-image .txt files are not in the package); file names "
        "carry a shortened author name.",
        _debs("openclipart-png 1:0.18+dfsg-19"),
        "Regular files usr/share/openclipart/png/**/*.png; the package's 1,221 symlinks (a picture "
        "filed under a second folder) are not followed. Left out: special/ (templates, examples, "
        "gradients, patterns) and the program-drawn star polygons shapes/stars/star_NNptKKstep.png.",
        openclipart,
    ),
)


# --------------------------------------------------------------------------- filtering and writing


def _admit(data: bytes, min_side_px: int) -> tuple[Image.Image | None, str]:
    """The decoded image, or None and the reason it is left out."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception:  # Pillow raises many kinds for a broken file; each means "cannot use it"
        return None, "unreadable"
    if min(image.size) < min_side_px:
        return None, "tiny"
    rgba = image.convert("RGBA")
    if rgba.getchannel("A").getextrema()[1] == 0:
        return None, "flat"
    on_white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    on_white.alpha_composite(rgba)
    if ImageStat.Stat(on_white.convert("L")).stddev[0] < FLAT_STD:
        return None, "flat"
    return image, ""


def _pixel_hash(image: Image.Image) -> str:
    rgba = image.convert("RGBA")
    return hashlib.sha256(b"%dx%d" % rgba.size + rgba.tobytes()).hexdigest()


def _encoded(image: Image.Image, data: bytes) -> tuple[bytes, str, str]:
    """(bytes, extension, note) to write: the original bytes where they can be kept."""
    if image.format in ("JPEG", "PNG") and max(image.size) <= MAX_SIDE_PX:
        return data, ".jpg" if image.format == "JPEG" else ".png", ""
    note = f"re-encoded from {image.format}"
    if max(image.size) > MAX_SIDE_PX:
        image = image.copy()
        image.thumbnail((MAX_SIDE_PX, MAX_SIDE_PX), Image.Resampling.LANCZOS)
        note += f", downscaled to {image.size[0]}x{image.size[1]}"
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    out = io.BytesIO()
    if has_alpha:
        image.convert("RGBA").save(out, "PNG", optimize=True)
        return out.getvalue(), ".png", note
    image.convert("RGB").save(out, "JPEG", quality=92)
    return out.getvalue(), ".jpg", note


def _commit() -> str:
    done = _run(["git", "rev-parse", "--short", "HEAD"], Path(__file__).resolve().parent)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", name).strip("-.")[:100] or "image"


def build(collection: Collection, out: Path, cache: Path, max_images: int | None) -> dict:
    """Build one collection into out/NAME; returns the record written to its SOURCE.json."""
    started = time.perf_counter()
    target, partial = out / collection.name, out / f".{collection.name}.partial"
    if target.exists() and not (target / "SOURCE.json").exists():
        raise SystemExit(
            f"{target} exists and was not written by this script (no SOURCE.json); move it away."
        )
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    archives = {source.package: fetch(source, cache) for source in collection.sources}

    skipped, files, notes, dropped, first_with = Counter(), {}, {}, {}, {}
    candidates = 0
    for candidate in collection.extract(archives):
        candidates += 1
        image, reason = _admit(candidate.data, collection.min_side_px)
        if image is None:
            skipped[reason] += 1
            dropped[candidate.label] = reason
            continue
        digest = _pixel_hash(image)
        if digest in first_with:
            skipped["duplicate"] += 1
            dropped[candidate.label] = f"duplicate of {first_with[digest]}"
            continue
        data, extension, note = _encoded(image, candidate.data)
        stem, number = _safe_name(candidate.name), 1
        while (name := f"{stem}{f'-{number}' if number > 1 else ''}{extension}") in files:
            number += 1
        (partial / name).write_bytes(data)
        files[name] = candidate.label
        first_with[digest] = name
        if note:
            notes[name] = note
    if max_images is not None and len(files) > max_images:
        ranked = sorted(files, key=lambda n: hashlib.sha256(files[n].encode()).hexdigest())
        for name in ranked[max_images:]:
            (partial / name).unlink()
            notes.pop(name, None)
            skipped["over --max"] += 1
            dropped[files.pop(name)] = "over --max"

    licences = partial / ".licences"
    licences.mkdir()
    for archive in archives.values():
        for path, text in archive.licences.items():
            suffix = "copyright" if path.endswith("copyright") else Path(path).name
            (licences / f"{archive.source.package}.{suffix}").write_bytes(text)
    record = {
        "name": collection.name,
        "kind": collection.kind,
        "description": collection.description,
        "licence": collection.licence,
        "sources": [
            {
                "registry": archive.source.registry,
                "package": archive.source.package,
                "version": archive.version,
                "archive": archive.path.name,
                "archive_sha256": hashlib.sha256(archive.path.read_bytes()).hexdigest(),
            }
            for archive in archives.values()
        ],
        "extraction": collection.extraction,
        "filters": {
            "min_side_px": collection.min_side_px,
            "flat_luminance_std_below": FLAT_STD,
            "dedupe": "sha256 of decoded RGBA pixels and size; the first found is kept",
            "max_side_px": MAX_SIDE_PX,
            "max_images": max_images,
        },
        "counts": {"candidates": candidates, "images": len(files), "skipped": dict(sorted(skipped.items()))},
        "built_by": f"benchmarks/image_collections.py at commit {_commit()}",
        "seconds": round(time.perf_counter() - started, 1),
        "re_encoded": notes,
        "dropped": dict(sorted(dropped.items())),
        "files": dict(sorted(files.items())),
    }
    (partial / "SOURCE.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [c.name for c in COLLECTIONS]
    parser.add_argument("--out", type=Path, help="folder to write the collections into (DIR/NAME/)")
    parser.add_argument(
        "--only", nargs="+", choices=names, metavar="NAME", help=f"some of: {', '.join(names)}"
    )
    parser.add_argument("--max", type=int, metavar="N", help="at most N images per collection")
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help=f"package cache (default {DEFAULT_CACHE})"
    )
    parser.add_argument("--list", action="store_true", help="print the collections and exit")
    args = parser.parse_args()
    if args.list:
        for c in COLLECTIONS:
            sources = ", ".join(f"{s.registry}:{s.package} {s.version}" for s in c.sources)
            print(f"{c.name:<10} {c.kind:<36} {sources}")
        return
    if args.out is None:
        parser.error("--out is required (or --list)")
    if args.max is not None and args.max < 1:
        parser.error("--max must be at least 1")
    for tool in ("dpkg-deb", "apt-get", "npm"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: this script needs Debian's apt/dpkg and npm.")
    args.out.mkdir(parents=True, exist_ok=True)
    chosen = [c for c in COLLECTIONS if args.only is None or c.name in args.only]
    print(f"{'collection':<10} {'kind':<36} {'images':>6} {'skipped':>7} {'seconds':>7}")
    for collection in chosen:
        print(f"building {collection.name} ...", file=sys.stderr)
        record = build(collection, args.out, args.cache, args.max)
        images, skipped = record["counts"]["images"], sum(record["counts"]["skipped"].values())
        print(f"{collection.name:<10} {collection.kind:<36} {images:>6} {skipped:>7} {record['seconds']:>7}")


if __name__ == "__main__":
    main()
