"""Line and bar charts as SVG, by hand: no plotting library, a few dozen lines of markup per chart.

Training draws its loss curves with it: training and validation loss on shared axes, a legend
naming each series (any number of them: several runs compare the same way):

    line_chart({"train": [(10, 7.9), (20, 6.1)], "validation": [(20, 6.3)]},
               "out/pretrain_128_loss.svg", title="pretrain_128: loss", x_label="optimizer step", y_label="loss")

The LoRA lab (lab/) draws its figures with the same functions: log axes where ranks or learning
rates double (log_x=True, x_ticks=[1, 2, 4, ...]), the range over seeds (spread=...), a dashed line
where a verdict has a threshold (refs=[(0.25, "a quarter")]), fractions shown as percentages
(percent=True), bar_chart for side-by-side comparisons, and panels() for one idea per panel.

What makes a figure readable in five seconds (docs/figures/moe_load.svg is the model):
  round ticks      0, 0.5, 1, 1.5 or 1, 10, 100 (nice_ticks, log_ticks), the axes spanning them
  the legend       one line of coloured names *below* the plot area, so it never covers a point
  reference lines  the threshold a verdict uses, dashed grey, named in the legend
Each element a test must find carries a class: "data" (plotted marks), "legend", "tick".

An SVG is a text file any browser shows; GitHub renders it inline in markdown.
"""
import math

from plumbing.atomic import atomic_write_text

# Matplotlib's first colours ("tab10"), distinct for the usual colour blindness; a series past the
# tenth reuses them.
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
REF_COLOUR = "#888"
REF_DASHES = ("4 3", "1 3", "9 3")  # one pattern per reference line of a chart, so two of them tell apart
CHAR_W = 6.2  # px per character at font-size 11: how wide a legend entry is, for wrapping it into rows
LEGEND_ROW = 16  # px per legend row


