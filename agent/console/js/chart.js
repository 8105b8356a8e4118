// ferry console — the per-group RPO-lag chart: the last hour of
// GET /v1/groups/{group}/rpo-history drawn as inline SVG (no chart
// library), with the group's warning/critical thresholds as lines. Gaps
// (samples without a lag: no complete copy, not replicating) break the line.

import { svg, h } from "./dom.js";
import { clock, seconds } from "./format.js";

const W = 640;
const H = 180;
const PAD = { left: 56, right: 12, top: 12, bottom: 28 };

/** An <svg role=img> of `history.samples` ({at, lag_secs}); `rpo` holds warn_secs/crit_secs. */
export function rpoChart(history, rpo) {
  const samples = (history && history.samples) || [];
  const now = samples.length ? samples[samples.length - 1].at : Date.now();
  const from = now - 3600 * 1000;
  const lags = samples.map((s) => s.lag_secs).filter((v) => v !== null && v !== undefined);
  const thresholds = [rpo && rpo.warn_secs, rpo && rpo.crit_secs].filter((v) => v);
  const top = niceCeiling(Math.max(1, ...lags, ...thresholds.map((t) => t * 1.1)));
  const x = (at) => PAD.left + ((at - from) / (3600 * 1000)) * (W - PAD.left - PAD.right);
  const y = (v) => H - PAD.bottom - (v / top) * (H - PAD.top - PAD.bottom);

  const worst = lags.length ? Math.max(...lags) : null;
  const latest = lags.length ? lags[lags.length - 1] : null;
  const summary = lags.length
    ? `RPO lag over the last hour: now ${seconds(latest)}, worst ${seconds(worst)}, ${samples.length} samples.`
    : "RPO lag over the last hour: no samples with a lag yet.";
  const chart = svg("svg", {
    viewBox: `0 0 ${W} ${H}`,
    class: "rpo-chart",
    role: "img",
    "aria-label": summary,
    dataset: { samples: samples.length },
  });
  chart.append(svg("title", { text: summary }));

  for (const frac of [0, 0.5, 1]) {
    const v = top * frac;
    chart.append(
      svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), class: "grid" }),
      svg("text", { x: PAD.left - 6, y: y(v) + 4, class: "axis end", text: seconds(v) }),
    );
  }
  for (let i = 0; i <= 4; i += 1) {
    const at = from + i * 15 * 60 * 1000;
    const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
    chart.append(svg("text", { x: x(at), y: H - 8, class: `axis ${anchor}`, text: clock(at) }));
  }
  if (rpo && rpo.warn_secs) chart.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y(rpo.warn_secs), y2: y(rpo.warn_secs), class: "warn" }));
  if (rpo && rpo.crit_secs) chart.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y(rpo.crit_secs), y2: y(rpo.crit_secs), class: "crit" }));

  let path = "";
  let pen = false;
  for (const s of samples) {
    if (s.lag_secs === null || s.lag_secs === undefined || s.at < from) {
      pen = false;
      continue;
    }
    path += `${pen ? "L" : "M"}${x(s.at).toFixed(1)},${y(s.lag_secs).toFixed(1)} `;
    pen = true;
  }
  if (path) chart.append(svg("path", { d: path.trim(), class: "lag" }));
  const last = samples.filter((s) => s.lag_secs !== null && s.lag_secs !== undefined && s.at >= from).pop();
  if (last) chart.append(svg("circle", { cx: x(last.at), cy: y(last.lag_secs), r: 3, class: "last" }));
  return h("figure", { class: "chart" }, chart, h("figcaption", { text: summary }));
}

function niceCeiling(v) {
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400];
  return steps.find((s) => s >= v) || Math.ceil(v / 86400) * 86400;
}
