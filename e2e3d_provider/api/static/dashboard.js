// The storage dashboard: fetches api/v1/storage/dashboard (same authentication as the results API) and draws it with the
// package's own plotly.js (static/vendor/). Every chart has an explained empty state, time axes in the
// browser's local time, and a self-check that the drawn labels are whole and apart (body[data-selfcheck]).
"use strict";

// ---- theme: the Airflow UI's (its next-themes store: localStorage "theme" = light | dark | system) ----
const THEME_KEY = "theme";
const dark = window.matchMedia("(prefers-color-scheme: dark)");

function currentTheme() {
  const forced = new URLSearchParams(location.search).get("theme");
  if (forced === "dark" || forced === "light") return forced;
  try { // inside the UI's frame (same origin): the class the UI puts on its <html>
    const ui = window.parent !== window ? window.parent.document.documentElement.classList : null;
    if (ui && ui.contains("dark")) return "dark";
    if (ui && ui.contains("light")) return "light";
  } catch (err) { /* another origin: fall through */ }
  let stored = null;
  try { stored = localStorage.getItem(THEME_KEY); } catch (err) { /* storage blocked */ }
  if (stored === "dark" || stored === "light") return stored;
  return dark.matches ? "dark" : "light";
}

function applyTheme() {
  const theme = currentTheme();
  if (document.documentElement.dataset.theme === theme) return false;
  document.documentElement.dataset.theme = theme;
  return true;
}
applyTheme();

// ---- formatting ----
const numberFormat = new Intl.NumberFormat(undefined);
const whenFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const count = (n) => numberFormat.format(n);
const ms = (iso) => Date.parse(iso);
const when = (iso) => whenFormat.format(new Date(iso));

function bytes(n) {
  const units = ["B", "kB", "MB", "GB", "TB", "PB"];
  let value = Math.abs(n), unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  const digits = unit === 0 || value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return (n < 0 ? "-" : "") + value.toFixed(digits) + " " + units[unit];
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 10) return seconds.toFixed(1) + " s";
  if (seconds < 60) return Math.round(seconds) + " s";
  const parts = [[86400, "d"], [3600, "h"], [60, "min"], [1, "s"]];
  const out = [];
  let rest = Math.round(seconds);
  for (const [size, unit] of parts) {
    if (rest >= size && out.length < 2) { out.push(Math.floor(rest / size) + " " + unit); rest %= size; }
    else if (out.length) break;
  }
  return out.join(" ");
}

// a local wall-clock time as plotly reads dates (it ignores offsets): "YYYY-MM-DD HH:MM:SS"
function local(t) {
  const d = new Date(t), p = (v) => String(v).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

function utcOffset() {
  const minutes = -new Date().getTimezoneOffset();
  const sign = minutes < 0 ? "-" : "+", h = Math.floor(Math.abs(minutes) / 60), m = Math.abs(minutes) % 60;
  return "UTC" + (minutes === 0 ? "" : sign + h + (m ? ":" + String(m).padStart(2, "0") : ""));
}

// ---- chart helpers ----
const HOUR = 3600e3;
const PALETTE = {
  light: ["#017cee", "#dd6b20", "#2f855a", "#b83280", "#6b46c1", "#0b7285", "#975a16"],
  dark: ["#63b3ed", "#f6ad55", "#68d391", "#f687b3", "#b794f4", "#4fd1c5", "#ecc94b"],
};
// the Airflow UI's state colours
const STATUS_COLORS = { queued: "#808080", running: "#32cd32", succeeded: "#228b22", failed: "#e53e3e",
  archived: "#6b46c1", damaged: "#dd6b20" };

function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }
function colors() { return PALETTE[document.documentElement.dataset.theme === "dark" ? "dark" : "light"]; }

function axis(extra) {
  return Object.assign({ automargin: true, gridcolor: css("--grid"), linecolor: css("--axis"),
    zerolinecolor: css("--axis"), tickfont: { color: css("--muted") }, title: { font: { color: css("--muted") } },
    autotickangles: [0, 90] }, extra || {});
}