def xml_escape(text) -> str:
    """'a < b & c' -> 'a &lt; b &amp; c': text placed inside SVG markup."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def nice_ticks(low, high, count=5) -> list:
    """Round tick values covering [low, high]: a step of 1, 2, 2.5 or 5 times a power of ten.
    nice_ticks(0.31, 0.94) -> [0.2, 0.4, 0.6, 0.8, 1.0]; nice_ticks(1.47, 2.93) -> [1.4, 1.6, ..., 3.0]."""
    if high <= low:
        low, high = (low - 1, high + 1) if low == 0 else (low - abs(low) / 2, high + abs(high) / 2)
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def log_ticks(low, high) -> list:
    """Round ticks for a log axis over [low, high] (both > 0): powers of ten, with 2 and 5 between them
    when the span is under three decades. log_ticks(0.003, 0.05) -> [0.001, 0.002, 0.005, ..., 0.1]."""
    first, last = math.floor(math.log10(low) + 1e-9), math.ceil(math.log10(high) - 1e-9)
    last = max(last, first + 1)
    mantissas = (1,) if last - first >= 3 else (1, 2, 5)
    ticks = [m * 10.0 ** e for e in range(first, last + 1) for m in mantissas]
    inside = [t for t in ticks if low / 1.0001 <= t <= high * 1.0001]
    below = [t for t in ticks if t < low / 1.0001]
    above = [t for t in ticks if t > high * 1.0001]
    return ([below[-1]] if below else []) + inside + ([above[0]] if above else [])  # one tick beyond each end


def tick_label(value, percent=False) -> str:
    """0.25 -> '0.25' (or '25%' when percent); 1e-05 -> '1e-05'; 2048.0 -> '2048'; 10000.0 -> '10,000';
    7.4342 -> '7.4342'. Every digit a round tick has is kept (rounded to 10 significant ones, which hides
    float noise such as 5.000000000000001e-05): ticks 0.0002 apart over a nearly flat curve must not all
    read '7.434'."""
    if percent:
        return f"{float(f'{100 * value:.10g}'):.10g}%"
    if abs(value) >= 1e4 and value == round(value):
        return f"{value:,.0f}"
    return f"{float(f'{value:.10g}'):.10g}"


def _legend(entries, left, top, width) -> tuple:
    """(SVG elements, height): entries [(label, colour, dash pattern or None)] as rows of '— label' below the plot,
    wrapped to `width`, inside a box of class "legend" (what the figure test checks data against)."""
    if not entries:
        return [], 0
    rows, row, used = [], [], 0.0
    for label, colour, dash in entries:
        w = 26 + CHAR_W * len(str(label)) + 14
        if row and used + w > width:
            rows.append(row)
            row, used = [], 0.0
        row.append((label, colour, dash, used))
        used += w
    rows.append(row)
    height = LEGEND_ROW * len(rows) + 6
    out = [f'<g class="legend"><rect class="legend-box" x="{left}" y="{top}" width="{width}" height="{height}" fill="none"/>']
    for r, items in enumerate(rows):
        y = top + 11 + LEGEND_ROW * r
        for label, colour, dash, x in items:
            pattern = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(f'<line x1="{left + x:.1f}" y1="{y - 4}" x2="{left + x + 20:.1f}" y2="{y - 4}" stroke="{colour}" '
                       f'stroke-width="{2 if dash else 3}"{pattern}/>')
            out.append(f'<text x="{left + x + 26:.1f}" y="{y}">{xml_escape(label)}</text>')
    out.append("</g>")
    return out, height


def _axis_ticks(values, log, given, extra=()) -> list:
    """The ticks of one axis: `given`, or round ones spanning the values (and any reference values)."""
    if given:
        return sorted(given)
    values = [v for v in list(values) + list(extra) if math.isfinite(v) and (v > 0 or not log)]
    if not values:
        return [1.0, 10.0] if log else [0.0, 1.0]
    return log_ticks(min(values), max(values)) if log else nice_ticks(min(values), max(values))


def _line_body(series, x_label, y_label, width, log_x, log_y, spread, refs, x_ticks, y_ticks, percent, markers, connect=True,
               notes=None):
    """(elements of the plot area and axes, legend entries, plot height used): the inside of a line chart,
    `width` wide, placed at (0, 0); the caller adds the title and legend."""
    left, right, top, plot_h = 64, 20, 10, 230
    fx = math.log10 if log_x else float  # position along an axis: the value, or its logarithm
    fy = math.log10 if log_y else float

    def shown(x, y):
        return math.isfinite(y) and (x > 0 or not log_x) and (y > 0 or not log_y)

    series = {label: [(x, y) for x, y in points if shown(x, y)] for label, points in series.items()}
    spread = {label: [(x, lo, hi) for x, lo, hi in bars if shown(x, lo) and shown(x, hi)]
              for label, bars in (spread or {}).items()}
    xt = _axis_ticks([x for p in series.values() for x, _ in p], log_x, x_ticks)
    yt = _axis_ticks([y for p in series.values() for _, y in p] + [v for b in spread.values() for _, lo, hi in b for v in (lo, hi)],
                     log_y, y_ticks, extra=[value for value, _ in refs or []])
    x0, x1 = fx(xt[0]), fx(xt[-1])
    y0, y1 = fy(yt[0]), fy(yt[-1])
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    plot_w = width - left - right

    def px(x):
        return left + (fx(x) - x0) / (x1 - x0) * plot_w

    def py(y):
        return top + (y1 - fy(y)) / (y1 - y0) * plot_h  # SVG's y grows downwards

    out = []
    for t in xt:
        out.append(f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{top + plot_h}" stroke="#eee"/>')
        out.append(f'<text class="tick" x="{px(t):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{tick_label(t)}</text>')
    for t in yt:
        out.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + plot_w}" y2="{py(t):.1f}" stroke="#eee"/>')
        out.append(f'<text class="tick" x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{tick_label(t, percent)}</text>')
    out.append(f'<polyline fill="none" stroke="#888" points="{left},{top} {left},{top + plot_h} {left + plot_w},{top + plot_h}"/>')
    x_label, y_label = x_label + (" (log scale)" if log_x else ""), y_label + (" (log scale)" if log_y else "")
    out.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 34}" text-anchor="middle">{xml_escape(x_label)}</text>')
    out.append(f'<text x="14" y="{top + plot_h / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {top + plot_h / 2})">{xml_escape(y_label)}</text>')
    entries = []
    for (value, label), dash in zip(refs or [], REF_DASHES * 3):
        out.append(f'<line x1="{left}" y1="{py(value):.1f}" x2="{left + plot_w}" y2="{py(value):.1f}" stroke="{REF_COLOUR}" '
                   f'stroke-width="1.5" stroke-dasharray="{dash}"/>')
        entries.append((label, REF_COLOUR, dash))
    out.append('<g class="data">')
    for i, (label, points) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        for x, lo, hi in spread.get(label, []):
            out.append(f'<line x1="{px(x):.1f}" y1="{py(lo):.1f}" x2="{px(x):.1f}" y2="{py(hi):.1f}" '
                       f'stroke="{colour}" stroke-width="1.5" opacity="0.7"/>')
        if len(points) > 1 and connect:
            line = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{line}"/>')
        if len(points) == 1 or not connect or (markers and len(points) <= 24):
            out += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{colour}"/>' for x, y in points]
        entries.append((label, colour, None))
    for x, y, text in notes or []:
        if shown(x, y):
            out.append(f'<text x="{px(x) + 6:.1f}" y="{py(y) - 6:.1f}" fill="#444">{xml_escape(text)}</text>')
    out.append("</g>")
    return out, entries, top + plot_h + 44


def _finish(body, entries, width, title, legend_always=False) -> str:
    """A whole SVG: the title, the body below it, and the legend below the body."""
    top, body_elements, body_h = 30, body[0], body[1]
    shown = entries if (len(entries) > 1 or legend_always) else [e for e in entries if e[2]]  # one series needs no name
    legend, legend_h = _legend(shown, 64, top + body_h + 2, width - 84)
    height = top + body_h + legend_h + 8
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height:.0f}" '
           f'viewBox="0 0 {width} {height:.0f}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height:.0f}" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{xml_escape(title)}</text>',
           f'<g transform="translate(0 {top})">', *body_elements, "</g>", *legend, "</svg>"]
    return "\n".join(svg) + "\n"


def line_chart(series, path, title, x_label, y_label, width=640, log_x=False, log_y=False, spread=None, refs=None,
               x_ticks=None, y_ticks=None, percent=False, markers=True, connect=True, notes=None):
    """Draw {label: [(x, y), ...]} as lines on shared axes and write the SVG to `path` (atomically).

    Points with a non-finite y (or, on a log axis, one <= 0) are left out. The axes span round
    ticks (or x_ticks / y_ticks when given: the ranks 1, 2, 4, ... a sweep used), linear or, with
    log_x / log_y, logarithmic. spread: {label: [(x, low, high), ...]}, a vertical bar at each x in
    that series' colour (the range over seeds around a mean). refs: [(y, label)], dashed horizontal
    lines (a verdict's thresholds). percent: y values are fractions, labelled as percentages.
    markers: a dot on every point of a series of at most 24 (a sweep's points are the measurements);
    connect=False: dots only (a scatter: each point one run). notes: [(x, y, text)], a word beside a point.
    The legend sits below the plot, one coloured name per series and reference line.
    """
    elements, entries, height = _line_body(series, x_label, y_label, width, log_x, log_y, spread, refs, x_ticks,
                                           y_ticks, percent, markers, connect, notes)
    atomic_write_text(path, _finish((elements, height), entries, width, title))


def value_label(value, percent=False) -> str:
    """A number printed beside its bar: 0.8166 -> '82%' (percent), 7.127 -> '7.13', 2164.3 -> '2,164'."""
    if not math.isfinite(value):
        return "diverged"
    if percent:
        return f"{100 * value:.0f}%"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _bar_body(bars, x_label, width, refs, percent, ticks, zero=True):
    """(elements, legend entries, height) of horizontal bars {label: (value, low, high)}; zero=False: a dot
    and its range on an axis spanning the data (a bar from 0 would hide differences of a few percent)."""
    left = round(min(230, 16 + CHAR_W * max((len(str(label)) for label in bars), default=10)))  # room for the labels
    right, top, bar_h = 50, 6, 22
    plot_w = width - left - right
    values = [v for value, lo, hi in bars.values() for v in (value, lo, hi) if math.isfinite(v)]
    ref_values = [r for r, _ in refs or []]
    low = min([*values, *ref_values] or [0.0])
    xt = ticks or nice_ticks(min(0.0, low) if zero else low, max([*values, *ref_values] or [1.0]))
    x0, x1 = xt[0], xt[-1]
    height = top + bar_h * len(bars)

    def px(v):
        return left + (min(max(v, x0), x1) - x0) / (x1 - x0) * plot_w

    out = []
    for t in xt:
        out.append(f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{height}" stroke="#eee"/>')
        out.append(f'<text class="tick" x="{px(t):.1f}" y="{height + 16}" text-anchor="middle">{tick_label(t, percent)}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height + 34}" text-anchor="middle">{xml_escape(x_label)}</text>')
    out.append('<g class="data">')
    ranged = False
    for i, (label, (value, lo, hi)) in enumerate(bars.items()):
        y, colour = top + i * bar_h, COLOURS[0]  # one colour: the labels name the bars
        if math.isfinite(value) and zero:
            out.append(f'<rect x="{px(min(0.0, value)):.1f}" y="{y + 3}" width="{abs(px(value) - px(0.0)):.1f}" '
                       f'height="{bar_h - 6}" fill="{colour}"><title>{xml_escape(label)}: {value:.4g}</title></rect>')
        elif math.isfinite(value):
            out.append(f'<circle cx="{px(value):.1f}" cy="{y + bar_h / 2}" r="4" fill="{colour}"><title>{xml_escape(label)}: '
                       f'{value:.4g}</title></circle>')
        if hi > lo and math.isfinite(hi):
            ranged = True
            out.append(f'<line x1="{px(lo):.1f}" y1="{y + bar_h / 2}" x2="{px(hi):.1f}" y2="{y + bar_h / 2}" '
                       f'stroke="black" stroke-width="1.5"/>')
        end = max(v for v in (value, hi) if math.isfinite(v)) if math.isfinite(value) else x0
        out.append(f'<text x="{px(end) + 6:.1f}" y="{y + bar_h / 2 + 4}">{value_label(value, percent)}</text>')
    out.append("</g>")
    for i, label in enumerate(bars):
        out.append(f'<text x="{left - 6}" y="{top + i * bar_h + bar_h / 2 + 4}" text-anchor="end">{xml_escape(label)}</text>')
    axis = px(0.0) if x0 <= 0 <= x1 else left
    out.append(f'<line x1="{axis:.1f}" y1="{top}" x2="{axis:.1f}" y2="{height}" stroke="#888"/>')
    entries = [("black line: range over seeds", "black", None)] if ranged else []
    for (value, label), dash in zip(refs or [], REF_DASHES * 3):
        out.append(f'<line x1="{px(value):.1f}" y1="{top}" x2="{px(value):.1f}" y2="{height}" stroke="{REF_COLOUR}" '
                   f'stroke-width="1.5" stroke-dasharray="{dash}"/>')
        entries.append((label, REF_COLOUR, dash))
    return out, entries, height + 44


def bar_chart(bars, path, title, x_label, width=640, refs=None, percent=False, ticks=None, zero=True):
    """Draw {label: (value, low, high)} as horizontal bars (a black line from low to high over each: the
    range over seeds; low = high = value for a single number) and write the SVG to `path`. refs: [(x,
    label)], dashed vertical lines (thresholds); percent: values are fractions, shown as percentages;
    zero=False: dots on an axis spanning the data instead of bars from 0 (losses that differ by little)."""
    elements, entries, height = _bar_body(bars, x_label, width, refs, percent, ticks, zero)
    atomic_write_text(path, _finish((elements, height), entries, width, title, legend_always=True))


def panels(charts, path, title, columns=2, width=480):
    """Several small charts side by side, one idea each, with one legend below them all.

    charts: [("line" or "bar", {"title": ..., and line_chart's / bar_chart's other arguments but path})]. The
    panels' series of the same name share a colour only if each panel lists them in the same order."""
    cells, entries = [], []
    for kind, spec in charts:
        spec = dict(spec)
        sub_title = spec.pop("title")
        if kind == "line":
            elements, legend, height = _line_body(spec.pop("series"), spec.pop("x_label"), spec.pop("y_label"), width,
                                                  spec.pop("log_x", False), spec.pop("log_y", False), spec.pop("spread", None),
                                                  spec.pop("refs", None), spec.pop("x_ticks", None), spec.pop("y_ticks", None),
                                                  spec.pop("percent", False), spec.pop("markers", True),
                                                  spec.pop("connect", True), spec.pop("notes", None))
        else:
            elements, legend, height = _bar_body(spec.pop("bars"), spec.pop("x_label"), width, spec.pop("refs", None),
                                                 spec.pop("percent", False), spec.pop("ticks", None), spec.pop("zero", True))
        if spec:
            raise TypeError(f"panels(): unknown arguments {sorted(spec)}")
        cells.append((sub_title, elements, height))
        entries += [e for e in legend if e not in entries]
    rows = math.ceil(len(cells) / columns)
    row_h = [max(h for _, _, h in cells[r * columns:(r + 1) * columns]) + 22 for r in range(rows)]
    body = []
    for i, (sub_title, elements, _) in enumerate(cells):
        r, c = divmod(i, columns)
        x, y = c * width, sum(row_h[:r])
        body.append(f'<g transform="translate({x} {y})">')
        body.append(f'<text x="{width / 2}" y="12" text-anchor="middle" font-size="12">{xml_escape(sub_title)}</text>')
        body += ['<g transform="translate(0 20)">', *elements, "</g>", "</g>"]
    total_w = width * min(columns, len(cells))
    atomic_write_text(path, _finish((body, sum(row_h)), entries, total_w, title))
