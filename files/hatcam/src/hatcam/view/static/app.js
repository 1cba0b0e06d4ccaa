// hatcam view: the page. Plain JS, no build step; talks only to the local app.
// Every problem is shown in words in the banner: a failed request never leaves a blank page.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  device: null,
  day: null,
  devices: [],
  timeline: null,
  hls: null,
  mode: null,            // "play" | "live" | null
  askedAt: null,         // Date asked for by the last play
  problems: new Map(),   // source -> [lines]
  stillsFetchedAt: 0,
  recheck: null,         // the timer asking again for a timeline being checked
};

// --- problems: words, never a blank page ---------------------------------------------

function setProblems(source, lines) {
  if (lines && lines.length) state.problems.set(source, lines);
  else state.problems.delete(source);
  const all = [...state.problems.values()].flat();
  const banner = $("banner");
  banner.hidden = all.length === 0;
  banner.replaceChildren();
  if (all.length) {
    const ul = document.createElement("ul");
    for (const line of all) {
      const li = document.createElement("li");
      li.textContent = line;
      ul.append(li);
    }
    banner.append(ul);
  }
}

async function getJSON(url, source, options) {
  // The answer's JSON, or null with the reason in the banner under ``source``.
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    setProblems(source, ["The hatcam view app is not answering (is `hatcam view` still running?)"]);
    return null;
  }
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok) {
    const why = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    setProblems(source, [why]);
    return null;
  }
  setProblems(source, body && body.problems ? body.problems : []);
  return body;
}

// --- formatting ------------------------------------------------------------------------

const pad = (n, w = 2) => String(n).padStart(w, "0");
function hms(date) {
  return `${pad(date.getUTCHours())}:${pad(date.getUTCMinutes())}:${pad(date.getUTCSeconds())}`;
}
function hmsms(date) {
  return `${hms(date)}.${pad(date.getUTCMilliseconds(), 3)}`;
}
function dayOf(date) {
  return date.toISOString().slice(0, 10);
}
function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
}
function when(iso) {
  if (!iso) return "none";
  const d = new Date(iso);
  return `${dayOf(d)} ${hms(d)} (${ago(iso)})`;
}
function duration(seconds) {
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}
function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

// --- devices ---------------------------------------------------------------------------

function deviceState(d) {
  if (d.silent) return ["silent", "SILENT"];
  if (!d.health) return ["unknown", "no health (cloud only)"];
  return d.health.recording ? ["recording", "recording"] : ["stopped", "not recording"];
}

async function loadDevices() {
  const body = await getJSON("/api/devices", "devices");
  const tbody = $("devices").tBodies[0];
  const note = (text) => {
    const tr = document.createElement("tr");
    const td = cell(text, "muted");
    td.colSpan = 9;
    tr.append(td);
    tbody.append(tr);
  };
  if (!body) {
    if (!state.devices.length) {
      tbody.replaceChildren();
      note("Could not list the cameras: see the problem above.");
    }
    return;
  }
  state.devices = body.devices || [];
  tbody.replaceChildren();
  if (!state.devices.length) note("No camera has uploaded anything to this container yet.");
  for (const d of state.devices) {
    const h = d.health;
    const tr = document.createElement("tr");
    tr.dataset.device = d.device;
    tr.classList.toggle("selected", d.device === state.device);
    const [cls, label] = deviceState(d);
    const stateCell = document.createElement("td");
    const badge = document.createElement("span");
    badge.className = `state ${cls}`;
    badge.textContent = label;
    stateCell.append(badge);
    if (d.silent && h === null) stateCell.title = "No health report within its time to live: the camera, its network or Redis is down.";
    tr.append(
      cell(d.device),
      stateCell,
      cell(h ? `${h.at_risk_s.toFixed(1)} s` : "–", h && h.at_risk_s > 30 ? "risk" : ""),
      cell(h ? String(h.queue) : "–"),
      cell(h ? when(h.last_upload) : "–"),
      cell(h ? `${Math.round(h.free_mb)} MB` : "–"),
      cell(h ? h.last_error || "none" : "–", h && h.last_error ? "error" : ""),
      cell(h ? h.version : "–"),
      cell(when(d.newest)),
    );
    tr.addEventListener("click", () => selectDevice(d.device));
    tbody.append(tr);
  }
  if (!state.device) {
    // ?device=&day= in the address picks them (a bookmark); else the first camera.
    const params = new URLSearchParams(location.search);
    const wanted = params.get("device");
    if (wanted) {
      state.day = params.get("day") || null;
      selectDevice(wanted);
    } else if (state.devices.length) selectDevice(state.devices[0].device);
  }
  const known = state.devices.some((d) => d.device === state.device);
  setProblems("device", state.device && !known
    ? [`No camera called "${state.device}" has uploaded to this container` +
       (state.devices.length ? ` (it holds ${state.devices.map((d) => d.device).join(", ")}).` : ".")]
    : []);
}