function layout(extra) {
  const base = {
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
    font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12, color: css("--text") },
    margin: { l: 8, r: 12, t: 8, b: 8, pad: 4 }, showlegend: false,
    legend: { orientation: "h", x: 0, xanchor: "left", y: 1.02, yanchor: "bottom", font: { color: css("--text") } },
    hoverlabel: { bgcolor: css("--card"), bordercolor: css("--border"), font: { color: css("--text") } },
    xaxis: axis(), yaxis: axis(),
  };
  const out = Object.assign(base, extra || {});
  out.xaxis = Object.assign(axis(), (extra || {}).xaxis || {});
  out.yaxis = Object.assign(axis(), (extra || {}).yaxis || {});
  return out;
}

// a time axis over these instants (ms) in local time; never narrower than minSpan (one sample: a readable hour)
function timeAxis(times, minSpan) {
  let lo = Infinity, hi = -Infinity;
  times.forEach((t) => { lo = Math.min(lo, t); hi = Math.max(hi, t); });
  if (hi - lo < minSpan) { const mid = (lo + hi) / 2; lo = mid - minSpan / 2; hi = mid + minSpan / 2; }
  else { const pad = (hi - lo) * 0.04; lo -= pad; hi += pad; }
  return { type: "date", range: [local(lo), local(hi)], nticks: 7, hoverformat: "%b %-d, %H:%M" };
}

function countAxis(max, extra) {
  return Object.assign({ rangemode: "tozero", tickformat: ",~r", range: [0, Math.max(max, 1) * 1.1],
    dtick: max <= 5 ? 1 : undefined }, extra || {});
}

function bytesAxis(values) {
  const positive = values.filter((v) => v > 0);
  const max = Math.max(1, ...positive), min = Math.min(max, ...positive);
  if (positive.length && max / min >= 100) { // orders of magnitude apart: a log scale, one tick per decade
    return { log: true, axis: { type: "log", dtick: 1, tickformat: ".0s", ticksuffix: "B",
      range: [Math.floor(Math.log10(min)), Math.ceil(Math.log10(max) + 0.05)] } };
  }
  return { log: false, axis: { rangemode: "tozero", tickformat: ".3~s", ticksuffix: "B", range: [0, max * 1.1],
    dtick: max <= 5 ? 1 : undefined } };
}

// category ranges that keep bars a sensible thickness however few there are: rows from the top (first
// first), columns centred
function rowsRange(n) { return [Math.max(n, 5) - 0.5, -0.5]; }
function columnsRange(n) { const pad = Math.max(0, 4 - n) / 2; return [-0.5 - pad, n - 0.5 + pad]; }

// a series with a gap (null) wherever consecutive samples are more than `step` apart
function withGaps(xs, ys, step) {
  const gx = [], gy = [];
  xs.forEach((x, i) => {
    if (i && x - xs[i - 1] > step * 1.5) { gx.push(local(xs[i - 1] + step)); gy.push(null); }
    gx.push(local(x)); gy.push(ys[i]);
  });
  return { x: gx, y: gy };
}

const config = { displayModeBar: false, responsive: true, displaylogo: false };
let drawing = [];

function note(id, text) { document.getElementById("note-" + id).textContent = text || ""; }

function chartElement(id) {
  const el = document.getElementById("chart-" + id);
  if (el.dataset.drawn) Plotly.purge(el);
  el.className = "chart";
  el.textContent = "";
  delete el.dataset.drawn;
  return el;
}

function empty(id, message) {
  const el = chartElement(id);
  el.className = "chart empty";
  el.dataset.empty = "true";
  el.dataset.points = "0";
  el.textContent = message;
}

function draw(id, traces, extra, points) {
  const el = chartElement(id);
  el.dataset.empty = "false";
  el.dataset.points = String(points);
  el.dataset.drawn = "true";
  drawing.push(Plotly.newPlot(el, traces, layout(extra), config));
}

