"""Figures of the gradient through time (matplotlib, written as PNG).

``plot_flow({label: FlowReport})``: several cells or stages in one figure —
(a) ‖∂L/∂h_k‖ per step, log scale; (b) the measured ‖∂s_t/∂s_k‖ against the lag with
the bound η^τ dashed (V4; with masks or zoneout ``FlowReport.bound_by_lag``, D5);
(c) ``FlowReport.lag_share()``: the share Σ_{τ'≤τ}‖G_τ'‖ / Σ_τ'‖G_τ'‖ of the magnitudes
of ∂L/∂W_h's lag parts G_τ (D3) from lags up to τ, rising from 0 to 1 (the signed
projections ``lag_profile`` are not drawn: lags that pull against the total would take a
cumulative curve below 0 or above 1); then one credit-matrix heatmap (D1)
per report that has more than one loss step.
``plot_clipping(study)``: gradient norm and loss per update, with and without clipping.
``plot_estimator_error({label: {method: (T,)}})``: each online method's influence error
(O5) against RTRL's, per step, one panel per model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .flow import FlowReport


LOG_AXIS_RANGE = (1e-300, 1e250)    # what the log axes draw: matplotlib's log ticks overflow past about 1e280


def _on_log_axis(values):
    """``values`` clipped into LOG_AXIS_RANGE (inf, an overflowed norm, at its top; NaN left
    out): a network that explodes over a long sequence has norms up to the float64 maximum."""
    return np.clip(values, *LOG_AXIS_RANGE)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path, title=None) -> Path:
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _colors(plt, n) -> list:
    """n colours, one per report: matplotlib's cycle, or, for more reports than it has
    colours, n spread over a colormap (zipped with the cycle, the reports past it went undrawn)."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return cycle if n <= len(cycle) else [plt.get_cmap("turbo")(i / (n - 1)) for i in range(n)]


def plot_flow(reports: dict, path, title: str | None = None) -> Path:
    if not isinstance(reports, dict) or not all(isinstance(r, FlowReport) for r in reports.values()):
        shown = type(reports).__name__ if not isinstance(reports, dict) else \
            "{" + ", ".join(f"{k!r}: {type(r).__name__}" for k, r in reports.items()) + "}"
        raise ValueError(f"reports: expected a dict {{label: FlowReport}}, got {shown}")
    if not reports:
        raise ValueError("reports: expected at least one FlowReport, got none")
    plt = _pyplot()
    heat = {k: r for k, r in reports.items() if np.count_nonzero(r.credit.any(axis=1)) > 1}
    rows = 2 if heat else 1
    cols = max(3, len(heat))
    fig = plt.figure(figsize=(4.6 * cols, 4.2 * rows), constrained_layout=True)
    grid = fig.add_gridspec(rows, cols)
    colors = _colors(plt, len(reports))

    ax = fig.add_subplot(grid[0, 0])
    for (label, r), c in zip(reports.items(), colors):
        ax.semilogy(np.arange(1, r.T + 1), _on_log_axis(r.grad_norm[:, 0]), color=c, label=label)
    ax.set(xlabel="step k", ylabel="‖∂L/∂h_k‖", title="(a) gradient reaching each step")
    ax.legend(fontsize=8)

    ax = fig.add_subplot(grid[0, 1])
    lo, hi = np.inf, -np.inf
    for (label, r), c in zip(reports.items(), colors):
        t, k, norms = r.measured_pairs()
        lags = t - k
        ax.scatter(lags, _on_log_axis(norms), s=6, color=c, alpha=0.5, label=f"{label}")
        plain = r.valid is None and not r.zoneout                  # else padded steps and zoneout count (D5)
        ax.plot(np.arange(r.T), _on_log_axis(r.bound_by_lag()), "--", color=c, lw=1,
                label=f"{'η^τ' if plain else 'bound (D5)'}, η = {r.eta:.2f}")
        positive = _on_log_axis(norms[norms > 0])
        if positive.size:
            lo, hi = min(lo, positive.min()), max(hi, positive.max())
    ax.set_yscale("log")
    if np.isfinite(lo):
        ax.set_ylim(lo / 10, max(hi * 10, 10))
    ax.set(xlabel="lag τ = t − k", ylabel="‖∂s_t/∂s_k‖₂", title="(b) Jacobian products vs the bound")
    ax.legend(fontsize=7, ncol=2)

    ax = fig.add_subplot(grid[0, 2])
    for (label, r), c in zip(reports.items(), colors):
        ax.plot(np.arange(r.T), r.lag_share(), color=c, label=label)
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(0, max(r.T for r in reports.values()))
    ax.set_ylim(0, 1.05)
    ax.set(xlabel="lag τ (linear to 1, then log)",
           ylabel=r"$\sum_{\tau'\leq\tau}\Vert G_{\tau'}\Vert\ /\ \sum_{\tau'}\Vert G_{\tau'}\Vert$",
           title="(c) share of lags ≤ τ in Σ‖G_τ‖")
    ax.text(0.98, 0.03, "G_τ: the part of ∂L/∂W_h from\ndependencies τ steps long (D3)",
            transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="dimgrey")
    ax.legend(fontsize=8, loc="center right")

    if heat:
        logs = {k: np.log10(np.where(np.tri(r.T, dtype=bool) & (r.credit > 0), _on_log_axis(r.credit),
                                     np.nan)) for k, r in heat.items()}
        vmax = max(np.nanmax(v) for v in logs.values())
        vmin = max(min(np.nanmin(v) for v in logs.values()), vmax - 12)
        for j, (label, v) in enumerate(logs.items()):
            ax = fig.add_subplot(grid[1, j])
            T = v.shape[0]
            image = ax.imshow(v, origin="lower", cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto",
                              extent=(0.5, T + 0.5, 0.5, T + 0.5), interpolation="nearest")
            ax.set(xlabel="state step k", ylabel="loss step t", title=f"credit log10‖∂L_t/∂h_k‖: {label}")
        fig.colorbar(image, ax=fig.axes[3:], shrink=0.8, label="log10 ‖∂L_t/∂h_k‖")
    return _save(plt, fig, path, title)


