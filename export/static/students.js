// The students' export page: a token from the teacher, a choice of rooms, measurements,
// range, resolution and format, a preview chart (uPlot) and a download link. No build step.
"use strict";

const LABELS = {
  de: {
    title: "Daten meiner Schule", access: "Zugang", token: "Zugangscode von der Lehrkraft",
    signin: "Anmelden", rooms: "Räume", measurements: "Messgrößen",
    range: "Zeitraum und Auflösung", start: "Von", end: "Bis", resolution: "Auflösung",
    res_raw: "jede Messung", res_1min: "1 Minute", res_15min: "15 Minuten", res_1h: "1 Stunde",
    res_1d: "1 Tag", file: "Datei", format: "Format", fmt_csv_de: "CSV für Excel (deutsch)",
    fmt_csv: "CSV (international)", fmt_zip: "ZIP mit Datenbeschreibung", layout: "Tabellenform",
    layout_wide: "breit: eine Spalte je Raum und Messgröße",
    layout_long: "lang: eine Zeile je Messwert", preview: "Vorschau anzeigen",
    download: "Herunterladen",
    timehint: "Zeiten in deutscher Ortszeit; Lücken bleiben in der Datei als leere Zellen sichtbar.",
    school: "Schule", valid: "Zugang gültig bis", loading: "Lade …", nodata: "Keine Messwerte in diesem Zeitraum.",
    points: "Zeitpunkte", denied: "Der Zugangscode gilt nicht (unbekannt, abgelaufen oder zurückgezogen).",
    choose: "Bitte mindestens einen Raum und eine Messgröße wählen.", error: "Fehler",
  },
  en: {
    title: "My school's data", access: "Access", token: "Access code from your teacher",
    signin: "Sign in", rooms: "Rooms", measurements: "Measurements",
    range: "Time range and resolution", start: "From", end: "To", resolution: "Resolution",
    res_raw: "every reading", res_1min: "1 minute", res_15min: "15 minutes", res_1h: "1 hour",
    res_1d: "1 day", file: "File", format: "Format", fmt_csv_de: "CSV for Excel (German)",
    fmt_csv: "CSV (international)", fmt_zip: "ZIP with data dictionary", layout: "Layout",
    layout_wide: "wide: one column per room and measurement",
    layout_long: "long: one row per reading", preview: "Show preview", download: "Download",
    timehint: "Times in German local time; gaps stay visible in the file as empty cells.",
    school: "School", valid: "Access valid until", loading: "Loading …", nodata: "No readings in this range.",
    points: "points in time", denied: "The access code is not valid (unknown, expired or revoked).",
    choose: "Please choose at least one room and one measurement.", error: "Error",
  },
};

const params = new URLSearchParams(location.search);
const lang = params.get("lang") || ((navigator.language || "de").startsWith("de") ? "de" : "en");
const L = LABELS[lang] || LABELS.de;
const $ = (id) => document.getElementById(id);
let token = "";
let meta = null;
let plot = null;

function translate() {
  document.documentElement.lang = lang;
  for (const el of document.querySelectorAll("[data-i18n]")) {
    const text = L[el.dataset.i18n];
    if (text) el.textContent = text;
  }
  document.title = "Stadtpuls – " + L.title;
}

function status(text, ok) {
  $("status").textContent = text || "";
  $("status").className = ok ? "ok" : "";
}