function selectDevice(device) {
  if (state.device !== device) {
    const bookmarked = state.device === null && state.day;  // ?day= kept for the first pick
    state.device = device;
    const d = state.devices.find((x) => x.device === device);
    if (!bookmarked) {
      state.day = d && d.newest ? dayOf(new Date(d.newest)) : dayOf(new Date());
    }
    $("day").value = state.day;
    for (const tr of $("devices").tBodies[0].rows) {
      tr.classList.toggle("selected", tr.dataset.device === device);
    }
  }
  loadTimeline();
  loadStills();
}

// --- timeline --------------------------------------------------------------------------

function extent(t) {
  // The span drawn: from the first recorded moment to the last, padded a little.
  const times = t.segments.flatMap((s) => [Date.parse(s.start), Date.parse(s.end)]);
  let lo = Math.min(...times);
  let hi = Math.max(...times);
  const margin = Math.max(1000, (hi - lo) * 0.02);
  return [lo - margin, hi + margin];
}

async function loadTimeline() {
  if (!state.device || !state.day) return;
  const device = state.device;
  const day = state.day;
  const url = `/api/timeline?device=${encodeURIComponent(device)}&day=${day}`;
  const body = await getJSON(url, "timeline");
  if (device !== state.device || day !== state.day) return;  // answered too late
  state.timeline = body;
  drawTimeline();
  // A quick answer (from the day's index) is being checked by a full listing: ask again
  // until the checked one is there, while the same day is shown.
  clearTimeout(state.recheck);
  if (body && body.checked === false) {
    state.recheck = setTimeout(() => {
      if (device === state.device && day === state.day) loadTimeline();
    }, 1500);
  }
}

function drawTimeline() {
  const t = state.timeline;
  const runs = $("track-runs");
  const proof = $("track-proof");
  const axis = $("axis");
  runs.replaceChildren();
  proof.replaceChildren();
  axis.replaceChildren();
  $("timeline-title").textContent = state.device ? `${state.device}, ${state.day}` : "";
  const timeline = $("timeline");
  if (!t || !t.segments || !t.segments.length) {
    delete timeline.dataset.start;
    delete timeline.dataset.end;
    $("timeline-summary").textContent = t ? "nothing recorded on this day" : "";
    return;
  }
  const [lo, hi] = extent(t);
  timeline.dataset.start = new Date(lo).toISOString();
  timeline.dataset.end = new Date(hi).toISOString();
  const x = (ms) => `${((ms - lo) / (hi - lo)) * 100}%`;
  const width = (a, b) => `${Math.max(0.15, ((b - a) / (hi - lo)) * 100)}%`;
  for (const r of t.runs) {
    const a = Date.parse(r.start);
    const b = Date.parse(r.end);
    const el = document.createElement("div");
    el.className = "block run";
    Object.assign(el.style, { left: x(a), width: width(a, b) });
    el.title = `recorded ${hms(new Date(a))}–${hms(new Date(b))}, ${r.segments} segment(s)`;
    runs.append(el);
  }
  for (const p of t.proof || []) {
    const a = Date.parse(p.start);
    const b = Date.parse(p.end);
    const el = document.createElement("div");
    el.className = `block ${p.state}`;
    Object.assign(el.style, { left: x(a), width: width(a, b) });
    el.title = `${p.state} ${hms(new Date(a))}–${hms(new Date(b))}`;
    proof.append(el);
  }
  const ticks = 8;
  for (let i = 0; i <= ticks; i++) {
    const ms = lo + ((hi - lo) * i) / ticks;
    const span = document.createElement("span");
    span.style.left = x(ms);
    span.textContent = hms(new Date(ms));
    axis.append(span);
  }
  const recorded = t.runs.reduce((s, r) => s + (Date.parse(r.end) - Date.parse(r.start)) / 1000, 0);
  const gaps = (t.gaps || []).length;
  const missing = (t.proof || []).filter((p) => p.state === "missing").length;
  $("timeline-summary").textContent =
    ` · ${t.segments.length} segment(s), ${duration(recorded)} recorded in ${t.runs.length} run(s), ` +
    `${gaps} gap(s)${missing ? `, ${missing} missing range(s)` : ""}` +
    (t.checked === false ? " (checking…)" : "");
  if (!$("at-time").value) $("at-time").value = hms(new Date(Date.parse(t.runs[0].start)));
  if (!$("export-from").value) {
    const last = t.runs[t.runs.length - 1];
    $("export-from").value = hms(new Date(last.start));
    $("export-to").value = hms(new Date(last.end));
  }
}

