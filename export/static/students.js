// The students' export page: a token from the teacher, a choice of rooms, measurements,
// range, resolution and format, a preview chart (uPlot) and a download link. No build step.
//
// German unless asked otherwise (?lang=en or the switch at the top): a school page in
// Germany opens in German whatever the browser's language. Times are Berlin's, whatever the
// computer's zone: the range fields, the week list and the chart's time axis (03.12. 14:00,
// 24 hours). Names and units of measurements come from /api/v1/export/meta, in both
// languages, so the page shows "Feinstaub PM2,5 (µg/m³)" and never a code like "ug/m3".
// After signing in, the school's rooms, CO₂ and the last seven days are chosen and the chart
// is drawn at once; each change redraws it (after a short pause, since every preview counts
// against the token's exports per minute).
"use strict";

const LABELS = {
  de: {
    title: "Daten meiner Schule", access: "Zugang", token: "Zugangscode von der Lehrkraft",
    signin: "Anmelden", rooms: "Räume", measurements: "Messgrößen",
    range: "Zeitraum und Auflösung", week: "Woche", start: "Von", end: "Bis", resolution: "Auflösung",
    res_raw: "jede Messung", res_1min: "1 Minute", res_15min: "15 Minuten", res_1h: "1 Stunde",
    res_1d: "1 Tag", file: "Datei", format: "Format", fmt_csv_de: "CSV für Excel (deutsch)",
    fmt_csv: "CSV (international)", fmt_zip: "ZIP mit Datenbeschreibung", layout: "Tabellenform",
    layout_wide: "breit: eine Spalte je Raum und Messgröße",
    layout_long: "lang: eine Zeile je Messwert", preview: "Diagramm aktualisieren",
    download: "Herunterladen",
    timehint: "Datum und Uhrzeit wie 24.11.2026 08:00, in deutscher Ortszeit; ohne Uhrzeit gilt „Von“ ab 0 Uhr und „Bis“ bis zum Ende des Tages. Lücken bleiben in der Datei als leere Zellen sichtbar.",
    placeholder: "TT.MM.JJJJ hh:mm", badtime: "Bitte Datum und Uhrzeit so eingeben: 24.11.2026 08:00",
    school: "Schule", valid: "Zugang gültig bis", loading: "Lade …", nodata: "Keine Messwerte in diesem Zeitraum.",
    points: "Zeitpunkte", denied: "Der Zugangscode gilt nicht (unbekannt, abgelaufen oder zurückgezogen).",
    choose: "Bitte mindestens einen Raum und eine Messgröße wählen.", error: "Fehler",
    order: "Das Ende muss nach dem Anfang liegen.", toolong: "Der Zeitraum darf höchstens {n} Tage lang sein.",
    busy: "Zu viele Anfragen kurz hintereinander – bitte in {n} Sekunden noch einmal versuchen.",
    last7: "letzte 7 Tage", custom: "eigener Zeitraum", kw: "KW", time: "Zeit",
    weekdays: ["So", "Mo", "Di", "Mi", "Do", "Fr", "Sa"],
  },
  en: {
    title: "My school's data", access: "Access", token: "Access code from your teacher",
    signin: "Sign in", rooms: "Rooms", measurements: "Measurements",
    range: "Time range and resolution", week: "Week", start: "From", end: "To", resolution: "Resolution",
    res_raw: "every reading", res_1min: "1 minute", res_15min: "15 minutes", res_1h: "1 hour",
    res_1d: "1 day", file: "File", format: "Format", fmt_csv_de: "CSV for Excel (German)",
    fmt_csv: "CSV (international)", fmt_zip: "ZIP with data dictionary", layout: "Layout",
    layout_wide: "wide: one column per room and measurement",
    layout_long: "long: one row per reading", preview: "Update chart", download: "Download",
    timehint: "Date and time like 24/11/2026 08:00, in German local time; without a time, \"From\" starts at midnight and \"To\" ends with the day. Gaps stay visible in the file as empty cells.",
    placeholder: "DD/MM/YYYY hh:mm", badtime: "Please enter date and time like this: 24/11/2026 08:00",
    school: "School", valid: "Access valid until", loading: "Loading …", nodata: "No readings in this range.",
    points: "points in time", denied: "The access code is not valid (unknown, expired or revoked).",
    choose: "Please choose at least one room and one measurement.", error: "Error",
    order: "The end must lie after the start.", toolong: "The range may be at most {n} days long.",
    busy: "Too many requests in a short time – please try again in {n} seconds.",
    last7: "last 7 days", custom: "own range", kw: "Week", time: "Time",
    weekdays: ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"],
  },
};

