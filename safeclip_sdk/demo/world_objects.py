"""The demo world's objects: 256 object types, each a shape family with one distinguishing attribute.

An object type is named by its attribute and its family ("striped kettle", "winged owl", or the bare
family name for the plain one: "kettle"). Its drawing is fixed by its name: the family's silhouette,
composed from primitives (ellipses, rectangles, polygons, lines), then the attribute: a pattern
over the body (stripes, spots, checks) or a part added to it (wings, legs, horns, a crown).
Only the body colour changes from scene to scene, and the caption names it.

Sprites are drawn at 4x and reduced, so the small objects keep clean, antialiased edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

UNIT = 64.0  # scenes are laid out on a 64x64 canvas and scaled to the image size

Color = tuple[int, int, int]

COLOURS: dict[str, Color] = {
    "red": (215, 35, 35), "blue": (35, 75, 225), "green": (30, 160, 50), "yellow": (245, 215, 30),
    "purple": (135, 55, 185), "orange": (245, 135, 25), "white": (248, 248, 248), "black": (22, 22, 22),
}
SKIN: Color = (240, 188, 150)


class Canvas:
    """ImageDraw in 64-unit coordinates, scaled to the real image size."""

    def __init__(self, image: Image.Image) -> None:
        self.draw = ImageDraw.Draw(image)
        self.scale = image.width / UNIT

    def _xy(self, points):
        return [value * self.scale for value in points]

    def ellipse(self, box, fill, outline=None):
        self.draw.ellipse(self._xy(box), fill=fill, outline=outline)

    def circle(self, x, y, r, fill, outline=None):
        self.ellipse((x - r, y - r, x + r, y + r), fill, outline)

    def rect(self, box, fill, outline=None):
        self.draw.rectangle(self._xy(box), fill=fill, outline=outline)

    def polygon(self, points, fill, outline=None):
        self.draw.polygon(self._xy([value for point in points for value in point]), fill=fill, outline=outline)

    def line(self, points, fill, width=1.0):
        self.draw.line(self._xy([value for point in points for value in point]), fill=fill,
                       width=max(1, round(width * self.scale)))


# ------------------------------------------------------------------------------------ shape families
# A primitive is (kind, role, geometry[, width]) in body units: the body fills about [-0.5, 0.5]^2,
# y pointing down. Role "body" takes the object's colour (and its pattern); the others are fixed.

ROLE_COLOURS: dict[str, Color] = {
    "dark": (42, 40, 46), "glass": (170, 215, 240), "wood": (115, 72, 38), "white": (244, 244, 238),
    "gold": (236, 186, 24), "leaf": (52, 138, 62), "roof": (112, 46, 32), "clay": (188, 96, 62),
    "wing": (200, 208, 224), "ivory": (236, 224, 192), "nose": (230, 118, 40),
}


@dataclass(frozen=True)
class Family:
    """A base silhouette: its noun, its primitives, and the top and bottom of its body (for parts)."""

    noun: str
    primitives: tuple
    top: float = -0.5
    bottom: float = 0.5


def _mirror(points):
    return tuple((-x, y) for x, y in points)


def _star_points():
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 0.5, 0.21)
    return tuple((float(r * np.cos(a)), float(0.05 + r * np.sin(a))) for r, a in zip(radii, angles))


def _crescent_points():
    outer = [(0.45 * np.cos(a), 0.45 * np.sin(a)) for a in np.linspace(0.35 * np.pi, 1.65 * np.pi, 14)]
    inner = [(0.12 + 0.34 * np.cos(a), -0.02 + 0.34 * np.sin(a)) for a in np.linspace(1.6 * np.pi, 0.4 * np.pi, 12)]
    return tuple((float(x), float(y)) for x, y in outer + inner)


_PETALS = tuple(("ellipse", "body", (0.24 * np.cos(a) - 0.16, -0.15 + 0.24 * np.sin(a) - 0.16,
                                     0.24 * np.cos(a) + 0.16, -0.15 + 0.24 * np.sin(a) + 0.16))
                for a in np.linspace(0, 2 * np.pi, 6)[:-1])
_OWL_EAR = ((-0.36, -0.2), (-0.32, -0.5), (-0.1, -0.3))
_FIN = ((-0.17, 0.08), (-0.38, 0.45), (-0.1, 0.3))

FAMILIES: tuple[Family, ...] = (
    Family("kettle", (("ellipse", "body", (-0.4, -0.25, 0.35, 0.45)),
                      ("poly", "body", ((0.22, 0.0), (0.5, -0.22), (0.5, -0.1), (0.3, 0.2))),
                      ("line", "dark", ((-0.36, -0.05), (-0.5, 0.05), (-0.5, 0.22), (-0.36, 0.3)), 0.08),
                      ("ellipse", "dark", (-0.09, -0.38, 0.09, -0.22))), top=-0.3),
    Family("lamp", (("poly", "body", ((-0.28, -0.45), (0.28, -0.45), (0.45, 0.02), (-0.45, 0.02))),
                    ("rect", "dark", (-0.05, 0.02, 0.05, 0.4)), ("rect", "dark", (-0.26, 0.38, 0.26, 0.48)))),
    Family("vase", (("ellipse", "body", (-0.36, -0.12, 0.36, 0.5)), ("rect", "body", (-0.12, -0.4, 0.12, 0.0)),
                    ("rect", "body", (-0.21, -0.48, 0.21, -0.38)))),
    Family("bottle", (("rect", "body", (-0.22, -0.1, 0.22, 0.5)),
                      ("poly", "body", ((-0.22, -0.1), (-0.08, -0.3), (0.08, -0.3), (0.22, -0.1))),
                      ("rect", "body", (-0.08, -0.45, 0.08, -0.28)), ("rect", "dark", (-0.1, -0.52, 0.1, -0.43)))),
    Family("cup", (("line", "dark", ((0.22, -0.2), (0.45, -0.15), (0.45, 0.12), (0.2, 0.2)), 0.1),
                   ("poly", "body", ((-0.38, -0.3), (0.3, -0.3), (0.22, 0.38), (-0.3, 0.38))),
                   ("rect", "dark", (-0.48, 0.38, 0.42, 0.47))), top=-0.3),
    Family("bell", (("poly", "body", ((-0.1, -0.42), (0.1, -0.42), (0.28, -0.15), (0.32, 0.25), (0.46, 0.38),
                                      (-0.46, 0.38), (-0.32, 0.25), (-0.28, -0.15))),
                    ("ellipse", "dark", (-0.1, 0.34, 0.1, 0.52)), ("line", "dark", ((0, -0.42), (0, -0.52)), 0.1))),
    Family("mushroom", (("rect", "white", (-0.14, -0.12, 0.14, 0.48)), ("dome", "body", (-0.5, -0.45, 0.5, 0.25)))),
    Family("tree", (("rect", "wood", (-0.08, 0.1, 0.08, 0.5)), ("ellipse", "body", (-0.42, -0.5, 0.42, 0.25)))),
    Family("house", (("rect", "body", (-0.38, -0.05, 0.38, 0.48)),
                     ("poly", "roof", ((-0.5, -0.05), (0.0, -0.5), (0.5, -0.05))),
                     ("rect", "wood", (-0.08, 0.2, 0.08, 0.48)), ("rect", "glass", (0.14, 0.05, 0.3, 0.18)))),
    Family("boat", (("line", "wood", ((0.0, 0.12), (0.0, -0.48)), 0.06),
                    ("poly", "white", ((0.04, -0.45), (0.04, 0.06), (0.38, 0.06))),
                    ("poly", "body", ((-0.5, 0.1), (0.5, 0.1), (0.35, 0.42), (-0.35, 0.42)))), bottom=0.42),
    Family("fish", (("poly", "body", ((-0.3, 0.0), (-0.52, -0.25), (-0.52, 0.25))),
                    ("ellipse", "body", (-0.38, -0.25, 0.42, 0.25)), ("ellipse", "dark", (0.18, -0.1, 0.27, -0.01))),
           top=-0.25, bottom=0.25),
    Family("star", (("poly", "body", _star_points()),), bottom=0.45),
    Family("heart", (("ellipse", "body", (-0.46, -0.42, 0.03, 0.08)), ("ellipse", "body", (-0.03, -0.42, 0.46, 0.08)),
                     ("poly", "body", ((-0.44, -0.06), (0.44, -0.06), (0.0, 0.45))))),
    Family("moon", (("poly", "body", _crescent_points()),), top=-0.45, bottom=0.45),
    Family("rocket", (("poly", "dark", _FIN), ("poly", "dark", _mirror(_FIN)),
                      ("ellipse", "body", (-0.18, -0.5, 0.18, 0.38)),
                      ("ellipse", "glass", (-0.09, -0.22, 0.09, -0.04)))),
    Family("umbrella", (("line", "dark", ((0.0, -0.08), (0.0, 0.42), (-0.1, 0.5), (-0.2, 0.42)), 0.07),
                        ("dome", "body", (-0.5, -0.45, 0.5, 0.3))), top=-0.45),
    Family("chair", (("rect", "body", (-0.3, -0.5, -0.16, 0.06)), ("rect", "body", (-0.3, -0.02, 0.32, 0.1)),
                     ("rect", "dark", (-0.3, 0.1, -0.22, 0.5)), ("rect", "dark", (0.24, 0.1, 0.32, 0.5)))),
    Family("clock", (("ellipse", "body", (-0.46, -0.46, 0.46, 0.46)), ("ellipse", "white", (-0.32, -0.32, 0.32, 0.32)),
                     ("line", "dark", ((0.0, -0.24), (0.0, 0.0), (0.18, 0.06)), 0.07))),
    Family("key", (("ellipse", "body", (-0.5, -0.22, -0.08, 0.2)), ("ellipse", "dark", (-0.37, -0.08, -0.21, 0.06)),
                   ("rect", "body", (-0.12, -0.06, 0.48, 0.06)), ("rect", "body", (0.24, 0.04, 0.32, 0.22)),
                   ("rect", "body", (0.38, 0.04, 0.46, 0.18))), top=-0.22, bottom=0.22),
    Family("apple", (("line", "wood", ((0.0, -0.26), (0.05, -0.48)), 0.07),
                     ("ellipse", "leaf", (0.05, -0.5, 0.3, -0.36)),
                     ("ellipse", "body", (-0.42, -0.3, 0.42, 0.48))), top=-0.35),
    Family("flower", (("line", "leaf", ((0.0, 0.05), (0.0, 0.5)), 0.08), *_PETALS,
                      ("ellipse", "gold", (-0.11, -0.26, 0.11, -0.04)))),
    Family("cactus", (("rect", "body", (-0.12, -0.45, 0.12, 0.4)), ("rect", "body", (-0.38, -0.12, -0.1, -0.02)),
                      ("rect", "body", (-0.38, -0.34, -0.27, -0.02)), ("rect", "body", (0.1, 0.0, 0.36, 0.1)),
                      ("rect", "body", (0.26, -0.24, 0.36, 0.1)), ("rect", "clay", (-0.25, 0.32, 0.25, 0.5)))),
    Family("tent", (("poly", "body", ((-0.5, 0.45), (0.0, -0.45), (0.5, 0.45))),
                    ("poly", "dark", ((-0.15, 0.45), (0.0, 0.1), (0.15, 0.45))))),
    Family("tower", (("rect", "body", (-0.25, -0.3, 0.25, 0.5)), ("rect", "body", (-0.32, -0.34, 0.32, -0.24)),
                     ("rect", "body", (-0.32, -0.48, -0.18, -0.3)), ("rect", "body", (-0.07, -0.48, 0.07, -0.3)),
                     ("rect", "body", (0.18, -0.48, 0.32, -0.3)), ("rect", "dark", (-0.08, 0.26, 0.08, 0.5)))),
    Family("gift", (("rect", "body", (-0.4, -0.2, 0.4, 0.45)), ("rect", "body", (-0.45, -0.3, 0.45, -0.15)),
                    ("rect", "gold", (-0.06, -0.3, 0.06, 0.45)), ("ellipse", "gold", (-0.24, -0.46, 0.0, -0.28)),
                    ("ellipse", "gold", (0.0, -0.46, 0.24, -0.28))), top=-0.35, bottom=0.45),
    Family("guitar", (("poly", "wood", ((0.0, -0.05), (0.38, -0.47), (0.46, -0.4), (0.07, 0.02))),
                      ("ellipse", "body", (-0.28, -0.18, 0.15, 0.18)), ("ellipse", "body", (-0.36, 0.0, 0.26, 0.5)),
                      ("ellipse", "dark", (-0.13, 0.1, 0.03, 0.26)))),
    Family("kite", (("line", "dark", ((0.0, 0.25), (0.1, 0.34), (-0.06, 0.42), (0.05, 0.5)), 0.05),
                    ("poly", "body", ((0.0, -0.5), (0.32, -0.1), (0.0, 0.27), (-0.32, -0.1))))),
    Family("balloon", (("line", "dark", ((0.0, 0.2), (0.06, 0.34), (-0.04, 0.5)), 0.05),
                       ("ellipse", "body", (-0.32, -0.5, 0.32, 0.22)), ("poly", "body", ((-0.06, 0.26), (0.06, 0.26),
                                                                                      (0.0, 0.18))))),
    Family("turtle", (("ellipse", "leaf", (0.3, -0.12, 0.52, 0.08)), ("rect", "leaf", (-0.32, 0.02, -0.18, 0.22)),
                      ("rect", "leaf", (0.16, 0.02, 0.3, 0.22)), ("dome", "body", (-0.44, -0.35, 0.44, 0.45))),
           top=-0.35, bottom=0.22),
    Family("sofa", (("rect", "body", (-0.45, -0.25, 0.45, 0.12)), ("rect", "body", (-0.45, 0.06, 0.45, 0.3)),
                    ("rect", "body", (-0.52, -0.08, -0.34, 0.32)), ("rect", "body", (0.34, -0.08, 0.52, 0.32)),
                    ("rect", "dark", (-0.45, 0.3, -0.36, 0.4)), ("rect", "dark", (0.36, 0.3, 0.45, 0.4))),
           top=-0.25, bottom=0.4),
    Family("owl", (("poly", "body", _OWL_EAR), ("poly", "body", _mirror(_OWL_EAR)),
                   ("ellipse", "body", (-0.38, -0.36, 0.38, 0.5)), ("ellipse", "white", (-0.27, -0.24, -0.02, 0.01)),
                   ("ellipse", "white", (0.02, -0.24, 0.27, 0.01)), ("ellipse", "dark", (-0.18, -0.15, -0.1, -0.07)),
                   ("ellipse", "dark", (0.1, -0.15, 0.18, -0.07)),
                   ("poly", "gold", ((-0.05, 0.03), (0.05, 0.03), (0.0, 0.14))))),
    Family("snowman", (("ellipse", "body", (-0.38, -0.02, 0.38, 0.5)), ("ellipse", "body", (-0.25, -0.42, 0.25, 0.06)),
                       ("ellipse", "dark", (-0.13, -0.26, -0.05, -0.18)),
                       ("ellipse", "dark", (0.05, -0.26, 0.13, -0.18)),
                       ("poly", "nose", ((0.0, -0.16), (0.0, -0.08), (0.2, -0.12))))),
)

# ------------------------------------------------------------------------------------------ attributes
# Patterns are functions of body units, so a striped kettle shows the same stripes in every scene.

def _stripes(x, y):
    return np.floor((y + 0.5) / 0.125) % 2 == 1


def _spots(x, y):
    """Dots on a lattice of 0.3 units, every other column shifted by half a step."""
    column = np.floor((x + 0.5) / 0.3)
    dx = (x + 0.5) % 0.3 - 0.15
    dy = (y + 0.5 + 0.15 * (column % 2)) % 0.3 - 0.15
    return dx ** 2 + dy ** 2 < 0.08 ** 2


def _checks(x, y):
    return (np.floor((x + 0.5) / 0.22) + np.floor((y + 0.5) / 0.22)) % 2 == 1


PATTERNS = {"striped": _stripes, "spotted": _spots, "checked": _checks}
_WING = ((-0.3, -0.05), (-0.78, -0.5), (-0.78, 0.02), (-0.3, 0.22))
_HORN = ((-0.32, 0.12), (-0.5, -0.3), (-0.12, 0.04))
_CROWN = ((-0.3, 0.06), (-0.3, -0.24), (-0.15, -0.1), (0.0, -0.28), (0.15, -0.1), (0.3, -0.24), (0.3, 0.06))
ATTRIBUTES = ("", *PATTERNS, "winged", "legged", "horned", "crowned")  # "" is the plain object


def _object_names() -> dict[str, tuple[Family, str]]:
    return {f"{attribute} {family.noun}".strip(): (family, attribute)
            for attribute in ATTRIBUTES for family in FAMILIES}


OBJECTS: dict[str, tuple[Family, str]] = _object_names()
OBJECT_NAMES: tuple[str, ...] = tuple(OBJECTS)

SUPERSAMPLE = 3
BODY_SHARE = 0.62  # of the sprite's side; the rest is room for wings, legs, horns and crowns


@lru_cache(maxsize=4096)
def object_sprite(name: str, colour: str, size: int) -> Image.Image:
    """The RGBA drawing of object ``name`` in ``colour``, ``size`` x ``size`` pixels, outlined."""
    family, attribute = OBJECTS[name]
    side = size * SUPERSAMPLE
    unit, centre = BODY_SHARE * side, side / 2
    fill = COLOURS[colour]
    sprite = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(sprite)

    def paint(kind, role, geometry, width=0.0, dy=0.0):
        colour_of_role = fill if role == "body" else ROLE_COLOURS[role]
        if kind in ("ellipse", "rect", "dome"):
            x0, y0, x1, y1 = geometry
            box = [centre + x0 * unit, centre + (y0 + dy) * unit, centre + x1 * unit, centre + (y1 + dy) * unit]
            if kind == "ellipse":
                draw.ellipse(box, fill=colour_of_role)
            elif kind == "rect":
                draw.rectangle(box, fill=colour_of_role)
            else:  # the upper half of the ellipse in the box
                draw.chord(box, 180, 360, fill=colour_of_role)
            return
        points = [(centre + x * unit, centre + (y + dy) * unit) for x, y in geometry]
        if kind == "poly":
            draw.polygon(points, fill=colour_of_role)
        else:
            draw.line(points, fill=colour_of_role, width=max(1, round(width * unit)), joint="curve")

    if attribute == "winged":  # behind the body
        paint("poly", "wing", _WING)
        paint("poly", "wing", _mirror(_WING))
    for primitive in family.primitives:
        paint(*primitive)
    if attribute in PATTERNS:  # on the pixels of the body's colour only, not on its details
        pixels = np.asarray(sprite)
        coordinates = (np.arange(side) + 0.5 - centre) / unit
        on_pattern = PATTERNS[attribute](coordinates[None, :], coordinates[:, None])
        on_body = np.all(pixels[..., :3] == fill, axis=-1) & (pixels[..., 3] > 0)
        sprite.paste((*_ink(fill), 255), mask=Image.fromarray((on_body & on_pattern).astype(np.uint8) * 255))
    elif attribute == "legged":
        for side in (-1, 1):
            paint("line", "dark", ((side * 0.18, -0.04), (side * 0.26, 0.24)), 0.09, dy=family.bottom)
            paint("ellipse", "dark", (side * 0.26 - 0.1, 0.2, side * 0.26 + 0.1, 0.3), dy=family.bottom)
    elif attribute == "horned":
        paint("poly", "ivory", _HORN, dy=family.top)
        paint("poly", "ivory", _mirror(_HORN), dy=family.top)
    elif attribute == "crowned":
        paint("poly", "gold", _CROWN, dy=family.top)
    return _outlined(sprite, (200, 200, 200) if colour == "black" else (25, 25, 25)).convert("RGBa").resize(
        (size, size), Image.Resampling.BOX).convert("RGBA")


def _ink(fill: Color) -> Color:
    """The pattern's colour: dark on a light body, light on a dark one."""
    return (28, 28, 28) if 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2] > 110 else (236, 236, 236)


def _outlined(sprite: Image.Image, line: Color) -> Image.Image:
    """The sprite with its silhouette's edge, about one output pixel wide, painted in ``line``."""
    pixels = np.array(sprite)
    solid = pixels[..., 3] > 0
    pixels[solid & ~_eroded(solid, SUPERSAMPLE - 1), :3] = line
    return Image.fromarray(pixels, "RGBA")


def _eroded(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` eroded by a (2 * radius + 1)-pixel square: along the rows, then (transposed) the columns."""
    for _ in range(2):
        eroded = mask.copy()
        for shift in range(1, radius + 1):
            eroded[shift:] &= mask[:-shift]
            eroded[:-shift] &= mask[shift:]
        mask = eroded.T
    return mask