function timeAtClick(event) {
  const timeline = $("timeline");
  if (!timeline.dataset.start) return null;
  const lo = Date.parse(timeline.dataset.start);
  const hi = Date.parse(timeline.dataset.end);
  const box = timeline.getBoundingClientRect();
  const f = Math.min(1, Math.max(0, (event.clientX - box.left) / box.width));
  return new Date(lo + f * (hi - lo));
}

function moveCursor(date) {
  const timeline = $("timeline");
  const cursor = $("cursor");
  if (!date || !timeline.dataset.start) {
    cursor.hidden = true;
    return;
  }
  const lo = Date.parse(timeline.dataset.start);
  const hi = Date.parse(timeline.dataset.end);
  const f = (date.getTime() - lo) / (hi - lo);
  cursor.hidden = f < 0 || f > 1;
  cursor.style.left = `${f * 100}%`;
}

// --- player ----------------------------------------------------------------------------

function stopPlayer() {
  if (state.hls) {
    state.hls.destroy();
    state.hls = null;
  }
  state.mode = null;
  $("follow-live").classList.remove("active");
  $("delay").textContent = "";
  $("picture-time").textContent = "";
  setProblems("player", []);
}

function hlsProblem(data) {
  // hls.js's error in words a person can act on.
  const where = data.response && data.response.code ? ` (the app answered ${data.response.code})` : "";
  if (data.type === Hls.ErrorTypes.NETWORK_ERROR) {
    const what = /^(manifest|level)/.test(data.details) ? "the playlist" : "the footage";
    const timeout = /TimeOut$/.test(data.details) ? " in time" : "";
    return `Playback: could not load ${what}${timeout} from the hatcam view app${where}`;
  }
  if (data.type === Hls.ErrorTypes.MEDIA_ERROR) {
    return `Playback: this browser could not decode the footage (${data.details})`;
  }
  return `Playback stopped: ${data.details}`;
}

async function explainPlaylist(url) {
  // hls.js only sees a status code; the app's own words are in the JSON body.
  try {
    const response = await fetch(url);
    if (!response.ok) {
      const body = await response.json();
      if (body && body.error) return body.error;
    }
  } catch (err) {
    return null;
  }
  return null;
}

function startPlayer(url, mode, label) {
  stopPlayer();
  const video = $("video");
  state.mode = mode;
  $("player-state").textContent = label;
  if (typeof Hls === "undefined" || !Hls.isSupported()) {
    setProblems("player", ["This browser cannot play HLS through Media Source Extensions: use a current Chromium, Firefox or Edge."]);
    return;
  }
  const live = mode === "live";
  const hls = new Hls({
    // Live: stay 1 s behind the playlist's edge (which is itself what the camera has
    // appended so far), and play up to 1.5x to get back there after a stall; hls.js only
    // adjusts the rate in its low-latency mode (our playlists have no LL-HLS parts).
    liveSyncDuration: live ? 1 : undefined,
    liveMaxLatencyDuration: live ? 6 : undefined,
    maxLiveSyncPlaybackRate: 1.5,
    lowLatencyMode: live,
    enableWorker: true,
    startPosition: -1,
  });
  state.hls = hls;
  hls.on(Hls.Events.MANIFEST_PARSED, () => {
    video.play().catch((err) => setProblems("player", [`Playback did not start: ${err.message}`]));
  });
  hls.on(Hls.Events.ERROR, async (_event, data) => {
    if (!data.fatal) return;
    let line = hlsProblem(data);
    if (data.details === Hls.ErrorDetails.MANIFEST_LOAD_ERROR) {
      line = (await explainPlaylist(url)) || line;
    }
    if (state.hls !== hls) return;
    setProblems("player", [line]);
    if (data.type === Hls.ErrorTypes.MEDIA_ERROR) hls.recoverMediaError();
    else {
      hls.destroy();
      state.hls = null;
      $("player-state").textContent = "Stopped.";
    }
  });
  hls.loadSource(url);
  hls.attachMedia(video);
}

