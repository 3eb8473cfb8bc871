"""Line and bar charts as SVG, by hand: no plotting library, a few dozen lines of markup.

Training draws its loss curves with it: training and validation loss on shared axes, a legend
naming each series (any number of them: several runs compare the same way):

    line_chart({"train": [(10, 7.9), (20, 6.1)], "validation": [(20, 6.3)]},
               "out/pretrain_128_loss.svg", title="pretrain_128: loss", x_label="optimizer step", y_label="loss")

The LoRA lab (lab/) draws its figures with the same function, on log axes where ranks or learning
rates double (log_x=True) and with the range over seeds (spread=...), and with bar_chart for
side-by-side comparisons.

An SVG is a text file any browser shows; GitHub renders it inline in markdown.
"""
import math

from plumbing.atomic import atomic_write_text

# Matplotlib's first colours ("tab10"), distinct for the usual colour blindness; a series past the
# tenth reuses them.
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def xml_escape(text) -> str:
    """'a < b & c' -> 'a &lt; b &amp; c': text placed inside SVG markup."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _span(values):
    """(low, high) of the values, widened when they are all equal (a flat line still needs an axis)."""
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    return (low - 0.5, high + 0.5) if high == low else (low, high)


def line_chart(series, path, title, x_label, y_label, width=640, height=360, log_x=False, log_y=False, spread=None):
    """Draw {label: [(x, y), ...]} as lines on shared axes, with a legend when there is more than one,
    and write the SVG to `path` (atomically). Points with a non-finite y (or, on a log axis, one <= 0)
    are left out.

    The plot area is mapped linearly, or logarithmically on an axis with log_x / log_y (ranks 1..64,
    singular values spanning decades): x -> from left to right, y -> from bottom to top. A series
    with one point is drawn as a dot.
    spread: {label: [(x, low, high), ...]}, drawn as a vertical bar in that series' colour at each x:
    the range over seeds around a mean.
    """
    left, right, top, bottom = 64, 20, 36, 44  # margins, px: room for tick labels and the title
    fx = math.log10 if log_x else float  # position along an axis: the value, or its logarithm
    fy = math.log10 if log_y else float

    def shown(x, y):
        return math.isfinite(y) and (x > 0 or not log_x) and (y > 0 or not log_y)

    series = {label: [(x, y) for x, y in points if shown(x, y)] for label, points in series.items()}
    spread = {label: [(x, lo, hi) for x, lo, hi in bars if shown(x, lo) and shown(x, hi)]
              for label, bars in (spread or {}).items()}
    x0, x1 = _span([fx(x) for points in series.values() for x, _ in points])
    y0, y1 = _span([fy(y) for points in series.values() for _, y in points] +
                   [fy(v) for bars in spread.values() for _, lo, hi in bars for v in (lo, hi)])
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x):
        return left + (fx(x) - x0) / (x1 - x0) * plot_w

    def py(y):
        return top + (y1 - fy(y)) / (y1 - y0) * plot_h  # SVG's y grows downwards

    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{xml_escape(title)}</text>']
    for i in range(5):  # 5 ticks per axis, with light grid lines
        xv, yv = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        xv, yv = 10 ** xv if log_x else xv, 10 ** yv if log_y else yv  # tick labels in the data's own units
        x_pos = left + i / 4 * plot_w
        svg.append(f'<line x1="{x_pos:.1f}" y1="{top}" x2="{x_pos:.1f}" y2="{top + plot_h}" stroke="#eee"/>')
        svg.append(f'<line x1="{left}" y1="{py(yv):.1f}" x2="{left + plot_w}" y2="{py(yv):.1f}" stroke="#eee"/>')
        svg.append(f'<text x="{x_pos:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{xv:.4g}</text>')
        svg.append(f'<text x="{left - 6}" y="{py(yv) + 4:.1f}" text-anchor="end">{yv:.3g}</text>')
    if log_x or log_y:
        axes = " and ".join(name for name, log in (("x", log_x), ("y", log_y)) if log)
        svg.append(f'<text x="{left + plot_w}" y="{top - 4}" text-anchor="end" fill="#888">{axes}: log scale</text>')
    svg.append(f'<polyline fill="none" stroke="#888" points="{left},{top} {left},{top + plot_h} {left + plot_w},{top + plot_h}"/>')
    svg.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">{xml_escape(x_label)}</text>')
    svg.append(f'<text x="14" y="{top + plot_h / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {top + plot_h / 2})">{xml_escape(y_label)}</text>')
    for i, (label, points) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        for x, lo, hi in spread.get(label, []):
            svg.append(f'<line x1="{px(x):.1f}" y1="{py(lo):.1f}" x2="{px(x):.1f}" y2="{py(hi):.1f}" '
                       f'stroke="{colour}" stroke-width="1" opacity="0.6"/>')
        if len(points) == 1:
            svg.append(f'<circle cx="{px(points[0][0]):.1f}" cy="{py(points[0][1]):.1f}" r="3" fill="{colour}"/>')
        elif points:
            line = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
            svg.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{line}"/>')
        if len(series) > 1:  # legend, top right: a colour swatch and the label
            y = top + 8 + 14 * i
            svg.append(f'<line x1="{left + plot_w - 190}" y1="{y}" x2="{left + plot_w - 172}" y2="{y}" '
                       f'stroke="{colour}" stroke-width="3"/>')
            svg.append(f'<text x="{left + plot_w - 166}" y="{y + 4}">{xml_escape(label)}</text>')
    svg.append("</svg>")
    atomic_write_text(path, "\n".join(svg) + "\n")


def bar_chart(bars, path, title, x_label, width=640, bar_height=22):
    """Draw {label: (value, low, high)} as horizontal bars (a thin line from low to high over each: the
    range over seeds; low = high = value for a single number), and write the SVG to `path`."""
    left, right, top, bottom = 230, 60, 36, 40  # room for the labels on the left, the values on the right
    height = top + bottom + bar_height * len(bars)
    high = max(max(value, hi) for value, _, hi in bars.values()) or 1.0
    plot_w = width - left - right

    def px(v):
        return left + max(v, 0.0) / high * plot_w

    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{xml_escape(title)}</text>']
    for i, (label, (value, lo, hi)) in enumerate(bars.items()):
        y = top + i * bar_height
        svg.append(f'<rect x="{left}" y="{y + 3}" width="{px(value) - left:.1f}" height="{bar_height - 6}" '
                   f'fill="{COLOURS[i % len(COLOURS)]}"/>')
        if hi > lo:
            svg.append(f'<line x1="{px(lo):.1f}" y1="{y + bar_height / 2}" x2="{px(hi):.1f}" y2="{y + bar_height / 2}" '
                       f'stroke="black" stroke-width="1.5"/>')
        svg.append(f'<text x="{left - 6}" y="{y + bar_height / 2 + 4}" text-anchor="end">{xml_escape(label)}</text>')
        svg.append(f'<text x="{px(max(value, hi)) + 4:.1f}" y="{y + bar_height / 2 + 4}">{value:.3g}</text>')
    svg.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#888"/>')
    svg.append(f'<text x="{left + plot_w / 2}" y="{height - 12}" text-anchor="middle">{xml_escape(x_label)}</text>')
    svg.append("</svg>")
    atomic_write_text(path, "\n".join(svg) + "\n")
