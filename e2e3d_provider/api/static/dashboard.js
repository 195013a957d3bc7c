// The storage dashboard: fetches api/dashboard (same authentication as the results API) and draws it.
"use strict";
const layout = (extra) => Object.assign({ margin: { l: 56, r: 12, t: 8, b: 40 }, showlegend: true,
  legend: { orientation: "h", y: -0.25 }, font: { size: 11 } }, extra || {});
const config = { displayModeBar: false, responsive: true, staticPlot: false };
let pending = 0;

function draw(id, traces, extra) {
  const el = document.getElementById(id);
  const points = traces.reduce((n, t) => n + ((t.x || t.values || []).length), 0);
  pending += 1;
  return Plotly.newPlot(el, traces, layout(extra), config).then(() => {
    el.dataset.points = String(points);
    pending -= 1;
    if (pending === 0) document.body.dataset.ready = "true";
  });
}

function row(table, label, value, key) {
  const tr = table.insertRow();
  tr.insertCell().textContent = label;
  const td = tr.insertCell();
  td.textContent = value;
  td.dataset.key = key;
}

const gb = (b) => (b / 1e9).toFixed(3) + " GB";

async function main() {
  const response = await fetch("api/dashboard", { credentials: "same-origin" });
  if (!response.ok) {
    document.getElementById("error").textContent = "dashboard data: HTTP " + response.status + " " + (await response.text());
    document.body.dataset.ready = "error";
    return;
  }
  const d = await response.json();
  document.getElementById("subtitle").textContent = "last " + d.days + " days, from PostgreSQL";
  const warnings = document.getElementById("warnings");
  d.warnings.forEach((w) => { const li = document.createElement("li"); li.textContent = w; warnings.appendChild(li); });

  const buckets = Object.keys(d.space).sort();
  const bytesAxis = { tickformat: ".3~s", ticksuffix: "B" };
  draw("chart-space", buckets.map((b) => ({ name: b, x: d.space[b].at, y: d.space[b].bytes, mode: "lines+markers", type: "scatter" })),
    { yaxis: bytesAxis });
  draw("chart-objects", [{ type: "bar", x: buckets, y: buckets.map((b) => d.space[b].objects.at(-1)), name: "objects" }],
    { showlegend: false });
  const hosts = Object.keys(d.disks).sort();
  const diskTraces = [];
  hosts.forEach((h) => {
    const s = d.disks[h];
    diskTraces.push({ name: h + " used", x: s.at, y: s.used, mode: "lines+markers", type: "scatter" });
    diskTraces.push({ name: h + " capacity", x: [s.at[0], s.full_at || s.at.at(-1)], y: [s.total, s.total],
      mode: "lines", line: { dash: "dot" }, type: "scatter" });
  });
  draw("chart-disks", diskTraces, { yaxis: Object.assign({ rangemode: "tozero" }, bytesAxis) });
  const directions = Object.keys(d.throughput).sort();
  draw("chart-throughput", directions.map((k) => ({ name: k, x: d.throughput[k].at, y: d.throughput[k].mb_per_s, type: "bar" })),
    { yaxis: { title: "MB/s" }, barmode: "group", xaxis: { type: "category" } });
  const c = d.cache;
  draw("chart-cache", [{ type: "pie", labels: ["skipped (already local)", "moved"],
    values: [c.skipped_bytes, c.requested_bytes - c.skipped_bytes], hole: 0.5, sort: false }]);
  const operations = Object.keys(d.errors).sort();
  draw("chart-errors", operations.map((k) => ({ name: k, x: d.errors[k].at, y: d.errors[k].errors, type: "bar" })),
    { barmode: "stack", yaxis: { title: "errors" }, xaxis: { type: "category" } });
  draw("chart-top-jobs", [{ type: "bar", orientation: "h", y: d.top_jobs.map((j) => j.job_id).reverse(),
    x: d.top_jobs.map((j) => j.downloads).reverse(), name: "downloads" }], { showlegend: false, margin: { l: 200, r: 12, t: 8, b: 30 } });
  draw("chart-top-datasets", [{ type: "bar", orientation: "h", y: d.top_datasets.map((j) => j.dataset).reverse(),
    x: d.top_datasets.map((j) => j.downloads).reverse(), name: "downloads" }], { showlegend: false, margin: { l: 140, r: 12, t: 8, b: 30 } });
  draw("chart-by-hour", [{ type: "bar", x: [...Array(24).keys()], y: d.requests_by_hour, name: "requests" }],
    { showlegend: false, xaxis: { title: "hour (UTC)", dtick: 2 } });
  draw("chart-jobs", [
    { type: "bar", name: "jobs", x: d.jobs.map((j) => j.status), y: d.jobs.map((j) => j.jobs), offsetgroup: 1 },
    { type: "bar", name: "mean seconds", x: d.jobs.map((j) => j.status), y: d.jobs.map((j) => j.mean_seconds || 0),
      yaxis: "y2", offsetgroup: 2 },
  ], { barmode: "group", yaxis2: { overlaying: "y", side: "right", title: "s" } });

  const table = document.getElementById("figures");
  buckets.forEach((b) => {
    row(table, b + ": objects", String(d.space[b].objects.at(-1)), "objects:" + b);
    row(table, b + ": bytes", String(d.space[b].bytes.at(-1)), "bytes:" + b);
  });
  row(table, "object storage growth", gb(d.storage.bytes_per_day) + "/day" +
    (d.storage.full_at ? ", full " + d.storage.full_at : d.storage.capacity ? "" : " (no capacity set)"), "storage-growth");
  hosts.forEach((h) => row(table, "worker " + h, gb(d.disks[h].used.at(-1)) + " of " + gb(d.disks[h].total) +
    (d.disks[h].full_at ? ", full " + d.disks[h].full_at : ", not growing"), "disk:" + h));
  row(table, "cache hit ratio", c.hit_ratio === null ? "-" : String(c.hit_ratio), "cache-hit-ratio");
  d.jobs.forEach((j) => row(table, "jobs " + j.status, String(j.jobs), "jobs:" + j.status));
  row(table, "requests (all hours)", String(d.requests_by_hour.reduce((a, b) => a + b, 0)), "requests");
}

main().catch((err) => {
  document.getElementById("error").textContent = String(err);
  document.body.dataset.ready = "error";
});