function play(at) {
  if (!state.device) return;
  state.askedAt = at;
  const url = `/hls/play.m3u8?device=${encodeURIComponent(state.device)}&at=${encodeURIComponent(at.toISOString())}`;
  $("video").dataset.askedAt = at.toISOString();
  startPlayer(url, "play", `Playing ${state.device} from ${hmsms(at)} (from the cloud)`);
  moveCursor(at);
}

function followLive() {
  if (!state.device) return;
  if (state.mode === "live") {
    stopPlayer();
    $("video").pause();
    $("player-state").textContent = "Stopped following.";
    return;
  }
  state.askedAt = null;
  delete $("video").dataset.askedAt;
  startPlayer(`/hls/live.m3u8?device=${encodeURIComponent(state.device)}`, "live", `Following ${state.device} live`);
  $("follow-live").classList.add("active");
}

function playingDate() {
  // The capture time of the picture on screen, from the playlist's PROGRAM-DATE-TIME.
  const hls = state.hls;
  if (!hls || $("video").readyState < 2) return null;
  const date = hls.playingDate;
  return date && !Number.isNaN(date.getTime()) ? date : null;
}

function tickPlayer() {
  const date = playingDate();
  const video = $("video");
  if (!date) {
    video.dataset.delayS = "";
    return;
  }
  $("picture-time").textContent = `picture captured ${dayOf(date)} ${hmsms(date)}`;
  video.dataset.pictureTime = date.toISOString();
  const delay = (Date.now() - date.getTime()) / 1000;
  if (state.mode === "live") {
    video.dataset.delayS = delay.toFixed(2);
    $("delay").textContent = `delay capture → screen ${delay.toFixed(1)} s`;
  } else {
    video.dataset.delayS = "";
    $("delay").textContent = "";
  }
  if (state.device && dayOf(date) === state.day) moveCursor(date);
}

// --- stills ----------------------------------------------------------------------------

async function loadStills() {
  const query = state.device ? `?device=${encodeURIComponent(state.device)}` : "";
  const body = await getJSON(`/api/stills${query}`, "stills");
  const box = $("stills");
  if (!body) return;
  state.stillsFetchedAt = Date.now();
  $("stills-title").textContent = state.device ? `(${state.device}, newest first)` : "(newest first)";
  const stills = body.stills || [];
  const keep = new Map([...box.querySelectorAll("figure")].map((f) => [f.dataset.key, f]));
  box.replaceChildren();
  if (!stills.length) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = body.problems && body.problems.length
      ? "No stills: see the problem above."
      : "No stills in Redis (they expire after their time to live).";
    box.append(p);
    return;
  }
  for (const s of stills) {
    let fig = keep.get(s.key);  // keep loaded images: no flicker on refresh
    if (!fig) {
      fig = document.createElement("figure");
      fig.className = "still";
      fig.dataset.key = s.key;
      const a = document.createElement("a");
      a.href = s.url;
      a.target = "_blank";
      const img = document.createElement("img");
      img.src = s.url;
      img.alt = `still ${s.timestamp}`;
      img.loading = "lazy";
      a.append(img);
      const cap = document.createElement("figcaption");
      fig.append(a, cap);
    }
    fig.dataset.ttl = String(s.ttl_s);
    const date = new Date(s.timestamp);
    const lux = s.lux === null || s.lux === undefined ? "" : ` · ${Math.round(s.lux)} lux`;
    const cap = fig.querySelector("figcaption");
    cap.replaceChildren();
    const title = document.createElement("div");
    title.textContent = `${s.device} ${hms(date)}${lux}`;
    const ttl = document.createElement("div");
    ttl.className = "ttl";
    cap.append(title, ttl);
    box.append(fig);
  }
  tickStills();
}