def plot_clipping(study, path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    names = ("no clipping", f"clipped at ‖g‖ = {study.clip:g}")
    for run, name in enumerate(names):
        u = np.arange(1, study.grad_norm.shape[1] + 1)
        axes[0].semilogy(u, study.grad_norm[run], lw=0.8, label=name)
        axes[1].semilogy(u, study.loss[run], lw=0.8, label=name)
    axes[0].axhline(study.clip, color="grey", ls=":", lw=1, label="clipping threshold")
    axes[0].set(xlabel="update", ylabel="‖∂L/∂θ‖ before clipping", title=f"gradient norm, {study.label}, η = {study.gain:g}")
    if study.baseline is not None:
        axes[1].axhline(study.baseline, color="grey", ls="--", lw=1, label="task baseline")
    axes[1].set(xlabel="update", ylabel="training loss", title="loss (same batches, plain SGD)")
    for ax in axes:
        ax.legend(fontsize=8)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_estimator_error(errors: dict, path, title: str | None = None) -> Path:
    """One panel per label: ‖M̂_t − M_t‖/‖M_t‖ of each method against the step (O5)."""
    if not isinstance(errors, dict) or not all(isinstance(e, dict) for e in errors.values()):
        shown = type(errors).__name__ if not isinstance(errors, dict) else \
            "{" + ", ".join(f"{k!r}: {type(e).__name__}" for k, e in errors.items()) + "}"
        raise ValueError(f"errors: expected a dict {{label: {{method: (T,) errors}}}}, got {shown}; hint: put "
                         f"estimator_error's dict under a label, {{'model': errors}}")
    if not errors:
        raise ValueError("errors: expected at least one model's estimator errors, got none")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(errors), figsize=(4.6 * len(errors), 3.8), constrained_layout=True,
                             squeeze=False)
    for ax, (label, by_method) in zip(axes[0], errors.items()):
        for method, e in by_method.items():
            ax.semilogy(np.arange(1, len(e) + 1), np.where(e > 0, e, np.nan), label=method)   # exact steps: no point
        ax.set(xlabel="step t", ylabel="‖M̂_t − M_t‖ / ‖M_t‖", title=label)
        ax.legend(fontsize=8)
    return _save(plt, fig, path, title)