// ---- growth in words: never "not growing" beside a chart that grew ----
function growth(at, values, perDay, minHours) {
  if (!values.length) return "";
  if (values.length < 2) return `one sample so far; a growth rate needs ${minHours} h of them`;
  const first = values[0], last = values[values.length - 1];
  const span = (ms(at[at.length - 1]) - ms(at[0])) / 1000;
  if (span < minHours * 3600) {
    const change = last > first ? "grew " + bytes(last - first) : last < first ? "shrank " + bytes(first - last) : "unchanged";
    return `${change} in ${duration(span)}; a growth rate needs ${minHours} h of samples`;
  }
  if (perDay > 0) return "growing " + bytes(perDay) + "/day";
  if (perDay < 0) return "shrinking " + bytes(-perDay) + "/day";
  return "not growing";
}

// ---- the figures as cards ----
function card(parent, label, value, detail, key, raw) {
  const el = document.createElement("div");
  el.className = "figure";
  const l = document.createElement("div"); l.className = "label"; l.textContent = label;
  const v = document.createElement("div"); v.className = "value"; v.textContent = value;
  if (key) { v.dataset.key = key; v.dataset.value = String(raw); }
  const d = document.createElement("div"); d.className = "detail";
  (Array.isArray(detail) ? detail : [detail]).forEach((part, i) => {
    if (i) d.append(" · ");
    if (typeof part === "string") d.append(part);
    else { const s = document.createElement("span"); s.textContent = part.text; s.dataset.key = part.key; s.dataset.value = String(part.value); d.append(s); }
  });
  el.append(l, v, d);
  parent.appendChild(el);
}

// how old the last check of a bucket's kept figures against the server is, and what it corrected
function reconciled(u, b) {
  if (!u || u.reconciled_hours_ago === null || u.reconciled_hours_ago === undefined)
    return { text: "never reconciled with the server", key: "reconciled:" + b, value: "" };
  const drift = u.drift && (u.drift.objects || u.drift.bytes) ? `, corrected ${count(u.drift.objects)} versions / ${bytes(u.drift.bytes)}` : ", no drift";
  return { text: `reconciled ${duration(u.reconciled_hours_ago * 3600)} ago by ${u.reconciled_by}${drift}`, key: "reconciled:" + b, value: u.reconciled_hours_ago };
}