function tickStills() {
  const gone = (Date.now() - state.stillsFetchedAt) / 1000;
  for (const fig of $("stills").querySelectorAll("figure")) {
    const left = Math.max(0, Number(fig.dataset.ttl) - gone);
    const text = left > 0 ? `expires in ${duration(left)}` : "expired";
    fig.querySelector(".ttl").textContent = text;
  }
}

// --- export ----------------------------------------------------------------------------

function onDay(time) {
  // A time-of-day input on the timeline's day, as a UTC Date.
  if (!time || !state.day) return null;
  const [h, m, s = "0"] = time.split(":");
  return new Date(`${state.day}T${pad(h)}:${pad(m)}:${pad(s)}Z`);
}

async function startExport() {
  const start = onDay($("export-from").value);
  const end = onDay($("export-to").value);
  if (!state.device || !start || !end) {
    setProblems("export", ["Export: choose a device, and a From and To time on its day."]);
    return;
  }
  if (end <= start) {
    setProblems("export", [`Export: To (${hms(end)}) must be after From (${hms(start)}).`]);
    return;
  }
  setProblems("export", []);
  const body = await getJSON("/api/export", "export", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ device: state.device, start: start.toISOString(), end: end.toISOString() }),
  });
  if (!body) return;
  $("export-status").hidden = false;
  $("export-files").replaceChildren();
  $("export-message").textContent = "starting…";
  $("export-start").disabled = true;
  pollExport(body.job);
}

async function pollExport(job) {
  const body = await getJSON(`/api/export/${encodeURIComponent(job)}`, "export");
  if (!body) {
    $("export-start").disabled = false;
    return;
  }
  const progress = $("export-progress");
  progress.max = Math.max(1, body.total || 1);
  progress.value = body.done || 0;
  const count = body.total ? `${body.done} of ${body.total} segment(s)` : "";
  $("export-message").textContent = [body.state, count, body.message].filter(Boolean).join(" · ");
  $("export-status").dataset.state = body.state;
  if (body.state === "running") {
    setTimeout(() => pollExport(job), 700);
    return;
  }
  $("export-start").disabled = false;
  if (body.state === "failed") setProblems("export", [`Export failed: ${body.message}`]);
  const list = $("export-files");
  list.replaceChildren();
  for (const name of body.files || []) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = `/api/export/${encodeURIComponent(job)}/file/${encodeURIComponent(name)}`;
    a.textContent = name;
    a.download = name;
    li.append(a);
    list.append(li);
  }
}

// --- wiring ----------------------------------------------------------------------------

function wire() {
  $("timeline").addEventListener("click", (event) => {
    const at = timeAtClick(event);
    if (at) {
      $("at-time").value = hms(at);
      play(at);
    }
  });
  $("play-at").addEventListener("click", () => {
    const at = onDay($("at-time").value);
    if (at) play(at);
    else setProblems("player", ["Play: choose a device and a time to play from."]);
  });
  $("follow-live").addEventListener("click", followLive);
  $("day").addEventListener("change", () => {
    state.day = $("day").value;
    $("at-time").value = "";
    $("export-from").value = "";
    loadTimeline();
  });
  $("export-start").addEventListener("click", startExport);
  window.addEventListener("error", (event) => setProblems("page", [`The page hit a bug: ${event.message}`]));
  window.addEventListener("unhandledrejection", (event) => {
    setProblems("page", [`The page hit a bug: ${event.reason && event.reason.message ? event.reason.message : event.reason}`]);
  });
}

async function main() {
  wire();
  await loadDevices();
  setInterval(loadDevices, 5000);
  setInterval(loadStills, 5000);
  setInterval(() => {
    if (state.day === dayOf(new Date())) loadTimeline();  // today's grows
  }, 10000);
  setInterval(tickPlayer, 250);
  setInterval(tickStills, 1000);
  if (state.devices.length === 0) loadStills();
}

// For the browser tests and the bench: what the page shows, read without scraping text.
window.hatcamView = { state, playingDate, play, followLive };

main();
