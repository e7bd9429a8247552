// Loss curves on a log scale, drawn by the vendored uPlot (static/vendor/uplot). One colour per optimizer
// everywhere on the dashboard, so "adam" is the same red on every page.

import { num } from "./format.js";

const COLORS = { lstm: "#7c3aed", adam: "#e11d48", rmsprop: "#d97706", nag: "#0d9488", sgd: "#2563eb" };
const EXTRA = ["#db2777", "#65a30d", "#0891b2", "#9333ea", "#ea580c", "#475569"];
const AXIS = "#64748b";
const GRID = "#e9edf3";
// Steps and iterations are whole numbers: ticks 1, 2, 5, 10, 20, 50... apart, never 2.5.
const INTEGER_STEPS = [1, 2, 5].flatMap((m) => [1, 10, 100, 1e3, 1e4, 1e5, 1e6].map((p) => m * p)).sort((a, b) => a - b);

export function colorOf(name, index = 0) {
  return COLORS[name] || EXTRA[index % EXTRA.length];
}

// A log scale has no place for zero, negative or non-finite values: they become gaps.
export function positive(values) {
  return values.map((v) => (typeof v === "number" && Number.isFinite(v) && v > 0 ? v : null));
}

// lossChart(el, {x: [...], series: [{label, values, color, dash, points}], xLabel, yLabel, height})
// draws the chart into `el` and keeps it as wide as `el`. The uPlot instance is kept on `el.chart`.
export function lossChart(el, { x, series, xLabel = "step", yLabel = "loss", height = 340, empty = "No points yet" }) {
  if (el.chart) el.chart.destroy();
  if (el.resizer) el.resizer.disconnect();
  el.replaceChildren();
  const opts = {
    width: Math.max(el.clientWidth, 280),
    height,
    scales: { x: { time: false }, y: { distr: 3, log: 10 } },
    legend: { live: true },
    cursor: { points: { size: 7 }, drag: { x: true, y: false } },
    axes: [
      { label: xLabel, stroke: AXIS, incrs: INTEGER_STEPS, grid: { stroke: GRID, width: 1 }, ticks: { stroke: GRID, width: 1 },
        labelSize: 22, font: "12px system-ui, sans-serif", labelFont: "600 12px system-ui, sans-serif" },
      { label: yLabel, stroke: AXIS, grid: { stroke: GRID, width: 1 }, ticks: { stroke: GRID, width: 1 },
        size: 62, labelSize: 22, font: "12px system-ui, sans-serif", labelFont: "600 12px system-ui, sans-serif",
        values: (u, ticks) => ticks.map((v) => logTick(v)) },
    ],
    series: [
      { label: xLabel, value: (u, v) => (v === null || v === undefined ? "—" : String(v)) },
      ...series.map((s) => ({
        label: s.label,
        stroke: s.color,
        width: s.width || 2,
        dash: s.dash,
        spanGaps: s.spanGaps ?? false,
        points: { show: s.points ?? "auto", size: 5, fill: s.color },
        value: (u, v) => num(v),
      })),
    ],
  };
  const data = [x, ...series.map((s) => positive(s.values))];
  const chart = new window.uPlot(opts, data, el);
  el.chart = chart;
  el.dataset.emptyText = empty;
  markEmpty(el);
  el.resizer = new ResizeObserver(() => {
    const width = Math.max(el.clientWidth, 280);
    if (Math.abs(width - chart.width) > 1) chart.setSize({ width, height });
  });
  el.resizer.observe(el);
  return chart;
}

// New data for a chart lossChart drew: [x, ...one array per series].
export function updateChart(el, [x, ...series]) {
  el.chart.setData([x, ...series.map(positive)]);
  markEmpty(el);
}

// A chart with nothing to draw says so rather than show a blank frame.
function markEmpty(el) {
  if (pointCount(el.chart)) delete el.dataset.empty;
  else el.dataset.empty = el.dataset.emptyText;
}

// Label only the powers of ten and the 2s and 5s between them, so a log axis never crowds.
function logTick(v) {
  if (v === null || v === undefined) return "";
  const mantissa = v / 10 ** Math.floor(Math.log10(v) + 1e-9);
  const m = Math.round(mantissa * 100) / 100;
  return m === 1 || m === 2 || m === 5 ? num(v, 2) : "";
}

// The number of finite, drawable points in a chart's series (tests and captions use it).
export function pointCount(chart) {
  return chart.data.slice(1).reduce((n, s) => n + s.filter((v) => v !== null).length, 0);
}