const ZONE = "Europe/Berlin";
const DAY_MS = 86400e3;
const $ = (id) => document.getElementById(id);
let lang = new URLSearchParams(location.search).get("lang") === "en" ? "en" : "de";
let L = LABELS[lang];
let token = "";
let meta = null;
let nowMs = Date.now();
let plot = null;
let lastRows = null;
let lastStatus = null;
let timer = null;
let previews = 0; // the latest preview wins when answers cross

// --- Berlin time, whatever the computer's zone ------------------------------------------------

const partsFormat = new Intl.DateTimeFormat("en-GB", {
  timeZone: ZONE, year: "numeric", month: "2-digit", day: "2-digit",
  hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
});

function berlin(ms) {
  const p = {};
  for (const part of partsFormat.formatToParts(new Date(ms))) p[part.type] = part.value;
  const wall = Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour % 24, +p.minute, +p.second);
  return {
    year: +p.year, month: +p.month, day: +p.day, hour: +p.hour % 24, minute: +p.minute,
    weekday: new Date(wall).getUTCDay(), wall,
  };
}

// The instant at which Berlin's clocks show the wall time ``wall`` (ms, written as if UTC).
function fromWall(wall) {
  let t = wall - (berlin(wall).wall - Math.floor(wall / 1000) * 1000);
  t = wall - (berlin(t).wall - Math.floor(t / 1000) * 1000);
  return t;
}

const pad = (n) => String(n).padStart(2, "0");

// The range fields are text in the page's language ("24.11.2026 08:00", "24/11/2026 08:00"),
// not the browser's date widget, which follows the browser's language (and shows 12-hour
// times in an English one). Either language's form is read, and ISO (2026-11-24 08:00).
function inputValue(ms) {
  return `${dayText(berlin(ms), true)} ${clockText(berlin(ms))}`;
}

// The instant a range field means, or NaN. A day without a time is its start, or in the
// "to" field (``isEnd``) its end, so "from 24.11.2026 to 24.11.2026" is that whole day.
function fromInput(text, isEnd) {
  const t = (text || "").trim();
  let m = /^(\d{1,2})[./](\d{1,2})[./](\d{4})(?:[ ,T]+(\d{1,2})(?:[:.](\d{2}))?)?$/.exec(t);
  let y, mo, d, h, mi;
  if (m) [y, mo, d, h, mi] = [m[3], m[2], m[1], m[4], m[5]];
  else if ((m = /^(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{2}):(\d{2}))?$/.exec(t))) [y, mo, d, h, mi] = m.slice(1);
  else return NaN;
  const wall = Date.UTC(+y, +mo - 1, +d, +(h || 0), +(mi || 0));
  const back = new Date(wall);
  if (back.getUTCDate() !== +d || back.getUTCMonth() !== +mo - 1 || +(h || 0) > 23 || +(mi || 0) > 59) return NaN;
  return fromWall(h === undefined && isEnd ? wall + DAY_MS : wall);
}

function dayText(b, withYear) {
  if (lang === "de") return `${pad(b.day)}.${pad(b.month)}.${withYear ? b.year : ""}`;
  return `${pad(b.day)}/${pad(b.month)}${withYear ? "/" + b.year : ""}`;
}

const clockText = (b) => `${pad(b.hour)}:${pad(b.minute)}`;

// Tick labels of the time axis: "Mo 23.11." for whole days, "23.11. 14:00" within days.
function tickText(seconds, incr) {
  const b = berlin(seconds * 1000);
  if (incr >= 86400) return `${L.weekdays[b.weekday]} ${dayText(b, false)}`;
  return `${dayText(b, false)} ${clockText(b)}`;
}