function figures(d) {
  const box = document.getElementById("figures");
  box.textContent = "";
  const buckets = Object.keys(d.space).sort();
  const s = d.storage;
  const total = buckets.reduce((n, b) => n + d.space[b].bytes[d.space[b].bytes.length - 1], 0);
  card(box, "object storage", buckets.length ? bytes(total) : "no snapshot yet",
    buckets.length ? [s.capacity ? `of ${bytes(s.capacity)}` + (s.full_at ? `, full around ${when(s.full_at)}` : "") :
      "no capacity set", s.bytes_per_day ? (s.bytes_per_day > 0 ? "+" : "") + bytes(s.bytes_per_day) + "/day" : "no growth measured"]
      : "the e2e3d_maintenance DAG records one daily", "storage-bytes", total);
  buckets.forEach((b) => {
    const series = d.space[b], n = series.bytes.length - 1;
    card(box, "bucket " + b, bytes(series.bytes[n]),
      [{ text: count(series.objects[n]) + " objects", key: "objects:" + b, value: series.objects[n] },
        growth(series.at, series.bytes, series.bytes_per_day, d.projection_min_hours), reconciled((d.usage || {})[b], b)],
      "bytes:" + b, series.bytes[n]);
  });
  Object.keys(d.disks).sort().forEach((h) => {
    const disk = d.disks[h], used = disk.used[disk.used.length - 1];
    const fill = disk.full_at ? `full around ${when(disk.full_at)}` : growth(disk.at, disk.used, disk.bytes_per_day, d.projection_min_hours);
    card(box, "worker " + h + " data root", bytes(used), [`of ${bytes(disk.total)} (${Math.round(100 * used / disk.total)} %)`, fill], "disk:" + h, used);
  });
  const c = d.cache;
  card(box, "cache hit ratio (downloads)", c.hit_ratio === null ? "no downloads" : (100 * c.hit_ratio).toFixed(1) + " %",
    c.hit_ratio === null ? `none in ${d.days} days` : `${bytes(c.skipped_bytes)} of ${bytes(c.requested_bytes)} already local`,
    "cache-hit-ratio", c.hit_ratio === null ? "" : c.hit_ratio);
  const jobs = d.jobs.reduce((n, j) => n + j.jobs, 0);
  const done = d.jobs.find((j) => j.status === "succeeded");
  card(box, "jobs", count(jobs), jobs ? d.jobs.map((j) => ({ text: `${count(j.jobs)} ${j.status}`, key: "jobs:" + j.status, value: j.jobs })) : "none yet", "jobs", jobs);
  if (done && done.mean_seconds !== null) card(box, "succeeded job run time", duration(done.mean_seconds) + " mean", "longest " + duration(done.max_seconds));
  const requests = d.requests_by_hour.reduce((a, b) => a + b, 0);
  card(box, "API requests", count(requests), `result URLs and upload grants, ${d.days} days`, "requests", requests);
  const errors = Object.values(d.errors).reduce((n, e) => n + e.errors.reduce((a, b) => a + b, 0), 0);
  card(box, "storage errors", count(errors), errors ? `operations failed after their retries, ${d.days} days` : `none in ${d.days} days`, "errors", errors);
  const moved = Object.values(d.throughput).reduce((n, t) => n + t.bytes.reduce((a, b) => a + b, 0), 0);
  card(box, "bytes transferred", bytes(moved), `stage-in, publish and copies, ${d.days} days`, "transfer-bytes", moved);
}

