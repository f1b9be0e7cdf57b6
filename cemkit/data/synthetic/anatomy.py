"""3D anatomy of a synthetic EM volume: cells, nucleus, mitochondria and vesicles.

Everything is built in physical space (nm) and sampled at the voxel centres, so objects are
genuinely 3D and consecutive anisotropic z-slices are correlated. The maps returned here are
what :mod:`.render` turns into an image; labels come from the same maps, so image and labels
agree by construction.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .fields import axis_coords, smooth_noise

#: Distances (nm) beyond which a cell membrane has no visible effect.
FACE_CAP_NM = 60.0
_TILE_NM = 300.0


@dataclass
class Anatomy:
    """Label-space description of one volume (all arrays are (z, y, x)).

    Attributes
    ----------
    cell_id : int32 array
        Index of the cell each voxel belongs to (``n_cells`` = the nucleus' own region).
    face_dist : float32 array
        Distance (nm) to the nearest cell membrane, capped at :data:`FACE_CAP_NM`.
    nucleus_sdf : float32 array
        Signed distance (nm) to the nuclear envelope (negative inside), or None without nucleus.
    instances : int32 array
        Mitochondrion ids (0 = none), each one 3D 6-connected component.
    mito_depth : float32 array
        Depth (nm) below the mitochondrion surface (>0 inside mitochondria, 0 elsewhere).
    cristae : float32 array
        Cristae lamella strength in [0, 1] inside mitochondria, 0 elsewhere.
    vesicle_sdf : float32 array
        Signed distance (nm) to the nearest vesicle surface (negative inside), capped.
    n_cells : int
        Number of point-seeded cells.
    """

    cell_id: np.ndarray
    face_dist: np.ndarray
    nucleus_sdf: np.ndarray | None
    instances: np.ndarray
    mito_depth: np.ndarray
    cristae: np.ndarray
    vesicle_sdf: np.ndarray
    n_cells: int


# ----------------------------------------------------------------------------------- nucleus
def nucleus_sdf(rng, shape, voxel_size) -> np.ndarray:
    """Approximate signed distance (nm) to one large, slightly irregular ellipsoidal nucleus.

    The nucleus is centred near one edge of the field so that it covers roughly 10-30 % of
    each slice, as when a cell body is cut at the side of a neuropil field.
    """
    zc, yc, xc = axis_coords(shape, voxel_size)
    ext = np.array(shape, dtype=np.float64) * np.array(voxel_size, dtype=np.float64)
    side = min(ext[1], ext[2])
    r_inplane = rng.uniform(0.32, 0.45, size=2) * side
    r_z = max(float(r_inplane.mean()) * rng.uniform(0.8, 1.2), ext[0] * 0.9)
    radii = np.array([r_z, *r_inplane])
    # centre: on a random edge of the field, pushed in or out a little
    edge = rng.integers(4)
    centre = np.array([ext[0] * rng.uniform(0.3, 0.7), 0.0, 0.0])
    along = rng.uniform(0.25, 0.75)
    inward = rng.uniform(-0.05, 0.2)
    if edge == 0:
        centre[1:] = (inward * ext[1], along * ext[2])
    elif edge == 1:
        centre[1:] = ((1 - inward) * ext[1], along * ext[2])
    elif edge == 2:
        centre[1:] = (along * ext[1], inward * ext[2])
    else:
        centre[1:] = (along * ext[1], (1 - inward) * ext[2])
    dz = ((zc - centre[0]) / radii[0])[:, None, None]
    dy = ((yc - centre[1]) / radii[1])[None, :, None]
    dx = ((xc - centre[2]) / radii[2])[None, None, :]
    r2 = dz * dz + dy * dy + dx * dx
    g2 = (dz / radii[0]) ** 2 + (dy / radii[1]) ** 2 + (dx / radii[2]) ** 2
    r = np.sqrt(r2)
    sdf = (r - 1.0) * r / np.sqrt(np.maximum(g2, 1e-20))
    sdf += 0.06 * float(radii[1:].mean()) * smooth_noise(rng, shape, voxel_size, 0.35 * side)
    return sdf.astype(np.float32)


# ------------------------------------------------------------------------------------- cells
def _cell_seeds(rng, ext, diameter):
    """Jittered-grid seeds covering the field plus one cell of margin, (n, 3) nm."""
    axes = []
    for e in ext:
        n = int(np.ceil((e + 2 * diameter) / diameter))
        axes.append(-diameter + (np.arange(n) + 0.5) * diameter)
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    seeds = grid + rng.uniform(-0.4, 0.4, size=grid.shape) * diameter
    # some grid cells split into several thin processes (axons next to big dendrites)
    split = rng.random(len(grid)) < 0.35
    extra = [c + rng.uniform(-0.5, 0.5, size=(int(rng.integers(1, 4)), 3)) * diameter for c in grid[split]]
    return np.concatenate([seeds, *extra]) if extra else seeds


def cells(rng, shape, voxel_size, nuc_sdf, diameter_nm=650.0, shell_nm=120.0):
    """Cells as a warped 3D Voronoi partition; the nucleus is one extra, non-point "seed".

    Returns
    -------
    cell_id : int32 array
        Nearest seed index; ``n_seeds`` marks the nucleus' cell.
    face_dist : float32 array
        ``(d2 - d1) / 2`` of the two nearest (warped) seed distances, capped at
        :data:`FACE_CAP_NM`: zero on membranes, growing towards cell interiors.
    n_seeds : int
    """
    ext = np.array(shape) * np.array(voxel_size, dtype=np.float64)
    seeds = _cell_seeds(rng, ext, diameter_nm).astype(np.float32)
    n_seeds = len(seeds)
    warp_amp = 0.12 * diameter_nm
    warp = [warp_amp * smooth_noise(rng, shape, voxel_size, 0.7 * diameter_nm) for _ in range(3)]
    coords = axis_coords(shape, voxel_size)
    cell_id = np.empty(shape, dtype=np.int32)
    face = np.empty(shape, dtype=np.float32)
    for sl in _tiles(shape, voxel_size):
        pz = coords[0][sl[0], None, None] + warp[0][sl]
        py = coords[1][None, sl[1], None] + warp[1][sl]
        px = coords[2][None, None, sl[2]] + warp[2][sl]
        # squared distances: the two nearest are square-rooted once at the end
        d1, d2, best = _two_nearest_seeds(seeds, _candidate_seeds(seeds, pz, py, px), pz, py, px)
        if nuc_sdf is not None:
            dn = nuc_sdf[sl] + np.float32(shell_nm)
            _keep_two_nearest(np.sign(dn) * dn * dn, n_seeds, d1, d2, best)
        cell_id[sl] = best
        face[sl] = _face_distance(d1, d2)
    return cell_id, face, n_seeds


def _tiles(shape, voxel_size):
    """Slices of the tiles (about :data:`_TILE_NM` in each physical direction) that cover the field.

    Tiles keep the candidate seed lists short; they come in z-y-x order.
    """
    tz, ty, tx = (max(1, int(round(_TILE_NM / v))) for v in voxel_size)
    starts = itertools.product(range(0, shape[0], tz), range(0, shape[1], ty), range(0, shape[2], tx))
    for z0, y0, x0 in starts:
        z1, y1, x1 = min(z0 + tz, shape[0]), min(y0 + ty, shape[1]), min(x0 + tx, shape[2])
        yield (slice(z0, z1), slice(y0, y1), slice(x0, x1))


def _candidate_seeds(seeds, pz, py, px):
    """Indices of the seeds that can be nearest or second nearest (within a face cap) in a tile.

    A seed is a candidate when its distance to the tile's bounding box is at most the smallest
    farthest-corner distance of any seed plus ``2 * FACE_CAP_NM``.
    """
    lo = np.array([pz.min(), py.min(), px.min()], dtype=np.float32)
    hi = np.array([pz.max(), py.max(), px.max()], dtype=np.float32)
    nearest = np.clip(seeds, lo, hi)
    mind = np.sqrt(((seeds - nearest) ** 2).sum(1))
    farthest = np.where(seeds - lo > hi - seeds, lo, hi)
    maxd = np.sqrt(((seeds - farthest) ** 2).sum(1))
    return np.flatnonzero(mind <= maxd.min() + 2 * FACE_CAP_NM)


def _two_nearest_seeds(seeds, cand, pz, py, px):
    """Squared distances to the nearest and second nearest candidate seed, and the nearest's index."""
    d1 = np.full(pz.shape, np.inf, dtype=np.float32)
    d2 = np.full(pz.shape, np.inf, dtype=np.float32)
    best = np.zeros(pz.shape, dtype=np.int32)
    for i in cand:
        s = seeds[i]
        d = (pz - s[0]) ** 2
        d += (py - s[1]) ** 2
        d += (px - s[2]) ** 2
        _keep_two_nearest(d, i, d1, d2, best)
    return d1, d2, best


def _keep_two_nearest(d, label, d1, d2, best):
    """Fold one more (squared) distance map ``d`` of seed ``label`` into ``d1, d2, best`` in place."""
    closer = d < d1
    np.minimum(d2, np.where(closer, d1, d), out=d2)
    np.minimum(d1, d, out=d1)
    best[closer] = label


def _face_distance(d1_sq, d2_sq):
    """``(d2 - d1) / 2`` from the two nearest squared distances, capped at :data:`FACE_CAP_NM`."""
    d1 = np.sqrt(np.maximum(d1_sq, 0.0))
    d2 = np.sqrt(np.maximum(d2_sq, 0.0))
    return np.minimum((d2 - d1) * 0.5, FACE_CAP_NM)


# ---------------------------------------------------------------------------- mitochondria
#: Gap (nm) kept between neighbouring mitochondria.
_MITO_GAP_NM = 20.0
#: Distances (nm) at which the free run along a candidate axis is probed.
_PROBE_T_NM = np.arange(10.0, 1600.0, 15.0)
#: Candidate axis directions probed per mitochondrion (each both ways).
_N_PROBE_DIRS = 5


def _segment_distance(pz, py, px, a, b):
    """Distance (nm) from grid points to the segment a-b (broadcast arrays)."""
    ab = b - a
    inv = np.float32(1.0 / max(float(ab @ ab), 1e-12))
    t = ((pz - a[0]) * ab[0] + (py - a[1]) * ab[1] + (px - a[2]) * ab[2]) * inv
    np.clip(t, 0.0, 1.0, out=t)
    return np.sqrt((pz - a[0] - t * ab[0]) ** 2 + (py - a[1] - t * ab[1]) ** 2 + (px - a[2] - t * ab[2]) ** 2)


def _unit(v):
    return v / np.linalg.norm(v)


@dataclass
class _MitoCanvas:
    """The maps mitochondria are fitted into (cells, nucleus) and drawn onto (instances, depth)."""

    shape: tuple
    vs: np.ndarray
    coords: list
    cell_id: np.ndarray
    face: np.ndarray
    nuc_sdf: np.ndarray | None
    instances: np.ndarray
    depth_map: np.ndarray


def mitochondria(rng, shape, voxel_size, cell_id, face, nuc_sdf, target_fraction, max_tries=600):
    """Place bent, mostly in-plane tubular mitochondria inside cells until ``target_fraction``.

    Each mitochondrion is a union of three capsules along a bent axis (a tube with round
    ends), kept inside one cell (clear of its membranes), outside the nucleus and apart from
    other mitochondria. The voxels it covers form one 6-connected 3D component.

    Returns
    -------
    instances : int32 array
    depth : float32 array
        Depth below the mitochondrion surface (nm), 0 outside.
    params : list of dict
        Per-mitochondrion geometry (centre, axis, bbox) used for the cristae texture.
    """
    canvas = _MitoCanvas(
        shape=shape, vs=np.array(voxel_size, dtype=np.float64), coords=axis_coords(shape, voxel_size),
        cell_id=cell_id, face=face, nuc_sdf=nuc_sdf,
        instances=np.zeros(shape, dtype=np.int32), depth_map=np.zeros(shape, dtype=np.float32),
    )
    target = target_fraction * float(np.prod(shape))
    drawn = 0
    params = []
    tries = _placement_passes(max_tries)
    deep_idx = None
    for t_i, confine in enumerate(tries):
        if drawn >= target or (not confine and drawn >= 0.5 * target):
            break
        if t_i == 0 or confine != tries[t_i - 1]:
            deep_idx = _centre_candidates(canvas, confine)
        if deep_idx.size == 0:
            continue
        placed = _try_mitochondrion(rng, canvas, deep_idx, confine, new_id=len(params) + 1)
        if placed is not None:
            drawn += placed[1]
            params.append(placed[0])
    return canvas.instances, canvas.depth_map, params


def _placement_passes(max_tries):
    """Per placement try, whether the mitochondrion must stay inside one cell.

    Pass 1 (``max_tries`` tries) keeps each mitochondrion inside one cell. Fields smaller than a
    cell (tiny test volumes) rarely fit one; pass 2 (``max_tries // 3`` tries) then drops the
    cell constraint (the mitochondrion is drawn over the membrane) so that every volume still
    has mitochondria.
    """
    tries = []
    for confine, n in [(True, max_tries), (False, max_tries // 3)]:
        tries += [confine] * n
    return tries


def _centre_candidates(canvas, confine):
    """Flat indices of the voxels a mitochondrion may be centred on (deep in a cell when confined)."""
    deep = canvas.face >= FACE_CAP_NM if confine else np.ones(canvas.shape, dtype=bool)
    if canvas.nuc_sdf is not None:
        deep &= canvas.nuc_sdf > 100.0
    return np.flatnonzero(deep)


def _try_mitochondrion(rng, canvas, deep_idx, confine, new_id):
    """One placement try: draw a centre, axis and size, then fit the tube (shrinking it if needed).

    Returns ``(params, n_voxels)`` of the mitochondrion drawn onto ``canvas``, or None.
    """
    cidx = np.unravel_index(deep_idx[rng.integers(deep_idx.size)], canvas.shape)
    centre = (np.array(cidx) + rng.uniform(0.2, 0.8, size=3)) * canvas.vs
    home = canvas.cell_id[cidx] if confine else None
    radius = rng.uniform(70.0, 140.0)
    near = tuple(slice(max(c - 1, 0), c + 2) for c in cidx)
    if canvas.instances[near].any():
        return None
    axis, run_pos, run_neg = _longest_axis(rng, canvas, centre, home, radius)
    centre = centre + axis * (run_pos - run_neg) / 2
    length = min(rng.uniform(250.0, 1500.0), max(run_pos + run_neg - 2 * radius, 0.0))
    side = _unit(np.cross(axis, [1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.cross(axis, [0.0, 1.0, 0.0]))
    bend = rng.uniform(-0.12, 0.12)
    return _fit_tube(canvas, centre, axis, side, bend, length, radius, home, new_id)


def _probe_axes(rng, n_dir):
    """``n_dir`` random unit axes (z, y, x), mostly in-plane, and which of them are steep."""
    az = rng.uniform(0, np.pi, size=n_dir)
    steep = rng.random(n_dir) >= 0.7
    el = np.where(
        steep,
        rng.uniform(0.35, 1.2, size=n_dir) * rng.choice([-1.0, 1.0], size=n_dir),
        rng.normal(0, np.deg2rad(8), size=n_dir),
    )
    axes = np.stack([np.sin(el), np.cos(el) * np.sin(az), np.cos(el) * np.cos(az)], axis=1)
    return axes, steep


def _longest_axis(rng, canvas, centre, home, radius):
    """The probed axis along which the free room through ``centre`` is longest, and its two runs.

    A few directions are probed (both ways at once); in-plane directions are preferred so most
    mitochondria lie in the slice plane. Returns ``(axis, run_pos, run_neg)`` (runs in nm).
    """
    axes, steep = _probe_axes(rng, _N_PROBE_DIRS)
    runs = _free_runs(canvas, centre, np.concatenate([axes, -axes]), home, radius)
    score = (runs[:_N_PROBE_DIRS] + runs[_N_PROBE_DIRS:]) * np.where(steep, 0.6, 1.0)
    k = int(np.argmax(score))
    return axes[k], runs[k], runs[k + _N_PROBE_DIRS]


def _free_runs(canvas, centre, dirs, home, radius):
    """Distance (nm, from :data:`_PROBE_T_NM`) along each direction to the first blocked probe.

    A probe is blocked by another mitochondrion, by leaving cell ``home`` or coming near its
    membrane (unless ``home`` is None) or by coming near the nucleus; the field border is not
    a block, as cells continue beyond it.
    """
    shape = canvas.shape
    pts = centre + _PROBE_T_NM[None, :, None] * dirs[:, None, :]  # (2 n_dir, T, 3)
    ij = np.floor(pts / canvas.vs).astype(int)
    inside = np.all((ij >= 0) & (ij < shape), axis=2)
    ijc = np.minimum(np.maximum(ij, 0), np.array(shape) - 1)
    flat = np.ravel_multi_index(tuple(np.moveaxis(ijc, 2, 0)), shape)
    good = canvas.instances.ravel()[flat] == 0
    if home is not None:
        good &= (canvas.cell_id.ravel()[flat] == home) & (canvas.face.ravel()[flat] >= min(radius, FACE_CAP_NM - 1))
    if canvas.nuc_sdf is not None:
        good &= canvas.nuc_sdf.ravel()[flat] > radius + 20.0
    good |= ~inside  # cells continue beyond the field
    first_bad = np.where(good.all(1), len(_PROBE_T_NM) - 1, np.argmin(good, axis=1))
    return _PROBE_T_NM[first_bad]


def _fit_tube(canvas, centre, axis, side, bend, length, radius, home, new_id):
    """Draw the bent tube as ``new_id`` where it fits, shrinking it (up to four tries) where not.

    Returns ``(params, n_voxels)`` of the drawn mitochondrion, or None.
    """
    for _shrink in range(4):
        pts = _bent_axis_points(centre, axis, side, bend, length)
        # cheap rejection first: the axis must not run through another mitochondrion
        if not _axis_blocked(canvas, pts):
            pts = pts.astype(np.float32)
            sl = _tube_window(canvas, pts, radius)
            if sl is None:
                return None
            depth = _tube_depth(canvas, sl, pts, radius)
            mask = depth > 0
            if _tube_fits(canvas, sl, depth, mask, home):
                mask = _largest_component(mask)
                canvas.instances[sl][mask] = new_id
                canvas.depth_map[sl][mask] = depth[mask]
                params = {"id": new_id, "centre": centre, "axis": axis, "slices": sl, "radius": radius}
                return params, int(mask.sum())
        length *= 0.7
        radius *= 0.85
    return None


def _bent_axis_points(centre, axis, side, bend, length):
    """The four points (nm) of the bent axis: three segments bowed by ``bend`` towards ``side``."""
    ts = np.array([-0.5, -1 / 6, 1 / 6, 0.5])
    return centre + ts[:, None] * length * axis + (bend * length * (1 - 4 * ts**2))[:, None] * side


def _axis_blocked(canvas, pts):
    """Whether the straight line between the end points runs through another mitochondrion."""
    line = pts[0] + np.linspace(0, 1, 24)[:, None] * (pts[-1] - pts[0])
    ij = np.minimum(np.maximum(np.floor(line / canvas.vs).astype(int), 0), np.array(canvas.shape) - 1)
    return bool(np.any(canvas.instances[tuple(ij.T)]))


def _tube_window(canvas, pts, radius):
    """Slices of the tube's bounding box plus the gap, clipped to the field; None if empty."""
    lo = np.floor((pts.min(0) - radius - _MITO_GAP_NM) / canvas.vs).astype(int)
    hi = np.ceil((pts.max(0) + radius + _MITO_GAP_NM) / canvas.vs).astype(int) + 1
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, canvas.shape)
    if np.any(hi <= lo):
        return None
    return tuple(slice(a, b) for a, b in zip(lo, hi))


def _tube_depth(canvas, sl, pts, radius):
    """Depth (nm) below the tube surface in window ``sl``: ``radius`` minus the axis distance."""
    pz = canvas.coords[0][sl[0], None, None]
    py = canvas.coords[1][None, sl[1], None]
    px = canvas.coords[2][None, None, sl[2]]
    dist = np.minimum.reduce([_segment_distance(pz, py, px, pts[i], pts[i + 1]) for i in range(3)])
    return (radius - dist).astype(np.float32)


def _tube_fits(canvas, sl, depth, mask, home):
    """Whether the tube ``mask`` is non-empty, keeps the gap to other mitochondria, stays in cell
    ``home`` clear of its membrane (unless ``home`` is None) and clear of the nucleus."""
    return (
        mask.any()
        and not np.any(canvas.instances[sl][depth > -_MITO_GAP_NM])
        and (home is None or np.all(canvas.cell_id[sl][mask] == home))
        and (home is None or np.all(canvas.face[sl][mask] > 12.0))
        and (canvas.nuc_sdf is None or np.all(canvas.nuc_sdf[sl][mask] > 15.0))
    )


def _largest_component(mask):
    """``mask`` itself, or its largest 6-connected piece when the field border clipped it into several."""
    lab, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(lab.ravel())[1:]
        mask = lab == (1 + int(np.argmax(sizes)))
    return mask


def cristae(rng, shape, voxel_size, instances, params) -> np.ndarray:
    """Cristae lamellae: thin transverse stripes (a warped sinusoid) inside each mitochondrion."""
    out = np.zeros(shape, dtype=np.float32)
    if not params:
        return out
    coords = axis_coords(shape, voxel_size)
    warp_all = smooth_noise(rng, shape, voxel_size, 90.0)
    keep_all = smooth_noise(rng, shape, voxel_size, 150.0)
    for p in params:
        sl = p["slices"]
        mask = instances[sl] == p["id"]
        # stripes roughly across the long axis, tilted by up to ~35 degrees
        tilt = _unit(p["axis"] + rng.normal(0, 0.35, size=3))
        period = rng.uniform(45.0, 75.0)
        warp = warp_all[sl]
        pz = coords[0][sl[0], None, None] - p["centre"][0]
        py = coords[1][None, sl[1], None] - p["centre"][1]
        px = coords[2][None, None, sl[2]] - p["centre"][2]
        phase = (pz * tilt[0] + py * tilt[1] + px * tilt[2]) * (2 * np.pi / period) + 1.2 * warp
        lam = np.cos(phase) ** 6
        # cristae fade out in places (noise-modulated), and never reach the outer membrane
        keep = np.clip(0.6 + 0.5 * keep_all[sl], 0, 1)
        out[sl][mask] = (lam * keep)[mask]
    return out


# -------------------------------------------------------------------------------- vesicles
def vesicles(rng, shape, voxel_size, cell_id, face, nuc_sdf, instances):
    """Small round vesicles in clusters (synaptic-bouton-like) plus scattered larger ones.

    Returns the signed distance (nm) to the nearest vesicle surface, capped at +-40 nm.
    """
    vs = np.array(voxel_size, dtype=np.float64)
    ext = np.array(shape) * vs
    coords = axis_coords(shape, voxel_size)
    sdf = np.full(shape, 40.0, dtype=np.float32)
    vol_um3 = float(np.prod(ext)) * 1e-9
    centres, radii = [], []
    n_clusters = max(1, rng.poisson(6.0 * vol_um3 + 1.5))
    deep = face >= FACE_CAP_NM
    deep &= instances == 0
    if nuc_sdf is not None:
        deep &= nuc_sdf > 150.0
    deep_idx = np.flatnonzero(deep)
    for _ in range(n_clusters if deep_idx.size else 0):
        # clusters sit in cell interiors (synaptic boutons)
        c = (np.array(np.unravel_index(deep_idx[rng.integers(deep_idx.size)], shape)) + 0.5) * vs
        spread = rng.uniform(80.0, 180.0)
        k = rng.integers(20, 60)
        centres.append(c + rng.normal(0, 1, size=(k, 3)) * spread * np.array([0.6, 1, 1]))
        radii.append(rng.uniform(17.0, 27.0, size=k))
    k = rng.poisson(6.0 * vol_um3 + 1)
    centres.append(rng.uniform(0, 1, size=(k, 3)) * ext)
    radii.append(rng.uniform(22.0, 60.0, size=k))
    centres = np.concatenate(centres)
    radii = np.concatenate(radii)
    for c, r in zip(centres, radii):
        idx = (c / vs).astype(int)
        if np.any(idx < 0) or np.any(idx >= shape):
            continue
        idx = tuple(idx)
        if face[idx] < min(r + 8, FACE_CAP_NM) or instances[idx] or (nuc_sdf is not None and nuc_sdf[idx] < r + 15):
            continue
        reach = r + 12.0
        lo = np.maximum(np.floor((c - reach) / vs).astype(int), 0)
        hi = np.minimum(np.ceil((c + reach) / vs).astype(int) + 1, shape)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        d = (
            np.sqrt(
                (coords[0][sl[0], None, None] - c[0]) ** 2
                + (coords[1][None, sl[1], None] - c[1]) ** 2
                + (coords[2][None, None, sl[2]] - c[2]) ** 2
            )
            - r
        )
        inside = d < 4.0
        if np.any(cell_id[sl][inside] != cell_id[idx]) or np.any(instances[sl][inside]):
            continue
        np.minimum(sdf[sl], d, out=sdf[sl])
    return sdf


def build_anatomy(rng, shape, voxel_size, *, nucleus=True, mito_fraction=None) -> Anatomy:
    """Build all label-space maps of one synthetic volume (see :class:`Anatomy`)."""
    nuc = nucleus_sdf(rng, shape, voxel_size) if nucleus else None
    cell_id, face, n_cells = cells(rng, shape, voxel_size, nuc, diameter_nm=rng.uniform(450.0, 700.0))
    frac = rng.uniform(0.06, 0.11) if mito_fraction is None else float(mito_fraction)
    instances, depth, params = mitochondria(rng, shape, voxel_size, cell_id, face, nuc, frac)
    cri = cristae(rng, shape, voxel_size, instances, params)
    ves = vesicles(rng, shape, voxel_size, cell_id, face, nuc, instances)
    return Anatomy(cell_id, face, nuc, instances, depth, cri, ves, n_cells)