function localInput(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

function checked(containerId) {
  return [...$(containerId).querySelectorAll("input:checked")].map((el) => el.value);
}

function checkbox(container, value, text, on) {
  const label = document.createElement("label");
  const box = document.createElement("input");
  box.type = "checkbox";
  box.value = value;
  box.checked = on;
  box.addEventListener("change", updateLink);
  label.append(box, " " + text);
  container.append(label);
}

function query(overrides) {
  const q = new URLSearchParams();
  q.set("rooms", checked("rooms").join(","));
  q.set("measurements", checked("measurements").join(","));
  q.set("start", new Date($("start").value).toISOString());
  q.set("end", new Date($("end").value).toISOString());
  q.set("resolution", $("resolution").value);
  q.set("format", $("format").value);
  q.set("layout", $("layout").value);
  for (const [k, v] of Object.entries(overrides || {})) q.set(k, v);
  return q;
}

function ready() {
  return checked("rooms").length > 0 && checked("measurements").length > 0
    && $("start").value && $("end").value;
}

function updateLink() {
  const link = $("download");
  if (!ready()) {
    link.classList.add("disabled");
    link.href = "#";
    return;
  }
  // A link, not a fetch: the browser streams the file to disk however large it is.
  const q = query();
  q.set("token", token);
  link.href = "/api/v1/export?" + q.toString();
  link.classList.remove("disabled");
}

async function signIn(candidate) {
  token = candidate.trim();
  const response = await fetch("/api/v1/export/meta", { headers: { Authorization: "Bearer " + token } });
  if (!response.ok) {
    status(L.denied);
    return;
  }
  meta = await response.json();
  $("login").hidden = true;
  $("form").hidden = false;
  $("school").textContent = `${L.school}: ${meta.site.name}${meta.site.city ? ", " + meta.site.city : ""} · ${L.valid} ${new Date(meta.expires).toLocaleString(lang)}`;
  const measurements = new Map();
  for (const room of meta.rooms) {
    checkbox($("rooms"), room.id, room.description ? `${room.id} (${room.description})` : room.id, false);
    for (const s of room.series) measurements.set(s.measurement, s.unit);
  }
  for (const [name, unit] of measurements) checkbox($("measurements"), name, `${name} [${unit}]`, false);
  const end = new Date();
  const start = new Date(end.getTime() - 7 * 86400e3);
  $("start").value = localInput(start);
  $("end").value = localInput(end);
  for (const id of ["start", "end", "resolution", "format", "layout"]) $(id).addEventListener("change", updateLink);
  status("");
  updateLink();
}

async function preview() {
  if (!ready()) {
    status(L.choose);
    return;
  }
  status(L.loading, true);
  const q = query({ format: "json", layout: "wide" });
  const response = await fetch("/api/v1/export?" + q.toString(), { headers: { Authorization: "Bearer " + token } });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    status(`${L.error} ${response.status}: ${body.error || ""}`);
    return;
  }
  const rows = await response.json();
  if (rows.length === 0) {
    status(L.nodata);
    return;
  }
  const names = Object.keys(rows[0]).filter((k) => k !== "time" && k !== "local_time");
  const data = [rows.map((r) => Date.parse(r.time) / 1000), ...names.map((n) => rows.map((r) => r[n]))];
  const units = [...new Set(names.map((n) => n.slice(n.lastIndexOf("[") + 1, -1)))];
  const colours = ["#2a6f97", "#c0392b", "#27ae60", "#8e44ad", "#d35400", "#16a085", "#7f8c8d", "#f1c40f"];
  const opts = {
    width: Math.min(900, document.body.clientWidth - 20),
    height: 360,
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Europe/Berlin"),
    scales: Object.fromEntries(units.map((u) => [u, { auto: true }])),
    axes: [{}, ...units.slice(0, 2).map((u, i) => ({ scale: u, label: u, side: i === 0 ? 3 : 1, grid: { show: i === 0 } }))],
    series: [{}, ...names.map((n, i) => ({
      label: n, scale: n.slice(n.lastIndexOf("[") + 1, -1), stroke: colours[i % colours.length], width: 1.5, spanGaps: false,
    }))],
  };
  if (plot) plot.destroy();
  $("chart").textContent = "";
  plot = new uPlot(opts, data, $("chart"));
  $("chart").dataset.points = String(rows.length);
  status(`${rows.length} ${L.points}`, true);
}

translate();
$("signin").addEventListener("click", () => signIn($("token").value));
$("preview").addEventListener("click", preview);
const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromHash) {
  // Out of the address bar, so it is not shared with a screenshot or a bookmark.
  history.replaceState(null, "", location.pathname + location.search);
  signIn(fromHash);
}