// ---- the charts ----
function charts(d) {
  const pal = colors(), days = d.days;
  const buckets = Object.keys(d.space).sort();
  const noSnapshot = `No storage snapshot in the last ${days} days. The e2e3d_maintenance DAG takes one each day ` +
    "(task storage_statistics); trigger it to see the buckets now.";

  // space per bucket: a log scale when the buckets differ by orders of magnitude
  if (!buckets.length) { empty("space", noSnapshot); note("space", ""); } else {
    const all = buckets.flatMap((b) => d.space[b].bytes);
    const scale = bytesAxis(all);
    const times = buckets.flatMap((b) => d.space[b].at.map(ms));
    const shown = scale.log ? buckets.filter((b) => d.space[b].bytes.some((v) => v > 0)) : buckets;
    const traces = shown.map((b, i) => ({ type: "scatter", mode: d.space[b].at.length > 60 ? "lines" : "lines+markers",
      name: b, x: d.space[b].at.map((t) => local(ms(t))), y: d.space[b].bytes.map((v) => (scale.log && v <= 0 ? null : v)),
      customdata: d.space[b].bytes.map(bytes), hovertemplate: "%{customdata}<extra>" + b + "</extra>", line: { color: pal[i % pal.length] },
      marker: { color: pal[i % pal.length], size: 6 } }));
    if (!traces.length) empty("space", "Every bucket is empty (0 B) in the snapshots so far.");
    else draw("space", traces, { showlegend: true, xaxis: timeAxis(times, 2 * HOUR), yaxis: scale.axis }, all.length);
    const hidden = buckets.filter((b) => !shown.includes(b));
    note("space", (scale.log ? "Log scale: the buckets differ by orders of magnitude. " : "") +
      (hidden.length ? "Empty (0 B), not drawn: " + hidden.join(", ") + "." : ""));
  }

  // objects per bucket (latest snapshot)
  if (!buckets.length) { empty("objects", noSnapshot); note("objects", ""); } else {
    const latest = buckets.map((b) => d.space[b].objects[d.space[b].objects.length - 1]);
    const positive = latest.filter((v) => v > 0);
    const log = positive.length > 1 && Math.max(...positive) / Math.min(...positive) >= 100;
    draw("objects", [{ type: "bar", orientation: "h", y: buckets, x: latest.map((v) => (log && v <= 0 ? null : v)),
      marker: { color: pal[0] }, customdata: latest.map(count), hovertemplate: "%{y}: %{customdata} objects<extra></extra>" }],
    { yaxis: { type: "category", range: rowsRange(buckets.length) },
      xaxis: log ? { type: "log", dtick: 1, tickformat: "~s" } : countAxis(Math.max(...latest)) }, latest.length);
    note("objects", (log ? "Log scale: the buckets differ by orders of magnitude. " : "") +
      (log && latest.some((v) => v <= 0) ? "No bar: empty bucket." : ""));
  }

  // worker disks: used over time against capacity
  const hosts = Object.keys(d.disks).sort();
  if (!hosts.length) {
    empty("disks", "No worker has reported its data-root disk yet: each worker's scratch sweep records it " +
      "(after its tasks, and in the e2e3d_maintenance DAG).");
    note("disks", "");
  } else {
    const traces = [], times = hosts.flatMap((h) => d.disks[h].at.map(ms));
    const axisX = timeAxis(times, 2 * HOUR);
    hosts.forEach((h, i) => {
      const disk = d.disks[h], color = pal[i % pal.length];
      traces.push({ type: "scatter", mode: disk.at.length > 60 ? "lines" : "lines+markers", name: h + " used",
        x: disk.at.map((t) => local(ms(t))), y: disk.used, customdata: disk.used.map(bytes),
        hovertemplate: "%{customdata}<extra>" + h + "</extra>", line: { color }, marker: { color, size: 6 } });
      traces.push({ type: "scatter", mode: "lines", name: h + " capacity", x: axisX.range, y: [disk.total, disk.total],
        line: { color, dash: "dot", width: 1 }, hovertemplate: bytes(disk.total) + " capacity<extra>" + h + "</extra>" });
    });
    const max = Math.max(...hosts.map((h) => d.disks[h].total));
    draw("disks", traces, { showlegend: true, xaxis: axisX,
      yaxis: { rangemode: "tozero", tickformat: ".3~s", ticksuffix: "B", range: [0, max * 1.08] } },
    hosts.reduce((n, h) => n + d.disks[h].at.length, 0));
    note("disks", hosts.map((h) => {
      const disk = d.disks[h];
      return h + ": " + (disk.full_at ? `full around ${when(disk.full_at)}` : growth(disk.at, disk.used, disk.bytes_per_day, d.projection_min_hours));
    }).join("; ") + ".");
  }

  // throughput per hour and direction (hours without transfers are gaps, not lines across them)
  const directions = Object.keys(d.throughput).sort();
  if (!directions.length) {
    empty("throughput", `No transfers in the last ${days} days: stage-in, publish and archive record each one.`);
  } else {
    const times = directions.flatMap((k) => d.throughput[k].at.map((t) => ms(t) + HOUR / 2));
    const peak = Math.max(...directions.flatMap((k) => d.throughput[k].mb_per_s));
    draw("throughput", directions.map((k, i) => {
      const series = d.throughput[k], xs = series.at.map((t) => ms(t) + HOUR / 2);
      const g = withGaps(xs, series.mb_per_s, HOUR);
      return { type: "scatter", mode: "lines+markers", name: k, x: g.x, y: g.y, connectgaps: false,
        line: { color: pal[i % pal.length], width: 1.5 }, marker: { color: pal[i % pal.length], size: xs.length > 60 ? 3 : 6 },
        hovertemplate: "%{y:.3~f} MB/s<extra>" + k + "</extra>" };
    }), { showlegend: true, xaxis: timeAxis(times, 3 * HOUR),
      yaxis: { title: { text: "MB/s" }, rangemode: "tozero", range: [0, Math.max(peak, 0.001) * 1.1] } }, times.length);
  }
  note("throughput", directions.length ? "Bytes moved / seconds busy, per hour; a gap is an hour without transfers." : "");

  // cache hits: a ring of skipped / moved bytes
  const c = d.cache;
  if (!c.requested_bytes) {
    empty("cache", `No downloads in the last ${days} days. The ratio is the bytes stage-in found already in a ` +
      "worker's cache over the bytes it needed.");
  } else {
    draw("cache", [{ type: "pie", hole: 0.55, sort: false, direction: "clockwise",
      labels: ["already local (skipped)", "downloaded"], values: [c.skipped_bytes, c.requested_bytes - c.skipped_bytes],
      marker: { colors: [pal[2], pal[0]], line: { color: css("--card"), width: 2 } }, textinfo: "none",
      customdata: [bytes(c.skipped_bytes), bytes(c.requested_bytes - c.skipped_bytes)],
      hovertemplate: "%{label}: %{customdata} (%{percent})<extra></extra>" }],
    { showlegend: true, legend: { orientation: "v", x: 1, xanchor: "left", y: 0.5, yanchor: "middle", font: { color: css("--text") } },
      margin: { l: 8, r: 8, t: 8, b: 8 },
      annotations: [{ text: (100 * c.hit_ratio).toFixed(1) + " %", showarrow: false, font: { size: 20, color: css("--text") } }] }, 2);
  }
  note("cache", c.requested_bytes ? `${bytes(c.skipped_bytes)} of ${bytes(c.requested_bytes)} requested were already local.` : "");

  // storage errors per hour, stacked by operation
  const operations = Object.keys(d.errors).sort();
  if (!operations.length) {
    empty("errors", `No storage errors in the last ${days} days: every storage operation succeeded (after its retries).`);
  } else {
    const times = operations.flatMap((k) => d.errors[k].at.map((t) => ms(t) + HOUR / 2));
    const perHour = {};
    operations.forEach((k) => d.errors[k].at.forEach((t, i) => { perHour[t] = (perHour[t] || 0) + d.errors[k].errors[i]; }));
    draw("errors", operations.map((k, i) => ({ type: "bar", name: k, x: d.errors[k].at.map((t) => local(ms(t) + HOUR / 2)),
      y: d.errors[k].errors, width: d.errors[k].at.map(() => HOUR * 0.9), marker: { color: pal[i % pal.length] },
      hovertemplate: "%{y} errors<extra>" + k + "</extra>" })),
    { showlegend: true, barmode: "stack", xaxis: timeAxis(times, 3 * HOUR),
      yaxis: countAxis(Math.max(...Object.values(perHour)), { title: { text: "errors" } }) }, times.length);
  }
  note("errors", operations.length ? "Operations that failed after their retries, counted in the hour they failed." : "");

  // top jobs and datasets by downloads
  [["top-jobs", d.top_jobs, "job_id", "No results downloaded"], ["top-datasets", d.top_datasets, "dataset", "No results downloaded"]]
    .forEach(([id, rows, key, none]) => {
      if (!rows.length) {
        empty(id, `${none} in the last ${days} days: every URL the results API hands out counts as one download.`);
        return;
      }
      draw(id, [{ type: "bar", orientation: "h", y: rows.map((r) => r[key]), x: rows.map((r) => r.downloads),
        marker: { color: pal[0] }, hovertemplate: "%{y}: %{x} downloads<extra></extra>" }],
      { yaxis: { type: "category", range: rowsRange(rows.length) },
        xaxis: countAxis(Math.max(...rows.map((r) => r.downloads)), { title: { text: "URLs handed out" } }) }, rows.length);
    });

  // requests by hour of day, in local time where the zone is a whole number of hours from UTC
  const requests = d.requests_by_hour.reduce((a, b) => a + b, 0);
  if (!requests) {
    empty("by-hour", `No API requests in the last ${days} days (result URLs and upload grants).`);
    note("by-hour", "");
  } else {
    const offset = -new Date().getTimezoneOffset() / 60;
    const shift = Number.isInteger(offset) ? offset : 0;
    const hours = [...Array(24).keys()];
    const local24 = hours.map((h) => d.requests_by_hour[(h - shift + 48) % 24]);
    draw("by-hour", [{ type: "bar", x: hours, y: local24, marker: { color: pal[0] },
      hovertemplate: "%{x}:00–%{x}:59: %{y} requests<extra></extra>" }],
    { xaxis: { tickvals: hours.filter((h) => h % 3 === 0), ticktext: hours.filter((h) => h % 3 === 0).map((h) => String(h).padStart(2, "0") + ":00"),
      range: [-0.6, 23.6], title: { text: shift === offset ? "hour of day, local time (" + utcOffset() + ")" : "hour of day (UTC)" } },
    yaxis: countAxis(Math.max(...local24), { title: { text: "requests" } }) }, requests);
    note("by-hour", "");
  }

  // jobs by status
  if (!d.jobs.length) {
    empty("jobs", "No jobs yet: trigger the e2e3d_reconstruction DAG (its form asks for a dataset and a job id).");
    note("jobs", "");
  } else {
    draw("jobs", [{ type: "bar", x: d.jobs.map((j) => j.status), y: d.jobs.map((j) => j.jobs),
      marker: { color: d.jobs.map((j) => STATUS_COLORS[j.status] || pal[0]) }, hovertemplate: "%{x}: %{y} jobs<extra></extra>" }],
    { xaxis: { type: "category", range: columnsRange(d.jobs.length) },
      yaxis: countAxis(Math.max(...d.jobs.map((j) => j.jobs)), { title: { text: "jobs" } }) }, d.jobs.length);
    note("jobs", d.jobs.filter((j) => j.mean_seconds !== null)
      .map((j) => `${j.status}: ${duration(j.mean_seconds)} mean, ${duration(j.max_seconds)} longest`).join("; "));
  }
}

