"""The photographic finish of the synthetic world's second date: what makes a real second
orthophoto of the same town hard to match, painted over the shared layout.

A real pair of orthophotos of one town months apart differs by much more than colour: every
surface has texture (crop rows, tramlines, furrows, canopy crowns, asphalt, roof tiles), the
vegetation is in another phase (fields harvested or ploughed, trees turning one by one), shadows
fall elsewhere and have soft edges, cars have moved, the mosaic has seamlines with exposure
jumps, the sensor is softer, the file is JPEG-compressed and the two rasters are co-registered
only to a metre or so. `finish_*` functions each add one of those effects; `render_layout`
calls them for a `DateStyle` with `photographic=True` (date 2 by default) from their own random
stream, so date 1 is unchanged.

These textures are a fair, harder test, not a target: nothing in training is tuned to them
(the training augmentations are generic photometric and geometric ones), and results on them
are still an optimistic proxy for real imagery (flat world, datasets-and-metrics.md §5.8).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from meanloc.runtime.images import decode_image

# Field states of a late-summer / autumn date (BGR base colour, row period in metres, row contrast).
FIELD_STATES = {
    "crop": (None, (2.0, 6.0), 0.10),  # the parcel's palette colour, crop rows
    "stubble": ((120, 170, 195), (0.8, 1.6), 0.12),  # harvested cereal: pale straw, fine rows
    "ploughed": ((55, 75, 100), (0.5, 1.0), 0.25),  # dark soil with furrows
    "grass": ((70, 135, 95), (3.0, 8.0), 0.04),  # meadow, mown strips
}
CAR_COLOURS = [(235, 235, 235), (30, 30, 32), (140, 140, 145), (190, 190, 195), (40, 40, 160), (150, 80, 30),
               (60, 60, 60), (210, 210, 215)]


def noise(shape: tuple[int, int], cell_px: float, rng: np.random.Generator, octaves: int = 1) -> np.ndarray:
    """Smooth value noise in about [-1, 1] (bilinear upsampling of random grids; fast at full size)."""
    h, w = shape
    total = np.zeros((h, w), dtype=np.float32)
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
        cell = max(1.0, cell_px / 2 ** octave)
        grid = rng.standard_normal((int(h / cell) + 3, int(w / cell) + 3)).astype(np.float32)
        up = cv2.resize(grid, (round(grid.shape[1] * cell), round(grid.shape[0] * cell)),
                        interpolation=cv2.INTER_LINEAR)
        total += amplitude * up[:h, :w]
        norm += amplitude
        amplitude *= 0.5
    return total / norm


def finish_fields(img: np.ndarray, labels: np.ndarray, stripe_angle: np.ndarray, autumn: float,
                  field_mask: np.ndarray, px: float, rng: np.random.Generator) -> None:
    """Phenology and texture of the open land: each parcel harvested, ploughed, in crop or grass,
    with rows along its own direction, tramlines, and wet or bare patches."""
    n = len(stripe_angle)
    states = list(FIELD_STATES)
    probabilities = np.array([0.55 - 0.3 * autumn, 0.15 + 0.2 * autumn, 0.1 + 0.15 * autumn, 0.2 - 0.05 * autumn])
    state = rng.choice(len(states), n, p=probabilities / probabilities.sum())
    h, w = labels.shape
    angle = stripe_angle.astype(np.float32)
    across = (np.cos(angle)[labels] * np.arange(w, dtype=np.float32)[None, :]
              + np.sin(angle)[labels] * np.arange(h, dtype=np.float32)[:, None]) / px  # metres across the rows
    period = np.empty(n, np.float32)
    contrast = np.empty(n, np.float32)
    base = np.zeros((n, 3), np.float32)
    use_palette = np.zeros(n, bool)
    for index, name in enumerate(states):
        colour, (low, high), strength = FIELD_STATES[name]
        chosen = state == index
        period[chosen] = rng.uniform(low, high, chosen.sum())
        contrast[chosen] = strength * rng.uniform(0.6, 1.4, chosen.sum())
        if colour is None:
            use_palette[chosen] = True
        else:
            base[chosen] = np.array(colour, np.float32) * rng.uniform(0.85, 1.15, (chosen.sum(), 1))
    rows = np.sin(2.0 * math.pi * across / period[labels]) * contrast[labels]
    tram_period = rng.uniform(18.0, 24.0, n).astype(np.float32)
    tram_phase = np.abs(np.mod(across / tram_period[labels], 1.0) - 0.5) * tram_period[labels]
    has_tram = np.isin(state, [states.index("crop"), states.index("stubble")])[labels]
    tram = (tram_phase < 0.35) & has_tram
    mask = field_mask
    own = ~use_palette[labels] & mask
    img[own] = base[labels[own]]
    texture = 1.0 + rows + 0.10 * noise((h, w), 1.5 * px, rng, octaves=2)
    patches = noise((h, w), 35.0 * px, rng, octaves=2)
    texture *= np.where(patches > 0.9, 0.78, 1.0).astype(np.float32)  # wet hollows, bare patches
    texture[tram] *= 0.72
    img[mask] *= texture[mask][:, None]


def finish_canopy(img: np.ndarray, forest: np.ndarray, autumn: float, px: float, rng: np.random.Generator,
                  crown_m: float = 4.5) -> None:
    """Forest canopy as individual crowns (Voronoi cells of jittered stems), each in its own phase,
    domed (lit at the top, darker at the rim) with dark gaps between them."""
    rows, cols = np.nonzero(forest)
    if not len(rows):
        return
    top, left = rows.min(), cols.min()
    box = forest[top:rows.max() + 1, left:cols.max() + 1]
    h, w = box.shape
    spacing = crown_m * px
    ny, nx = int(h / spacing) + 2, int(w / spacing) + 2
    gy, gx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    ys = ((gy + rng.uniform(0.15, 0.85, gy.shape)) * spacing).ravel()
    xs = ((gx + rng.uniform(0.15, 0.85, gx.shape)) * spacing).ravel()
    keep = (ys < h) & (xs < w)
    stems = np.full((h, w), 255, dtype=np.uint8)
    stems[ys[keep].astype(int), xs[keep].astype(int)] = 0
    distance, labels = cv2.distanceTransformWithLabels(stems, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    palette = np.array([[45, 95, 55], [40, 120, 140], [35, 95, 160], [50, 80, 110], [45, 105, 75]], np.float32)
    weights = np.array([1.0 - autumn, 0.5 * autumn, 0.3 * autumn, 0.2 * autumn, 0.3])
    crown_colour = palette[rng.choice(len(palette), labels.max() + 1, p=weights / weights.sum())]
    crown_colour *= rng.uniform(0.8, 1.2, (len(crown_colour), 1)).astype(np.float32)
    radius = (distance / (0.6 * spacing)).astype(np.float32)
    shade = 1.15 - 0.55 * radius ** 2 + 0.12 * noise((h, w), 0.8 * px, rng)
    shade[radius > 1.0] = 0.4  # gaps between crowns look into shadow
    inside = box
    target = img[top:top + h, left:left + w]
    target[inside] = crown_colour[labels[inside]] * shade[inside][:, None]


def tree_colours(count: int, autumn: float, rng: np.random.Generator) -> np.ndarray:
    """Per-tree crown colour (BGR) for the season: trees turn one by one, some are already bare."""
    palette = np.array([[50, 110, 65], [45, 140, 170], [35, 100, 185], [40, 70, 140], [95, 105, 115]], np.float32)
    weights = np.array([1.0 - 0.8 * autumn, 0.4 * autumn, 0.25 * autumn, 0.15 * autumn, 0.2 * autumn + 0.01])
    choice = rng.choice(len(palette), count, p=weights / weights.sum())
    return palette[choice] * rng.uniform(0.8, 1.2, (count, 1)).astype(np.float32)


def soft_shadow(img: np.ndarray, shadow: np.ndarray, px: float, sun_elevation_deg: float) -> None:
    """Darken the cast-shadow mask with penumbra (longer shadows, softer edges) and blue sky light."""
    sigma = max(0.5, 0.35 * px / max(0.2, math.tan(math.radians(sun_elevation_deg))))
    soft = cv2.GaussianBlur(shadow.astype(np.float32), (0, 0), sigma)
    img *= (1.0 - 0.55 * soft)[:, :, None]
    img[:, :, 0] += 10.0 * soft  # shadows are lit by the blue sky


def add_surface_texture(img: np.ndarray, mask: np.ndarray, cell_px: float, amplitude: float,
                        rng: np.random.Generator, octaves: int = 2) -> None:
    """Multiplicative fine texture on the pixels of `mask` (asphalt, roof tiles, lawns)."""
    field = noise(mask.shape, cell_px, rng, octaves)
    img[mask] *= (1.0 + amplitude * field[mask])[:, None]


def park_cars(img: np.ndarray, roads: np.ndarray, px: float, rng: np.random.Generator, per_km: float = 25.0) -> int:
    """Cars along the streets (they moved since the other date); returns how many."""
    on_road = np.isin(roads, (1, 2))
    rows, cols = np.nonzero(on_road)
    if not len(rows):
        return 0
    road_km = len(rows) / px ** 2 / 8.0 / 1000.0  # area over a typical 8 m width
    count = min(len(rows), int(rng.poisson(per_km * road_km)))
    pick = rng.choice(len(rows), count, replace=False)
    blurred = cv2.GaussianBlur(on_road.astype(np.float32), (0, 0), 3.0 * px)
    gy = cv2.Sobel(blurred, cv2.CV_32F, 0, 1, ksize=3)
    gx = cv2.Sobel(blurred, cv2.CV_32F, 1, 0, ksize=3)
    for index in pick:
        r, c = rows[index], cols[index]
        along = math.atan2(float(gy[r, c]), float(gx[r, c])) + math.pi / 2.0  # roads run across the gradient
        colour = CAR_COLOURS[int(rng.integers(len(CAR_COLOURS)))]
        box = cv2.boxPoints(((float(c), float(r)), (4.5 * px, 1.9 * px), math.degrees(along)))
        cv2.fillConvexPoly(img, np.round(box).astype(np.int32), tuple(float(v) for v in colour))
    return count


def mosaic_seams(img: np.ndarray, px: float, rng: np.random.Generator, strip_m: float = 600.0) -> int:
    """An orthomosaic of flight strips: each strip with its own exposure and white balance, joined
    along wiggly seamlines. Returns the number of strips."""
    h, w = img.shape[:2]
    strip_px = strip_m * px
    count = max(1, math.ceil(w / strip_px))
    columns = np.arange(w, dtype=np.float32)[None, :]
    strip = np.zeros((h, w), np.int32)
    for k in range(1, count):
        seam = k * strip_px + 60.0 * px * noise((1, h), 150.0 * px, rng)[0]  # wiggles along the strip
        strip += (columns > seam[:, None]).astype(np.int32)
    gains = rng.uniform(0.93, 1.07, (count, 3)).astype(np.float32)
    img *= gains[strip]
    return count


def sensor_and_file(image: np.ndarray, px: float, rng: np.random.Generator, jpeg_quality: int = 70,
                    misregistration_m: float = 0.8) -> np.ndarray:
    """A softer sensor, co-registration good to about a metre, and JPEG compression (4:2:0)."""
    h, w = image.shape[:2]
    soft = cv2.GaussianBlur(image, (0, 0), 0.6)
    shift_x = misregistration_m * px * noise((h, w), 250.0 * px, rng)
    shift_y = misregistration_m * px * noise((h, w), 250.0 * px, rng)
    map_x = np.arange(w, dtype=np.float32)[None, :] + shift_x
    map_y = np.arange(h, dtype=np.float32)[:, None] + shift_y
    warped = cv2.remap(soft, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    ok, encoded = cv2.imencode(".jpg", warped, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 BGR
        return warped
    return decode_image(encoded.tobytes(), "photographic date JPEG round trip")
