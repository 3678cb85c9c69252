#!/usr/bin/env python3
"""Render the Grafana dashboard JSON against a live Prometheus and screenshot it (headless Chromium).

Grafana itself cannot be installed on the development machines (no Docker; not packaged for
Debian, PyPI or npm), so this is a faithful stand-in for looking at the dashboard, not Grafana:
it reads docker/grafana/dashboards/voltana.json, runs every panel's PromQL (``$__rate_interval``
replaced by ``--rate-interval``) as a range query against Prometheus' HTTP API, lays the panels
out on Grafana's 24-column grid (``gridPos``), draws each time series with its legend
(``legendFormat``) and unit (``fieldConfig.defaults.unit``), writes the page as HTML and
screenshots it with headless Chromium.

    python scripts/render_dashboard.py --prometheus http://127.0.0.1:9090 --minutes 5 \\
        --out dashboard.png [--html dashboard.html]

Needs ``chromium`` (Debian: apt-get install chromium) for the PNG; ``--html`` alone does not.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "voltana.json"
PAGE_WIDTH_PX = 1600
ROW_HEIGHT_PX = 30  # Grafana's grid row
GAP_PX = 8
# Grafana's classic palette: neighbouring series stay distinguishable.
PALETTE = (
    "#73BF69",
    "#F2CC0C",
    "#8AB8FF",
    "#FF780A",
    "#F2495C",
    "#5794F2",
    "#B877D9",
    "#FADE2A",
    "#37872D",
    "#C4162A",
)
DASHES = ("", "6 3", "2 3", "8 3 2 3")


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]


# ---- querying --------------------------------------------------------------------------------


def query_range(
    prometheus: str, expr: str, start_s: float, end_s: float, step_s: float
) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode(
        {"query": expr, "start": f"{start_s:.3f}", "end": f"{end_s:.3f}", "step": f"{step_s:g}"}
    )
    with urllib.request.urlopen(f"{prometheus.rstrip('/')}/api/v1/query_range?{params}") as reply:
        body = json.load(reply)
    if body.get("status") != "success":
        raise RuntimeError(f"query {expr!r} failed: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def legend(fmt: str, labels: dict[str, str]) -> str:
    if not fmt:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), fmt)


def panel_series(
    panel: dict[str, Any], prometheus: str, start_s: float, end_s: float, step_s: float, rate: str
) -> list[Series]:
    series: list[Series] = []
    for target in panel.get("targets", []):
        expr = target["expr"].replace("$__rate_interval", rate)
        for result in query_range(prometheus, expr, start_s, end_s, step_s):
            points = [
                (float(t), float(v))
                for t, v in result["values"]
                if v not in ("NaN", "+Inf", "-Inf")
            ]
            series.append(Series(legend(target.get("legendFormat", ""), result["metric"]), points))
    return series


# ---- units -----------------------------------------------------------------------------------


def format_value(value: float, unit: str) -> str:
    if value == 0:
        value = 0.0  # no "-0"
    if unit == "hertz":
        return f"{value / 1e9:.2f} GHz" if abs(value) >= 1e9 else f"{value / 1e6:.0f} MHz"
    if unit == "percentunit":
        return f"{value * 100:.0f}%"
    if unit == "s":
        return f"{value * 1e3:.0f} ms" if abs(value) < 1 else f"{value:.2f} s"
    suffix = {"watt": " W", "J": " J", "reqps": " req/s", "ops": " ops/s"}.get(unit, "")
    magnitude = abs(value)
    digits = (
        0
        if magnitude >= 100 or magnitude == 0
        else 1
        if magnitude >= 10
        else 2
        if magnitude >= 1
        else 3
    )
    return f"{value:.{digits}f}{suffix}"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / count
    base = 10 ** math.floor(math.log10(raw))
    step = min((m * base for m in (1, 2, 2.5, 5, 10) if m * base >= raw), default=raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(count + 2) if first + i * step <= high + step * 0.01]


# ---- drawing ---------------------------------------------------------------------------------


def svg_plot(
    series: list[Series], unit: str, width: int, height: int, defaults: dict[str, Any]
) -> str:
    left, right, top, bottom = 70, 10, 8, 22
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for s in series for _, v in s.points]
    times = [t for s in series for t, _ in s.points]
    if not values:
        return (
            f'<svg width="{width}" height="{height}"><text x="{width / 2}" y="{height / 2}" '
            f'fill="#8e8e8e" text-anchor="middle">No data</text></svg>'
        )
    low = defaults.get("min", min(values))
    high = defaults.get("max", max(values))
    if "min" not in defaults:
        low = min(low, 0.0) if low >= 0 and low < 0.25 * high else low
    ticks = nice_ticks(low, high)
    low, high = min(low, ticks[0]), max(high, ticks[-1])
    t0, t1 = min(times), max(times)
    span_t = max(t1 - t0, 1e-9)

    def x(t: float) -> float:
        return left + (t - t0) / span_t * plot_w

    def y(v: float) -> float:
        return top + plot_h - (v - low) / (high - low) * plot_h

    parts = [f'<svg width="{width}" height="{height}" font-size="11" font-family="sans-serif">']
    for tick in ticks:
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
            'stroke="#2c3235"/>'
            f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" fill="#ccccdc" text-anchor="end">'
            f"{html.escape(format_value(tick, unit))}</text>"
        )
    for i in range(5):
        t = t0 + span_t * i / 4
        label = time.strftime("%H:%M:%S", time.gmtime(t))
        parts.append(
            f'<text x="{x(t):.1f}" y="{height - 6}" fill="#ccccdc" text-anchor="middle">'
            f"{label}</text>"
        )
    stacked = defaults.get("custom", {}).get("stacking", {}).get("mode") == "normal"
    base: dict[float, float] = {}
    for index, s in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        dash = DASHES[(index // len(PALETTE) + index) % len(DASHES)] if len(series) > 2 else ""
        points = s.points
        if stacked:
            points = [(t, v + base.get(t, 0.0)) for t, v in s.points]
            for t, v in points:
                base[t] = v
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2" '
            f'stroke-dasharray="{dash}"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


def panel_html(panel: dict[str, Any], series: list[Series], column_px: float) -> str:
    grid = panel["gridPos"]
    left = grid["x"] * column_px + GAP_PX / 2
    top = grid["y"] * ROW_HEIGHT_PX + GAP_PX / 2
    width = int(grid["w"] * column_px - GAP_PX)
    height = int(grid["h"] * ROW_HEIGHT_PX - GAP_PX)
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    unit = defaults.get("unit", "")
    # Legend items flow in rows; about 6.5 px per character plus the swatch and a gap.
    item_px = [40 + 6.5 * (len(s.label) + 9) for s in series]
    legend_rows, used_px = 1, 0.0
    for px in item_px:
        if used_px and used_px + px > width - 8:
            legend_rows, used_px = legend_rows + 1, 0.0
        used_px += px
    plot_height = height - 34 - 16 * legend_rows
    items = "".join(
        f'<span class="item"><span class="swatch" style="background:'
        f'{PALETTE[i % len(PALETTE)]}"></span>{html.escape(s.label)}'
        f"{' ' + html.escape(format_value(s.points[-1][1], unit)) if s.points else ''}</span>"
        for i, s in enumerate(series)
    )
    return (
        f'<div class="panel" style="left:{left:.0f}px;top:{top:.0f}px;width:{width}px;'
        f'height:{height}px"><div class="title">{html.escape(panel["title"])}</div>'
        f"{svg_plot(series, unit, width - 8, plot_height, defaults)}"
        f'<div class="legend">{items}</div></div>'
    )


def page_html(dashboard: dict[str, Any], rendered: list[str], note: str) -> str:
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><style>
body {{ margin:0; background:#111217; color:#ccccdc; font-family:sans-serif; }}
.header {{ padding:10px 14px; font-size:18px; }}
.header small {{ color:#8e8e8e; font-size:12px; margin-left:12px; }}
.grid {{ position:relative; width:{PAGE_WIDTH_PX}px; height:{rows * ROW_HEIGHT_PX}px; }}
.panel {{ position:absolute; background:#181b1f; border:1px solid #2c3235; border-radius:2px;
  box-sizing:border-box; padding:4px; overflow:hidden; }}
.title {{ font-size:13px; font-weight:500; padding:2px 4px 6px; }}
.legend {{ font-size:11px; padding:2px 4px; }}
.item {{ display:inline-block; margin-right:12px; white-space:nowrap; }}
.swatch {{ display:inline-block; width:14px; height:3px; margin:0 4px 3px 0; }}
</style></head><body><div class="header">{html.escape(dashboard["title"])}
<small>{html.escape(note)}</small></div><div class="grid">{"".join(rendered)}</div></body></html>
"""