// ---- the job list ----
function jobList(d) {
  const box = document.getElementById("jobs");
  box.textContent = "";
  if (!d.recent_jobs.length) {
    const p = document.createElement("div");
    p.className = "jobs-empty";
    p.textContent = "No jobs yet: trigger the e2e3d_reconstruction DAG; each run is listed here with a link to its results.";
    box.appendChild(p);
    return;
  }
  const table = document.createElement("table");
  table.className = "jobs";
  const head = table.createTHead().insertRow();
  ["status", "job", "dataset", "started", "run time", "files", "size", "results"].forEach((h) => {
    const th = document.createElement("th"); th.textContent = h; head.appendChild(th);
  });
  const body = table.createTBody();
  d.recent_jobs.forEach((j) => {
    const tr = body.insertRow();
    tr.dataset.job = j.job_id;
    const badge = document.createElement("span");
    badge.className = "badge"; badge.textContent = j.status; badge.style.background = STATUS_COLORS[j.status] || "#808080";
    tr.insertCell().appendChild(badge);
    const job = tr.insertCell(); job.textContent = j.job_id; job.title = "run " + j.stamp;
    tr.insertCell().textContent = j.dataset;
    tr.insertCell().textContent = j.started_at ? when(j.started_at) : "–";
    tr.insertCell().textContent = duration(j.seconds);
    const files = tr.insertCell(); files.className = "num"; files.textContent = j.files === null ? "–" : count(j.files);
    const size = tr.insertCell(); size.className = "num"; size.textContent = j.bytes === null ? "–" : bytes(j.bytes);
    const results = tr.insertCell();
    if (j.results) {
      const a = document.createElement("a");
      a.href = j.results; a.target = "_blank"; a.rel = "noopener"; a.textContent = "results";
      results.appendChild(a);
    } else if (j.error) {
      results.className = "error"; results.textContent = j.error;
    } else {
      results.textContent = j.status === "failed" ? "failed" : "not published yet";
    }
  });
  box.appendChild(table);
}