function fullText(ms) {
  const b = berlin(ms);
  return `${L.weekdays[b.weekday]} ${dayText(b, true)} ${clockText(b)}`;
}

// --- the page in one language ------------------------------------------------------------------

function fill(text, n) {
  return text.replace("{n}", String(n));
}

function translate() {
  L = LABELS[lang];
  document.documentElement.lang = lang;
  for (const el of document.querySelectorAll("[data-i18n]")) {
    const text = L[el.dataset.i18n];
    if (text) el.textContent = text;
  }
  for (const el of document.querySelectorAll("[data-i18n-placeholder]")) {
    el.placeholder = L[el.dataset.i18nPlaceholder];
  }
  for (const a of document.querySelectorAll("#lang a")) {
    a.setAttribute("aria-current", String(a.dataset.lang === lang));
  }
  document.title = "Stadtpuls – " + L.title;
}

function status(key, n, ok) {
  lastStatus = key ? [key, n, ok] : null;
  const text = key ? (L[key] ? fill(L[key], n) : key) : "";
  const target = meta ? $("status") : $("login-status");
  target.textContent = key === "points" ? `${n} ${L.points}` : text;
  target.className = ok ? "ok" : "";
}

function setLang(next) {
  if (next === lang) return;
  lang = next;
  const q = new URLSearchParams(location.search);
  q.set("lang", lang);
  history.replaceState(null, "", location.pathname + "?" + q.toString());
  translate();
  if (meta) {
    showSchool();
    const rooms = checked("rooms");
    const measurements = checked("measurements");
    const week = $("week").value;
    const start = fromInput($("start").value, false);
    const end = fromInput($("end").value, true);
    if (!Number.isNaN(start) && !Number.isNaN(end)) {
      $("start").value = inputValue(start);
      $("end").value = inputValue(end);
    }
    renderChoices(rooms, measurements);
    renderWeeks(week);
    if (lastRows) draw(lastRows);
  }
  if (lastStatus) status(...lastStatus);
}

function showSchool() {
  const site = meta.site;
  const expires = fullText(Date.parse(meta.expires));
  $("school").textContent = `${L.school}: ${site.name}${site.city ? ", " + site.city : ""} · ${L.valid} ${expires}`;
}

// --- choices -------------------------------------------------------------------------------

function checked(containerId) {
  return [...$(containerId).querySelectorAll("input:checked")].map((el) => el.value);
}

function checkbox(container, value, text, about, on) {
  const label = document.createElement("label");
  const box = document.createElement("input");
  box.type = "checkbox";
  box.value = value;
  box.checked = on;
  box.addEventListener("change", changed);
  label.append(box, " " + text);
  if (about) {
    const span = document.createElement("span");
    span.className = "about";
    span.textContent = " – " + about;
    label.append(span);
  }
  container.append(label);
}

// Each measurement once, named in the page's language with its unit: "Temperatur (°C)".
function measurementChoices() {
  const out = new Map();
  for (const room of meta.rooms) {
    for (const s of room.series) {
      if (!out.has(s.measurement)) out.set(s.measurement, `${s.label[lang]} (${s.unit_text})`);
    }
  }
  return out;
}

function renderChoices(rooms, measurements) {
  $("rooms").textContent = "";
  $("measurements").textContent = "";
  for (const room of meta.rooms) {
    checkbox($("rooms"), room.id, room.name || room.id, room.description, rooms.includes(room.id));
  }
  for (const [id, text] of measurementChoices()) {
    checkbox($("measurements"), id, text, "", measurements.includes(id));
  }
}

// The week list: the last seven days, then calendar weeks (Monday to Monday, Berlin time),
// the current one first. Choosing one fills "from" and "to".
function renderWeeks(selected) {
  const select = $("week");
  select.textContent = "";
  const add = (value, text) => {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = text;
    select.append(option);
  };
  add("last7", L.last7);
  const today = berlin(nowMs);
  let monday = Date.UTC(today.year, today.month - 1, today.day) - ((today.weekday + 6) % 7) * DAY_MS;
  for (let i = 0; i < 12; i++, monday -= 7 * DAY_MS) {
    const first = berlin(fromWall(monday));
    const last = berlin(fromWall(monday + 6 * DAY_MS));
    add(String(monday), `${L.kw} ${isoWeek(monday)}: ${dayText(first, false)}–${dayText(last, true)}`);
  }
  add("custom", L.custom);
  select.value = selected || "last7";
}

