"""Neighbour lists the grid encoders search (IQ1_*, IQ2_*, IQ3_*), computed at import.

A grid type's encoder rounds each coordinate of a group to the nearest level; when the rounded
point is not on the grid, it tries the grid points nearest to it. Those lists are built here,
once per grid, for every point of the level lattice (a compiled loop: the lattices have up to
6,561 points and the grids up to 2,048, too many distances for numpy to be quick at import).
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _neighbours(p, gt, shells, start, out):
    """The lists for points p (N, dim) and the grid transposed, gt (dim, G): the inner loops run
    along the grid, where they vectorize."""
    m = gt.shape[1]
    d2 = np.empty(m, np.float32)
    at = 0
    for i in range(p.shape[0]):
        d2[:] = 0.0
        for k in range(p.shape[1]):
            v = p[i, k]
            for j in range(m):
                t = v - gt[k, j]
                d2[j] += t * t
        limit = d2.min()
        if limit > 0.0:                     # off the grid
            for _ in range(shells - 1):
                nxt = np.float32(np.inf)
                for j in range(m):
                    if d2[j] > limit:
                        nxt = min(nxt, d2[j])
                if nxt < np.inf:
                    limit = nxt
            for j in range(m):
                if d2[j] <= limit:
                    out[at] = j
                    at += 1
        start[i + 1] = at


def neighbour_lists(points: np.ndarray, grid: np.ndarray, shells: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """For lattice points (N, dim) and grid points (G, dim): start (N + 1,) int32 and the list,
    such that list[start[p]:start[p + 1]] are the grid indices (ascending) at the `shells`
    smallest distinct squared distances from point p; empty for a point on the grid.
    The grids' values are small multiples of 1/4, so the float32 distances are exact."""
    p = np.ascontiguousarray(points, np.float32)
    gt = np.ascontiguousarray(np.asarray(grid, np.float32).T)
    start = np.zeros(len(p) + 1, np.int32)
    out = np.empty(len(p) * gt.shape[1], np.int32)
    _neighbours(p, gt, shells, start, out)
    return start, out[:start[-1]].astype(dtype)