// ---- self-check: every drawn label inside its chart and apart from the others ----
function visibleTexts(root) {
  return [...root.querySelectorAll("svg text")].filter((el) => {
    if (!el.textContent.trim()) return false;
    const r = el.getBoundingClientRect();
    if (r.width <= 0 || r.height <= 0) return false;
    for (let n = el; n && n !== root; n = n.parentElement) {
      const s = getComputedStyle(n);
      if (s.display === "none" || s.visibility === "hidden" || Number(s.opacity) === 0) return false;
    }
    return true;
  }).map((el) => ({ text: el.textContent.trim(), r: el.getBoundingClientRect() }));
}

function selfCheck() {
  const problems = [];
  document.querySelectorAll(".chart").forEach((chart) => {
    if (chart.dataset.empty === "true") return;
    const box = chart.getBoundingClientRect();
    const texts = visibleTexts(chart);
    if (!texts.length) problems.push(`${chart.id}: nothing drawn`);
    texts.forEach((t) => {
      if (t.r.left < box.left - 1 || t.r.right > box.right + 1 || t.r.top < box.top - 1 || t.r.bottom > box.bottom + 1) {
        problems.push(`${chart.id}: label "${t.text}" is cut off`);
      }
    });
    for (let i = 0; i < texts.length; i += 1) {
      for (let j = i + 1; j < texts.length; j += 1) {
        const a = texts[i].r, b = texts[j].r;
        const w = Math.min(a.right, b.right) - Math.max(a.left, b.left), h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
        if (w > 1 && h > 1) problems.push(`${chart.id}: label "${texts[i].text}" overlaps "${texts[j].text}"`);
      }
    }
  });
  document.querySelectorAll(".figure .value, .figure .detail").forEach((el) => {
    if (el.scrollWidth > el.clientWidth + 1) problems.push(`figure "${el.textContent}" is cut off`);
  });
  return problems;
}
window.e2e3dSelfCheck = selfCheck;