function isoWeek(mondayWall) {
  const thursday = new Date(mondayWall + 3 * DAY_MS);
  const jan4 = Date.UTC(thursday.getUTCFullYear(), 0, 4);
  const firstMonday = jan4 - ((new Date(jan4).getUTCDay() + 6) % 7) * DAY_MS;
  return 1 + Math.round((mondayWall - firstMonday) / (7 * DAY_MS));
}

function applyWeek() {
  const value = $("week").value;
  let start;
  let end;
  if (value === "last7") {
    end = Math.ceil(nowMs / 3600e3) * 3600e3;
    start = end - 7 * DAY_MS;
  } else if (value !== "custom") {
    start = fromWall(+value);
    end = Math.min(fromWall(+value + 7 * DAY_MS), Math.ceil(nowMs / 3600e3) * 3600e3);
  } else {
    return;
  }
  $("start").value = inputValue(start);
  $("end").value = inputValue(end);
}

function query(overrides) {
  const q = new URLSearchParams();
  q.set("rooms", checked("rooms").join(","));
  q.set("measurements", checked("measurements").join(","));
  q.set("start", new Date(fromInput($("start").value, false)).toISOString());
  q.set("end", new Date(fromInput($("end").value, true)).toISOString());
  q.set("resolution", $("resolution").value);
  q.set("format", $("format").value);
  q.set("layout", $("layout").value);
  for (const [k, v] of Object.entries(overrides || {})) q.set(k, v);
  return q;
}

// Why the choice cannot be exported, as a label key and its number, or null.
function problem() {
  if (checked("rooms").length === 0 || checked("measurements").length === 0) return ["choose"];
  const start = fromInput($("start").value, false);
  const end = fromInput($("end").value, true);
  if (Number.isNaN(start) || Number.isNaN(end)) return ["badtime"];
  if (!(end > start)) return ["order"];
  if (end - start > meta.max_range_days * DAY_MS) return ["toolong", Math.floor(meta.max_range_days)];
  return null;
}

