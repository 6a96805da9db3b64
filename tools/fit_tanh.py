"""Fits the rational tanh that src/backend/cpu/mathf.rs uses: tanh(x) ~ x P(x^2) / Q(x^2) on
[-X, X], P of degree 6 and Q of degree 3 in x^2 with P(0) = Q(0) = 1, by iterated weighted linear
least squares (Sanathanan-Koerner, then weights that flatten the error towards minimax). Prints
the coefficients as f32 and the maximum absolute error of the f32 evaluation with fused
multiply-adds (Horner), as the Rust code does it.

    python tools/fit_tanh.py [--clamp 9]
"""

import argparse

import numpy as np


def fit(clamp, n_p=7, n_q=4):
    x = np.linspace(0, clamp, 400001)[1:]
    f = np.tanh(x) / x
    s = (x / clamp) ** 2  # x^2 scaled to (0, 1] keeps the system well conditioned
    w = np.ones_like(x)
    for it in range(40):
        a = np.hstack([s[:, None] ** np.arange(n_p), -(f[:, None] * s[:, None] ** np.arange(1, n_q))])
        sol, *_ = np.linalg.lstsq(a * w[:, None], f * w, rcond=None)
        ps, qs = sol[:n_p], np.concatenate([[1.0], sol[n_p:]])
        q = np.polyval(qs[::-1], s)
        err = np.abs((np.polyval(ps[::-1], s) / q - f) * x)
        w = (1 / np.abs(q)) * ((err / err.max() + 0.05) ** 0.5 if it > 3 else 1.0)
    scale = clamp ** (2 * np.arange(max(n_p, n_q)))
    return ps / scale[:n_p], qs / scale[:n_q]


def tanh_f32(x, p, q, clamp):
    """The Rust evaluation: clamp, Horner with fused multiply-adds (exact product, one rounding)."""
    f32 = np.float32
    fma = lambda a, b, c: (a.astype(np.float64) * b + c).astype(f32)
    c = np.clip(x.astype(f32), f32(-clamp), f32(clamp))
    t = (c * c).astype(f32)
    pv = np.full_like(t, f32(p[-1]))
    for k in p[-2::-1]:
        pv = fma(pv, t, f32(k))
    qv = np.full_like(t, f32(q[-1]))
    for k in q[-2::-1]:
        qv = fma(qv, t, f32(k))
    return np.clip((c * pv / qv).astype(f32), f32(-1), f32(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clamp", type=float, default=9.0)
    a = ap.parse_args()
    p, q = fit(a.clamp)
    p32, q32 = [np.float32(v) for v in p], [np.float32(v) for v in q]
    print("P:", ", ".join(repr(float(v)) for v in p32))
    print("Q:", ", ".join(repr(float(v)) for v in q32))
    xs = np.linspace(-12, 12, 4000001, dtype=np.float32)
    err = np.abs(tanh_f32(xs, p32, q32, a.clamp) - np.tanh(xs.astype(np.float64)))
    print(f"max abs error on [-12, 12]: {err.max():.3g}")


if __name__ == "__main__":
    main()