def render_html(
    dashboard: dict[str, Any],
    prometheus: str,
    start_s: float,
    end_s: float,
    step_s: float,
    rate: str,
) -> str:
    column_px = PAGE_WIDTH_PX / 24
    rendered = [
        panel_html(panel, panel_series(panel, prometheus, start_s, end_s, step_s, rate), column_px)
        for panel in dashboard["panels"]
    ]
    window = f"{time.strftime('%H:%M:%S', time.gmtime(start_s))}-" + time.strftime(
        "%H:%M:%S UTC", time.gmtime(end_s)
    )
    note = f"rendered from {prometheus} ({window}, step {step_s:g}s, rate window {rate})"
    return page_html(dashboard, rendered, note)


def screenshot(html_path: Path, png_path: Path, height_px: int, chromium: str) -> None:
    binary = shutil.which(chromium)
    if binary is None:
        raise SystemExit(
            f"render_dashboard: error: {chromium!r} not found (apt-get install chromium)"
        )
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={PAGE_WIDTH_PX},{height_px}",
                f"--screenshot={png_path}",
                html_path.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus URL")
    parser.add_argument("--dashboard", type=Path, default=DEFAULT_DASHBOARD)
    parser.add_argument("--minutes", type=float, default=5.0, help="time range ending now")
    parser.add_argument("--step-s", type=float, default=2.0, help="range query step")
    parser.add_argument("--rate-interval", default="20s", help="what $__rate_interval means")
    parser.add_argument("--out", type=Path, help="PNG to write (headless Chromium)")
    parser.add_argument("--html", type=Path, help="also keep the rendered HTML here")
    parser.add_argument("--chromium", default="chromium", help="Chromium binary")
    args = parser.parse_args(argv)
    if args.out is None and args.html is None:
        parser.error("give --out PNG and/or --html FILE")
    dashboard = json.loads(args.dashboard.read_text())
    end_s = time.time()
    page = render_html(
        dashboard,
        args.prometheus,
        end_s - args.minutes * 60,
        end_s,
        args.step_s,
        args.rate_interval,
    )
    with tempfile.TemporaryDirectory() as workdir:
        html_path = args.html or Path(workdir) / "dashboard.html"
        html_path.write_text(page)
        if args.out is not None:
            rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
            screenshot(html_path, args.out, rows * ROW_HEIGHT_PX + 60, args.chromium)
            print(f"dashboard written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