function updateLink() {
  const link = $("download");
  if (problem()) {
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

function changed(event) {
  if (event && event.target.id === "week") applyWeek();
  if (event && (event.target.id === "start" || event.target.id === "end")) $("week").value = "custom";
  updateLink();
  if (event && (event.target.id === "format" || event.target.id === "layout")) return;
  clearTimeout(timer);
  timer = setTimeout(preview, 700);
}

async function signIn(candidate) {
  token = candidate.trim();
  const response = await fetch("/api/v1/export/meta", { headers: { Authorization: "Bearer " + token } });
  if (!response.ok) {
    status("denied");
    return;
  }
  meta = await response.json();
  nowMs = meta.now ? Date.parse(meta.now) : Date.now();
  $("login").hidden = true;
  $("form").hidden = false;
  showSchool();
  // Something sensible at once: every room of the token, CO₂ (else the first measurement),
  // the last seven days; the chart follows without a click.
  const measurements = [...measurementChoices().keys()];
  const first = measurements.includes("co2") ? "co2" : measurements[0];
  renderChoices(meta.rooms.map((r) => r.id), first ? [first] : []);
  renderWeeks("last7");
  applyWeek();
  for (const id of ["week", "start", "end", "resolution", "format", "layout"]) $(id).addEventListener("change", changed);
  status(null);
  updateLink();
  await preview();
}

async function preview() {
  clearTimeout(timer);
  const why = problem();
  if (why) {
    status(...why);
    return;
  }
  status("loading", null, true);
  const mine = ++previews;
  const q = query({ format: "json", layout: "wide" });
  const response = await fetch("/api/v1/export?" + q.toString(), { headers: { Authorization: "Bearer " + token } });
  if (mine !== previews) return;
  if (response.status === 429) {
    status("busy", response.headers.get("Retry-After") || 60);
    return;
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    status(`${L.error} ${response.status}: ${body.error || ""}`);
    return;
  }
  const rows = await response.json();
  if (mine !== previews) return;
  if (rows.length === 0) {
    if (plot) plot.destroy();
    plot = null;
    lastRows = null;
    $("chart").textContent = "";
    $("chart").dataset.points = "0";
    status("nodata");
    return;
  }
  lastRows = rows;
  draw(rows);
  status("points", rows.length, true);
}

// --- the chart -----------------------------------------------------------------------------

function draw(rows) {
  // Columns of the wide JSON ("room-101 co2 [ppm]") -> room and series from the metadata.
  const byColumn = new Map();
  for (const room of meta.rooms) for (const s of room.series) byColumn.set(s.column, { room, s });
  const names = Object.keys(rows[0]).filter((k) => k !== "time" && k !== "local_time");
  const lines = names.map((n) => {
    const found = byColumn.get(n);
    if (!found) return { label: n, unit: n.slice(n.lastIndexOf("[") + 1, -1), measurement: n };
    const room = found.room.name || found.room.id;
    const channel = found.s.channel ? ` ${found.s.channel}` : "";
    return { label: `${room}${channel} · ${found.s.label[lang]}`, unit: found.s.unit_text, measurement: found.s.label[lang] };
  });
  const units = [...new Set(lines.map((l) => l.unit))];
  const axisLabel = (unit) => {
    const what = [...new Set(lines.filter((l) => l.unit === unit).map((l) => l.measurement))];
    return `${what.join(", ")} (${unit})`;
  };
  const locale = lang === "de" ? "de-DE" : "en-GB";
  const numbers = new Intl.NumberFormat(locale, { maximumFractionDigits: 1 });
  const precise = new Intl.NumberFormat(locale, { maximumFractionDigits: 2 });
  const data = [rows.map((r) => Date.parse(r.time) / 1000), ...names.map((n) => rows.map((r) => r[n]))];
  const colours = ["#2a6f97", "#c0392b", "#27ae60", "#8e44ad", "#d35400", "#16a085", "#7f8c8d", "#f1c40f"];
  const chart = $("chart");
  const opts = {
    width: Math.min(900, document.body.clientWidth - 20),
    height: 360,
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), ZONE),
    scales: Object.fromEntries(units.map((u) => [u, { auto: true }])),
    axes: [
      {
        space: 90,
        values: (u, splits, axisIdx, space, incr) => {
          const ticks = splits.map((ts) => tickText(ts, incr));
          chart.dataset.xTicks = ticks.join("|");
          return ticks;
        },
      },
      ...units.map((u, i) => ({
        scale: u, label: axisLabel(u), side: i % 2 === 0 ? 3 : 1, grid: { show: i === 0 },
        values: (self, splits) => splits.map((v) => (v == null ? "" : numbers.format(v))),
      })),
    ],
    series: [
      { label: L.time, value: (u, ts) => (ts == null ? "–" : fullText(ts * 1000)) },
      ...lines.map((l, i) => ({
        label: l.label, scale: l.unit, stroke: colours[i % colours.length], width: 1.5, spanGaps: false,
        value: (u, v) => (v == null ? "–" : `${precise.format(v)} ${l.unit}`),
      })),
    ],
  };
  if (plot) plot.destroy();
  chart.textContent = "";
  plot = new uPlot(opts, data, chart);
  chart.dataset.points = String(rows.length);
}

translate();
for (const a of document.querySelectorAll("#lang a")) {
  a.addEventListener("click", (event) => {
    event.preventDefault(); // in place: a reload would lose the access code
    setLang(a.dataset.lang);
  });
}
$("signin").addEventListener("click", () => signIn($("token").value));
$("preview").addEventListener("click", preview);
const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromHash) {
  // Out of the address bar, so it is not shared with a screenshot or a bookmark.
  history.replaceState(null, "", location.pathname + location.search);
  signIn(fromHash);
}