// ---- page ----
let data = null;

async function render() {
  document.body.dataset.ready = "";
  drawing = [];
  figures(data);
  charts(data);
  jobList(data);
  await Promise.all(drawing);
  await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
  document.body.dataset.selfcheck = JSON.stringify(selfCheck());
  document.body.dataset.ready = "true";
}

function rethemed() { if (applyTheme() && data) render(); }

async function main() {
  const query = new URLSearchParams(location.search);
  query.delete("theme"); // the page's own: the rest (days) goes to the data
  const response = await fetch("api/v1/storage/dashboard" + (query.size ? "?" + query : ""), { credentials: "same-origin" });
  if (!response.ok) {
    document.getElementById("error").textContent = "dashboard data: HTTP " + response.status + " " + (await response.text());
    document.body.dataset.ready = "error";
    return;
  }
  data = await response.json();
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  document.getElementById("subtitle").textContent =
    `Last ${data.days} days, from PostgreSQL · times in ${zone} (${utcOffset()}) · as of ${whenFormat.format(new Date())}`;
  const warnings = document.getElementById("warnings");
  data.warnings.forEach((w) => { const li = document.createElement("li"); li.textContent = w; warnings.appendChild(li); });
  await render();
  // follow the UI's theme as it changes: its stored choice, the system's, or the class on the UI's <html>
  window.addEventListener("storage", (e) => { if (e.key === THEME_KEY) rethemed(); });
  dark.addEventListener("change", rethemed);
  try {
    if (window.parent !== window) {
      new MutationObserver(rethemed).observe(window.parent.document.documentElement, { attributes: true, attributeFilter: ["class"] });
    }
  } catch (err) { /* another origin */ }
}

main().catch((err) => {
  document.getElementById("error").textContent = String(err && err.stack || err);
  document.body.dataset.ready = "error";
});
